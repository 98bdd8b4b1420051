"""CPU path for attention mass in PyTorch: keys in chunks, so memory is O(R * Hq * chunk), never R x T x Hq.
Same signature as naive.attention_mass."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..layout import SegmentLayout
from .common import document_keys, first_keys, row_meta, to_device

KEY_CHUNK = 2048


def _chunks(layout, rows, mode, device, window=None):
    """For each prompt holding selected rows, its keys from its rows' first covered key to its last row in
    chunks: (those rows' indices, c0, c1, allowed [rows, c1 - c0]). Rows meet only their own prompt's keys
    (and, under a sliding window, only their window's), so packed prompts cost what they would alone."""
    pos, p0 = row_meta(layout, rows)
    lo = first_keys(pos, p0, window)
    doc = document_keys(layout, device) if mode == "documents" else None
    for start in np.unique(p0).tolist():
        sel = np.nonzero(p0 == start)[0]
        pos_t, lo_t, sel_t = to_device(np.stack([pos[sel], lo[sel], sel]), device)
        end = int(pos[sel].max()) + 1
        for c0 in range(int(lo[sel].min()), end, KEY_CHUNK):
            c1 = min(end, c0 + KEY_CHUNK)
            j = torch.arange(c0, c1, device=device)[None, :]
            ok = (j <= pos_t[:, None]) & (j >= lo_t[:, None])
            if doc is not None:
                ok &= doc[c0:c1][None, :]
            yield sel_t, c0, c1, ok


def _scores(q_rows, k, c0, c1, scale):
    R, Hq, D = q_rows.shape
    Hkv = k.shape[1]
    qs = q_rows.float().reshape(R, Hkv, Hq // Hkv, D)
    return torch.einsum("rkgd,tkd->kgrt", qs, k[c0:c1].float()).reshape(Hq, R, c1 - c0) * scale


def row_lse(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout, mode: str,
            scale: float, window: Optional[int] = None) -> torch.Tensor:
    """Each selected row's log-sum-exp over the keys its softmax covers, [R, Hq] float32, key chunk by chunk."""
    norm = torch.full((q_rows.shape[1], q_rows.shape[0]), float("-inf"), device=q_rows.device)
    for sel, c0, c1, ok in _chunks(layout, rows, mode, q_rows.device, window):
        s = _scores(q_rows[sel], k, c0, c1, scale).masked_fill(~ok[None], float("-inf"))
        norm[:, sel] = torch.logaddexp(norm[:, sel], torch.logsumexp(s, dim=-1))
    return norm.transpose(0, 1).contiguous()


def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, window: Optional[int] = None) -> torch.Tensor:
    R, Hq, D = q_rows.shape
    T = k.shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q_rows.device
    norm = (row_lse(q_rows, rows, k, layout, mode, scale, window) if lse is None else lse.float()).transpose(0, 1)
    w = torch.full((R,), 1.0 / max(R, 1), device=dev) if weights is None else weights.float()
    mass = torch.zeros(T, Hq, dtype=torch.float32, device=dev)
    for sel, c0, c1, ok in _chunks(layout, rows, mode, dev, window):
        s = _scores(q_rows[sel], k, c0, c1, scale).masked_fill(~ok[None], float("-inf"))
        p = torch.exp(s - norm[:, sel, None])
        p = torch.nan_to_num(p, nan=0.0)
        mass[c0:c1] += torch.einsum("hrt,r->th", p, w[sel])
    return mass
