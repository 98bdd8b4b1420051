"""CPU path for attention mass in PyTorch: keys in chunks, so memory is O(R * Hq * chunk), never R x T x Hq.
Same signature as naive.attention_mass."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..layout import SegmentLayout
from .common import key_ranges, row_meta, to_device

KEY_CHUNK = 2048  # keys per chunk at least
SCORE_ELEMENTS = 1 << 22  # scores per chunk (rows x query heads x keys): longer chunks while they stay within it


def _prompts(layout, rows, mode, device, heads, window=None):
    """For each prompt holding selected rows that cover any key: (those rows' indices, the key chunks [(c0, c1)]
    from their first covered key to their last, masks(c0, c1) -> [(j0, j1, masked [rows, j1 - j0])] with j0, j1
    column offsets in the chunk and masked True where a row does not cover the key). Each row
    covers one contiguous key range (common.key_ranges), so only the columns where the rows' ranges start and
    end apart need a mask; the columns every row covers take none. Rows meet only their own prompt's keys (and,
    under a sliding window, only their window's), so packed prompts cost what they would alone. A chunk holds
    KEY_CHUNK keys, or more while its scores stay within SCORE_ELEMENTS. Rows covering no key are left out:
    they contribute nothing."""
    pos, p0 = row_meta(layout, rows)
    first, end = key_ranges(layout, pos, p0, mode, window)
    for start in np.unique(p0).tolist():
        sel = np.nonzero((p0 == start) & (end > first))[0]
        if not len(sel):
            continue
        a, e = first[sel], end[sel]
        lo, hi = int(a.min()), int(e.max())
        # the ragged columns: where the ranges start apart, and where they end apart (all, if those meet)
        ragged = [(lo, int(a.max())), (int(e.min()), hi)] if a.max() < e.min() else [(lo, hi)]
        a_t, e_t, sel_t = to_device(np.stack([a, e, sel]), device)
        step = max(KEY_CHUNK, SCORE_ELEMENTS // max(1, len(sel) * heads))

        def masks(c0, c1, a_t=a_t, e_t=e_t, ragged=ragged):
            out = []
            for r0, r1 in ragged:
                j0, j1 = max(c0, r0), min(c1, r1)
                if j0 < j1:
                    j = torch.arange(j0, j1, device=device)[None, :]
                    out.append((j0 - c0, j1 - c0, (j < a_t[:, None]) | (j >= e_t[:, None])))
            return out

        yield sel_t, [(c0, min(hi, c0 + step)) for c0 in range(lo, hi, step)], masks


def _scores(q_rows, k, c0, c1, scale, masks):
    """The rows' scaled scores over keys [c0, c1), -inf where masks say: [Hq, R, c1 - c0] float32. One batched
    product per key/value head, its query heads' rows stacked (no copy of the scores)."""
    R, Hq, D = q_rows.shape
    Hkv = k.shape[1]
    qs = (q_rows.float() * scale).unflatten(1, (Hkv, Hq // Hkv)).permute(1, 2, 0, 3).reshape(Hkv, -1, D)
    s = torch.matmul(qs, k[c0:c1].float().permute(1, 2, 0)).view(Hq, R, c1 - c0)
    for j0, j1, masked in masks:
        s[..., j0:j1].masked_fill_(masked[None], float("-inf"))
    return s


def _mass(s, norm, w):
    """Sum over rows of w x exp(s - norm), per key and head: [t, Hq]. s [Hq, R, t] (overwritten), norm [Hq, R],
    w [R]. Rows with no allowed key (norm -inf) contribute nothing."""
    norm = norm.masked_fill(norm == float("-inf"), float("inf"))
    return torch.matmul(w[None, None, :], s.sub_(norm[..., None]).exp_()).squeeze(1).T


def _mass_one_pass(s, w):
    """_mass with each row's normaliser taken from these scores (all of its keys): exp(s - max) once, and the
    sums' reciprocals folded into the row weights. s is overwritten."""
    m = s.detach().amax(-1, keepdim=True)
    e = s.sub_(m.masked_fill(m == float("-inf"), 0.0)).exp_()  # rows with no allowed key: all 0
    return torch.matmul((w / e.sum(-1).clamp_min(torch.finfo(e.dtype).tiny))[:, None, :], e).squeeze(1).T


def _norm(q_sel, k, chunks, masks, scale):
    """The rows' log-sum-exp over their covered keys, chunk by chunk: [Hq, R] float32 (-inf: no key)."""
    norm = torch.full((q_sel.shape[1], q_sel.shape[0]), float("-inf"), device=q_sel.device)
    for c0, c1 in chunks:
        norm = torch.logaddexp(norm, torch.logsumexp(_scores(q_sel, k, c0, c1, scale, masks(c0, c1)), dim=-1))
    return norm


def row_lse(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout, mode: str,
            scale: float, window: Optional[int] = None) -> torch.Tensor:
    """Each selected row's log-sum-exp over the keys its softmax covers, [R, Hq] float32, key chunk by chunk."""
    norm = torch.full((q_rows.shape[1], q_rows.shape[0]), float("-inf"), device=q_rows.device)
    for sel, chunks, masks in _prompts(layout, rows, mode, q_rows.device, q_rows.shape[1], window):
        norm[:, sel] = _norm(q_rows[sel], k, chunks, masks, scale)
    return norm.transpose(0, 1).contiguous()


def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, window: Optional[int] = None) -> torch.Tensor:
    """Without lse, a prompt whose covered keys fit one chunk takes one pass: its scores give the normaliser
    and the probabilities. Longer ones take a first pass for the normaliser."""
    R, Hq, D = q_rows.shape
    T = k.shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q_rows.device
    given = None if lse is None else lse.float().transpose(0, 1)
    w = torch.full((R,), 1.0 / max(R, 1), device=dev) if weights is None else weights.float()
    mass = torch.zeros(T, Hq, dtype=torch.float32, device=dev)
    for sel, chunks, masks in _prompts(layout, rows, mode, dev, Hq, window):
        q_sel, w_sel = q_rows[sel], w[sel]
        if given is not None:
            norm = given[:, sel]
        elif len(chunks) == 1:
            c0, c1 = chunks[0]
            mass[c0:c1] += _mass_one_pass(_scores(q_sel, k, c0, c1, scale, masks(c0, c1)), w_sel)
            continue
        else:
            norm = _norm(q_sel, k, chunks, masks, scale)
        for c0, c1 in chunks:
            mass[c0:c1] += _mass(_scores(q_sel, k, c0, c1, scale, masks(c0, c1)), norm, w_sel)
    return mass
