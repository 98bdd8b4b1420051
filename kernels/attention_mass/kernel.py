"""Triton kernel for attention mass: per key token and head, the weighted sum over selected rows of their softmax
probabilities, without materialising the attention matrix.

Grid: key blocks of BLOCK_N x key/value heads, heads fastest. Each program loads its key block once for every
query head that shares the key/value head (grouped-query heads packed into the rows of the products, as in the
block-sparse kernel) and loops over the selected rows that can see its keys (rows sorted by position; per key
block the host gives the run of rows at or after the block whose prompt starts before its end, so packed
prompts never meet each other's keys). It recomputes their scores against its keys, masks them (causal within
the row's prompt; in "documents" mode, also document keys only), turns them into probabilities with the rows'
log-sum-exp, and accumulates weight * probability per head. Memory: O(T * Hq) output, nothing of size R x T.
Needs each row's log-sum-exp (the forward pass gives it for "causal"; the dispatcher computes it for
"documents").

Shapes: q_rows [R, Hq, D], k [T, Hkv, D], lse [R, Hq] (natural log), weights [R]; returns mass [T, Hq] float32.
Offsets are 32-bit unless a tensor holds 2^31 elements or more (then 64-bit: ``WIDE``).
Timed on: an NVIDIA H200 (bench/RESULTS.md, "Kernels on the GPU"); tested in the Triton interpreter on the
CPU and on that GPU; compiled for sm_80 and sm_90 in the tests.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from .._checks import check_launch
from ..block_sparse_attention.kernel import dot_precision, needs_wide
from ..layout import SegmentLayout
from .common import document_keys, row_meta, to_device

LOG2E = 1.4426950408889634


@triton.jit
def _mass_kernel(Q, K, LSE, W, POS, P0, DOC, ROW_LO, ROW_HI, MASS, T, HKV, stride_qr, stride_qh, stride_kt,
                 stride_kh, stride_lr, stride_lh, stride_mt, stride_mh, qk_scale,
                 GROUP: tl.constexpr, GP: tl.constexpr, ROWS: tl.constexpr, DOCS_ONLY: tl.constexpr,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 WIDE: tl.constexpr, PREC: tl.constexpr, HEAD_DOT: tl.constexpr):
    pid = tl.program_id(0)
    nb = pid // HKV  # key/value heads fastest: neighbouring programs share the key block's rows in L2
    kvh = pid % HKV
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    if WIDE:  # element offsets past 2^31: 64-bit address arithmetic
        offs_n = offs_n.to(tl.int64)
    n_mask = offs_n < T
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    k = tl.load(K + offs_n[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    key_ok = n_mask
    if DOCS_ONLY:
        key_ok = key_ok & (tl.load(DOC + offs_n, mask=n_mask, other=0) != 0)
    # Product row i < ROWS * GROUP is selected row r0 + i // GROUP under query head kvh * GROUP + i % GROUP: the
    # key block is loaded once for all the query heads that share it.
    offs_i = tl.arange(0, BLOCK_M)
    g_of_i = offs_i % GROUP
    head = kvh * GROUP + g_of_i
    gcol = tl.arange(0, GP)
    acc = tl.zeros([BLOCK_N, GP], dtype=tl.float32)  # per key, per query head of the group
    if HEAD_DOT:  # the product rows' heads as a one-hot [BLOCK_M, GP] matrix (GP at least 16 for tl.dot)
        onehot = (g_of_i[:, None] == gcol[None, :]).to(tl.float32)
    r_lo = tl.load(ROW_LO + nb).to(tl.int32)  # row indices (below 2^31; int64 in the table)
    r_hi = tl.load(ROW_HI + nb).to(tl.int32)
    for r0 in range(r_lo, r_hi, ROWS):
        r = r0 + offs_i // GROUP
        if WIDE:
            r = r.to(tl.int64)
        m_mask = (r < r_hi) & (offs_i < ROWS * GROUP)
        q = tl.load(Q + r[:, None] * stride_qr + head[:, None] * stride_qh + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        pos = tl.load(POS + r, mask=m_mask, other=-1)
        p0 = tl.load(P0 + r, mask=m_mask, other=0)
        lse = tl.load(LSE + r * stride_lr + head * stride_lh, mask=m_mask, other=0.0)
        w = tl.load(W + r, mask=m_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        ok = (offs_n[None, :] >= p0[:, None]) & (offs_n[None, :] <= pos[:, None]) & key_ok[None, :] & m_mask[:, None]
        p = tl.where(ok, tl.exp2(s - lse[:, None] * 1.4426950408889634), 0.0) * w[:, None]
        if HEAD_DOT:  # per head, the sum over its rows as one product on the tensor cores
            acc += tl.dot(tl.trans(p), onehot, input_precision=PREC)
        else:
            for g in tl.static_range(GROUP):  # the rows of head g summed into its column
                col = tl.sum(tl.where((g_of_i == g)[:, None], p, 0.0), 0)
                acc += tl.where(gcol[None, :] == g, col[:, None], 0.0)
    tl.store(MASS + offs_n[:, None] * stride_mt + (kvh * GROUP + gcol)[None, :] * stride_mh, acc,
             mask=n_mask[:, None] & (gcol < GROUP)[None, :])


def _row_tables(layout: SegmentLayout, rows: torch.Tensor, weights: Optional[torch.Tensor], T: int, block_n: int,
                dev: torch.device):
    """(order or None when the rows are already in position order, positions, prompt starts, per key block the
    run of rows that see it, weights in that order) on ``dev``. Rows in position order have ascending prompt
    starts too; per key block [a, b) the rows that can see it are those at or after a whose prompt starts
    before b: one run of the sorted rows. The tables for the last rows and host weights seen are kept on the
    layout: a model passes the same rows in every layer, and then no table is rebuilt or copied."""
    pos = rows.detach().cpu().numpy().astype(np.int64)  # a synchronisation only for rows on a GPU
    w_host = weights.detach().float().numpy() if weights is not None and weights.device.type == "cpu" else None
    sig = (pos.tobytes(), None if weights is None else (w_host.tobytes() if w_host is not None else "device"))
    last = layout.memo(("mass_rows", block_n, str(dev)), lambda: [None])  # [(signature, tables)]
    entry = last[0]
    if entry is None or entry[0] != sig:
        pos, p0 = row_meta(layout, pos)
        R = len(pos)
        in_order = bool(np.all(pos[1:] >= pos[:-1]))  # the usual case (a query span)
        order = np.arange(R) if in_order else np.argsort(pos, kind="stable")
        pos, p0 = pos[order], p0[order]
        starts = np.arange(0, T, block_n, dtype=np.int64)
        row_lo = np.searchsorted(pos, starts, side="left")
        row_hi = np.searchsorted(p0, np.minimum(starts + block_n, T), side="left")
        meta = to_device(np.concatenate([order, pos, p0, row_lo, row_hi]), dev)  # one host-to-device copy
        if weights is None:
            w = torch.full((R,), 1.0 / max(R, 1), dtype=torch.float32, device=dev)
        else:
            w = to_device(w_host[order], dev) if w_host is not None else None
        entry = (sig, (None if in_order else meta[:R], meta[R:2 * R], meta[2 * R:3 * R],
                       meta[3 * R:3 * R + len(starts)], meta[3 * R + len(starts):], w))
        last[0] = entry  # one assignment: another thread sees the old entry or this one, never a mix
    order_t, pos_t, p0_t, row_lo_t, row_hi_t, w = entry[1]
    if w is None:  # weights on the device: taken as given, in the rows' order
        w = weights.float() if order_t is None else weights.float()[order_t]
    return order_t, pos_t, p0_t, row_lo_t, row_hi_t, w


def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, block_m: Optional[int] = None, block_n: Optional[int] = None,
                   out: Optional[torch.Tensor] = None, wide: Optional[bool] = None,
                   num_warps: Optional[int] = None, num_stages: Optional[int] = None,
                   head_sum: Optional[str] = None) -> torch.Tensor:
    """``out`` [T, Hq] float32 may be given (contiguous) to be written in place. ``wide``: 64-bit element
    offsets (default: when a tensor holds 2^31 elements or more). ``block_m``: rows of each product
    (block_m // group selected rows x the group of query heads per key/value head); ``block_n``: keys per
    program. Defaults 64 x 64; for full-precision float32, whose FMA products need more registers, 16 x 64
    (16 x 16 from a padded D of 128): ptxas spills above that (checked by tests/test_kernels_compile.py).
    ``num_warps`` (default 4; 8 for full-precision float32) and ``num_stages``: Triton launch options.
    ``head_sum``: how each program sums its probabilities per query head: "dot" (one product of the
    probabilities with a one-hot head matrix, on tensor cores: TF32-rounded probabilities, a relative error of
    at most 2^-11 each, below that of 16-bit inputs; the default for 16-bit inputs and TF32 float32, 1.55x
    faster than "loop" on an H200 in bench_kernels.py --sweep) or "loop" (a masked reduction per head of the
    group; the default for full-precision float32, where the product would run on FMA units)."""
    check_launch(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    if head_sum not in (None, "loop", "dot"):
        raise ValueError(f"head_sum must be 'loop' or 'dot', got {head_sum!r}")
    R, Hq, D = q_rows.shape
    T, Hkv = k.shape[0], k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q_rows.device
    block_d = max(16, triton.next_power_of_2(D))
    prec = dot_precision(q_rows.dtype)
    block_m = block_m or (16 if prec == "ieee" else 64)
    block_n = block_n or (16 if prec == "ieee" and block_d >= 128 else 64)
    if lse is None:  # the normaliser over the covered keys, computed key chunk by key chunk
        from .cpu import row_lse

        lse = row_lse(q_rows, rows, k, layout, mode, scale)
    order_t, pos_t, p0_t, row_lo_t, row_hi_t, w = _row_tables(layout, rows, weights, T, block_n, dev)
    if order_t is not None:  # rows not in position order: sort them on the device
        q_rows, lse = q_rows[order_t], lse[order_t]
    q_rows, lse, w = q_rows.contiguous(), lse.float().contiguous(), w.contiguous()
    # which keys are document tokens: read only in "documents" mode
    doc = document_keys(layout, dev) if mode == "documents" else torch.empty(0, dtype=torch.bool, device=dev)
    k = k.contiguous()
    mass = torch.empty(T, Hq, dtype=torch.float32, device=dev) if out is None else out
    if T == 0:
        return mass
    group = Hq // Hkv
    rows_per = max(1, block_m // group)  # selected rows per product; the product has rows_per x group rows
    grid = (triton.cdiv(T, block_n) * Hkv,)
    head_dot = head_sum == "dot" if head_sum is not None else prec != "ieee"
    opts = {"num_warps": num_warps or (8 if prec == "ieee" else 4)}  # full-precision float32 spills at 4
    if num_stages is not None:
        opts["num_stages"] = num_stages
    _mass_kernel[grid](q_rows, k, lse, w, pos_t, p0_t, doc, row_lo_t, row_hi_t, mass, T, Hkv,
                       q_rows.stride(0), q_rows.stride(1), k.stride(0), k.stride(1), lse.stride(0), lse.stride(1),
                       mass.stride(0), mass.stride(1),
                       scale * LOG2E, GROUP=group, GP=max(16 if head_dot else 1, triton.next_power_of_2(group)),
                       ROWS=rows_per, DOCS_ONLY=(mode == "documents"), D=D, BLOCK_D=block_d,
                       BLOCK_M=max(16, triton.next_power_of_2(rows_per * group)), BLOCK_N=block_n, PREC=prec,
                       WIDE=needs_wide(q_rows, k, mass) if wide is None else bool(wide), HEAD_DOT=head_dot,
                       **opts)
    return mass
