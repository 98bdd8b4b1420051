"""CPU path for block-sparse in-context attention in PyTorch, without the [T, T] mask.

Every segment's rows attend two parts: an unmasked prefix (documents: the instruction; query rows: everything
before the query segment; instruction rows: nothing) and a causal square over the segment's own tokens. Each part
runs through PyTorch's CPU flash attention, which returns the log-sum-exp, and the two are merged:
lse = logaddexp(lse_a, lse_b), out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse). Documents of equal
length in a prompt go through in one batch. Memory follows the allowed pairs of a batch, not T^2. If the flash
op is unavailable, or gradients are wanted (the flash op has none for its log-sum-exp), an explicit float32
softmax does the same.

Same signature as naive.block_sparse_attention: q [T, Hq, D], k and v [T, Hkv, D]; returns out [T, Hq, D]
(q's dtype) and lse [T, Hq] (float32, natural log).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks import wants_grad
from ..layout import DOCUMENT, SegmentLayout

BATCH_ELEMENTS = 1 << 24  # score elements per batched call


def _repeat_heads(q, k, v):
    """k, v with each key/value head repeated for the query heads of its group."""
    group = q.shape[1] // k.shape[1]
    return (k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)) if group > 1 else (k, v)


def _explicit(q, k, v, causal, scale):
    k, v = _repeat_heads(q, k, v)
    s = torch.einsum("bhld,bhmd->bhlm", q, k) * scale
    if causal:
        L = q.shape[2]
        s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("bhlm,bhmd->bhld", torch.exp(s - lse[..., None]), v), lse


def _flash_op():
    """PyTorch's CPU flash attention op (returns the log-sum-exp too), or None."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash(q, k, v, causal, scale):
    """Attention of q [B, Hq, L, D] over k, v [B, Hkv, M, D] (causal: a square, row i sees keys <= i; Hq a
    multiple of Hkv). Returns out [B, Hq, L, D] and lse [B, Hq, L], float32. PyTorch's CPU flash op takes the
    grouped key/value heads as they are; where it does not (older builds), they are repeated for it. When a
    gradient is wanted the explicit softmax runs instead: the flash op passes no gradient through its
    log-sum-exp, and the merge of a document's two parts needs one (without it the gradients of q and k are
    wrong, e.g. when fine-tuning with BlockRank's loss)."""
    op = None if wants_grad(q, k, v) else _flash_op()
    for attempt in (lambda: (k, v), lambda: _repeat_heads(q, k, v)) if op is not None else ():
        try:
            return op(q, *attempt(), 0.0, causal, scale=scale)[:2]
        except (RuntimeError, NotImplementedError):
            continue
    return _explicit(q, k, v, causal, scale)


def _rows_of(starts, length, device):
    """The rows of equal-length segments: a slice when they lie back to back (then every read is a view), else
    an index [n, length]."""
    if all(b - a == length for a, b in zip(starts, starts[1:])):
        return slice(starts[0], starts[0] + len(starts) * length)
    return torch.as_tensor(starts, device=device)[:, None] + torch.arange(length, device=device)[None, :]


def _segments(q, k, v, starts, length, prefix, scale, out, lse):
    """Equal-length segments sharing one prefix range: one batched call per part, then the merge."""
    n = len(starts)
    at = _rows_of(starts, length, q.device)

    def heads(x):  # rows of x as [n, heads, length, D] float32
        x = x[at].unflatten(0, (n, length)) if isinstance(at, slice) else x[at]
        return x.float().transpose(1, 2)

    qs = heads(q)
    o, m = _flash(qs, heads(k), heads(v), True, scale)
    p0, p1 = prefix
    if p1 > p0:
        kp = k[p0:p1][None].float().transpose(1, 2).expand(n, -1, -1, -1)
        vp = v[p0:p1][None].float().transpose(1, 2).expand(n, -1, -1, -1)
        oa, ma = _flash(qs, kp, vp, False, scale)
        mm = torch.logaddexp(ma, m)
        o = oa * torch.exp(ma - mm)[..., None] + o * torch.exp(m - mm)[..., None]
        m = mm
    o, m = o.transpose(1, 2).to(out.dtype), m.transpose(1, 2)  # [n, length, Hq, ...]
    if isinstance(at, slice):
        o, m = o.flatten(0, 1), m.flatten(0, 1)
    out[at] = o
    lse[at] = m


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, Hq, D = q.shape
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
            _segments(q, k, v, starts[c:c + step], length, (p0, p1), scale, out, lse)
    return out, lse
