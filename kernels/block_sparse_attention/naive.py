"""Reference block-sparse in-context attention: plain PyTorch with an explicit additive [T, T] mask, in float64.

q: [T, Hq, D], k and v: [T, Hkv, D] (Hq a multiple of Hkv), layout: SegmentLayout.
Returns out [T, Hq, D] in q's dtype and lse [T, Hq] (float32, natural log). O(T^2) memory: for tests only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..layout import SegmentLayout


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, Hq, D = q.shape
    group = Hq // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qd, kd, vd = (x.double() for x in (q, k, v))
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    s = torch.einsum("thd,uhd->htu", qd, kd) * scale
    bias = torch.zeros(T, T, dtype=torch.float64, device=q.device)
    bias.masked_fill_(~layout.dense_mask(device=q.device), float("-inf"))
    s = s + bias
    lse = torch.logsumexp(s, dim=-1)  # [Hq, T]
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("htu,uhd->thd", p, vd)
    return out.to(q.dtype), lse.transpose(0, 1).float().contiguous()
