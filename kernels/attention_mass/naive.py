"""Reference attention mass: materialise the probabilities of the selected rows in float64 and sum them.

q_rows: [R, Hq, D], the query vectors of the selected rows; rows: [R] their token positions; k: [T, Hkv, D];
lse: [R, Hq] or None (then computed here); weights: [R] (default: the mean over rows).
mode "causal": each row's softmax over all keys before it in its prompt (ICR);
mode "documents": each row's softmax over the document keys before it in its prompt only (BlockRank).
window: None, or a sliding window: a row at position p covers only keys j with p - j < window.
Returns mass [T, Hq] float32: sum over rows of weight * probability, per key and head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..layout import DOCUMENT, SegmentLayout
from .common import first_keys, row_meta


def allowed_keys(layout: SegmentLayout, rows: torch.Tensor, mode: str, device,
                 window: Optional[int] = None) -> torch.Tensor:
    """Boolean [R, T]: which keys each selected row's softmax covers."""
    pos, p0 = row_meta(layout, rows)
    p0 = first_keys(pos, p0, window)
    T = layout.total_tokens
    j = torch.arange(T, device=device)[None, :]
    ok = (j >= torch.as_tensor(p0, device=device)[:, None]) & (j <= torch.as_tensor(pos, device=device)[:, None])
    if mode == "documents":
        ok &= torch.as_tensor(layout.key_kinds() == DOCUMENT, device=device)[None, :]
    return ok


def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, window: Optional[int] = None) -> torch.Tensor:
    R, Hq, D = q_rows.shape
    group = Hq // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kd = k.double().repeat_interleave(group, dim=1)
    s = torch.einsum("rhd,thd->hrt", q_rows.double(), kd) * scale
    s = s.masked_fill(~allowed_keys(layout, rows, mode, q_rows.device, window)[None], float("-inf"))
    norm = torch.logsumexp(s, dim=-1) if lse is None else lse.double().transpose(0, 1)
    p = torch.exp(s - norm[..., None])
    p = torch.nan_to_num(p, nan=0.0)  # rows without any allowed key contribute nothing
    w = torch.full((R,), 1.0 / max(R, 1), dtype=torch.float64, device=q_rows.device) if weights is None else weights.double()
    return torch.einsum("hrt,r->th", p, w).float()
