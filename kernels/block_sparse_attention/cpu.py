"""CPU path for block-sparse in-context attention in PyTorch, without the [T, T] mask.

Every segment's rows attend two parts: an unmasked prefix (documents: the instruction; query rows: everything
before the query segment; instruction rows: nothing) and a causal square over the segment's own tokens. Each part
runs through PyTorch's CPU flash attention, which returns the log-sum-exp, and the two are merged:
lse = logaddexp(lse_a, lse_b), out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse). Documents of equal
length in a prompt go through in one batch. Memory follows the allowed pairs of a batch, not T^2. If the flash
op is unavailable, an explicit float32 softmax does the same.

Same signature as naive.block_sparse_attention: q [T, Hq, D], k and v [T, Hkv, D]; returns out [T, Hq, D]
(q's dtype) and lse [T, Hq] (float32, natural log).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..layout import DOCUMENT, SegmentLayout

BATCH_ELEMENTS = 1 << 24  # score elements per batched call


def _explicit(q, k, v, causal, scale):
    s = torch.einsum("bhld,bhmd->bhlm", q, k) * scale
    if causal:
        L = q.shape[2]
        s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("bhlm,bhmd->bhld", torch.exp(s - lse[..., None]), v), lse


def _flash(q, k, v, causal, scale):
    """Attention of q [B, H, L, D] over k, v [B, H, M, D] (causal: a square, row i sees keys <= i).
    Returns out [B, H, L, D] and lse [B, H, L], float32."""
    try:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)[:2]
        return out, lse
    except (AttributeError, RuntimeError, NotImplementedError):
        return _explicit(q, k, v, causal, scale)


def _heads(x, group):
    """[n, L, Hkv, D] -> [n, Hq, L, D] float32 (each key/value head repeated for its query heads)."""
    x = x.float().transpose(1, 2)
    return x.repeat_interleave(group, dim=1) if group > 1 else x


def _segments(q, k, v, starts, length, prefix, scale, group, out, lse):
    """Equal-length segments sharing one prefix range: one batched call per part, then the merge."""
    n = len(starts)
    idx = torch.as_tensor(starts, device=q.device)[:, None] + torch.arange(length, device=q.device)[None, :]
    qs = _heads(q[idx], 1)  # [n, Hq, L, D]
    o, m = _flash(qs, _heads(k[idx], group), _heads(v[idx], group), True, scale)
    p0, p1 = prefix
    if p1 > p0:
        kp = _heads(k[p0:p1][None], group).expand(n, -1, -1, -1)
        vp = _heads(v[p0:p1][None], group).expand(n, -1, -1, -1)
        oa, ma = _flash(qs, kp, vp, False, scale)
        mm = torch.logaddexp(ma, m)
        o = oa * torch.exp(ma - mm)[..., None] + o * torch.exp(m - mm)[..., None]
        m = mm
    out[idx] = o.transpose(1, 2).to(out.dtype)
    lse[idx] = m.transpose(1, 2)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, Hq, D = q.shape
    group = Hq // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty_like(q)
    lse = torch.empty(T, Hq, dtype=torch.float32, device=q.device)
    batches: dict[tuple, list[int]] = {}  # (prefix start, prefix end, length) -> segment starts
    for a, b, kind, p0, i1 in layout.segments():
        if b == a:
            continue
        prefix = (p0, i1) if kind == DOCUMENT else (p0, a)  # instruction rows: (p0, p0), empty
        batches.setdefault((*prefix, b - a), []).append(a)
    for (p0, p1, length), starts in batches.items():
        per_segment = Hq * length * (p1 - p0 + length)
        step = max(1, BATCH_ELEMENTS // per_segment)
        for c in range(0, len(starts), step):
            _segments(q, k, v, starts[c:c + step], length, (p0, p1), scale, group, out, lse)
    return out, lse
