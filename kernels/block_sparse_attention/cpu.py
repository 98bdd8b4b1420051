"""CPU path for block-sparse in-context attention in PyTorch, without the [T, T] mask: each segment attends to its
own key ranges (the instruction prefix, then its causal range), computed per segment in float32 and joined in
one softmax, so memory follows the largest segment's allowed pairs, not T^2.

Same signature as naive.block_sparse_attention: q [T, Hq, D], k and v [T, Hkv, D]; returns out [T, Hq, D]
(q's dtype) and lse [T, Hq] (float32, natural log).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..layout import SegmentLayout

ROW_CHUNK = 256  # rows per step for long (query) segments


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty_like(q)
    lse = torch.empty(T, Hq, dtype=torch.float32, device=q.device)
    for a, b, kind, p0, i1 in layout.segments():
        pre = (p0, i1) if kind == 1 else (0, 0)
        causal = p0 if kind != 1 else a
        for r0 in range(a, b, ROW_CHUNK):
            r1 = min(b, r0 + ROW_CHUNK)
            key_idx = torch.cat([torch.arange(pre[0], pre[1]), torch.arange(causal, r1)]).to(q.device)
            qs = q[r0:r1].float().reshape(r1 - r0, Hkv, group, D)
            ks = k[key_idx].float()  # [L, Hkv, D]
            vs = v[key_idx].float()
            s = torch.einsum("rkgd,lkd->kgrl", qs, ks) * scale  # [Hkv, G, R, L]
            n_pre = pre[1] - pre[0]
            rows = torch.arange(r0, r1, device=q.device)[:, None]
            keys = key_idx[None, :]
            allowed = (torch.arange(len(key_idx), device=q.device)[None, :] < n_pre) | (keys <= rows)
            s = s.masked_fill(~allowed, float("-inf"))
            m = torch.logsumexp(s, dim=-1, keepdim=True)
            p = torch.exp(s - m)
            o = torch.einsum("kgrl,lkd->rkgd", p, vs).reshape(r1 - r0, Hq, D)
            out[r0:r1] = o.to(q.dtype)
            lse[r0:r1] = m[..., 0].permute(2, 0, 1).reshape(r1 - r0, Hq)
    return out, lse
