"""Triton kernel for block-sparse in-context attention (forward only).

Each program takes one query tile (token rows of one segment; tiles never straddle a segment) and one key/value
head, with every query head that shares it (grouped-query attention packed into the rows of the products, as
FlashAttention-3's PackGQA does: BLOCK_M rows hold BLOCK_M // group tokens x the group). Each key block is then
loaded once for the whole group, and a tile holds fewer tokens (16 for Mistral's groups of 4, 21 for SmolLM2's
groups of 3), so less of it is padding.

A tile visits exactly the keys its rows may see: the instruction prefix (document tiles) and its causal range
[start, last row]. Fully masked key blocks are never loaded, so the cost follows the allowed (q, k) pairs, not
T^2. In the four-loop form, key blocks that every row of the tile may see in full run without any mask; only a
range's last partial block and the blocks crossing the diagonal are masked. The one-loop form (the default on
Hopper for 16-bit rows of 256 bytes or more) runs a tile's prefix and causal blocks in one software-pipelined
loop, every block masked, so that a document tile's 2-4 blocks overlap their loads. Online softmax in float32
with exp2: a masked block cuts each row at one per-row limit (a comparison and a select per score), the scale
goes into each exponent's fused multiply-add, and (``lazy_rescale``, the default of Hopper's four-loop form) the
output accumulator is rescaled only when a row's maximum grows by more than a factor of 2^8. On Hopper at D 128
the default holds three programs per SM (at most 168 registers per thread), and its key and value blocks load
through tensor descriptors by the Tensor Memory Accelerator (``tma``, Hopper and later; elsewhere an option)
instead of per-thread addresses.

Launch order: long programs run longest first (a query tile that sees a whole long prompt would otherwise start
last and run alone at the end), then the short ones grouped by segment, so that a document's tiles read its keys
and values from L2; a tile's key/value heads are adjacent. A tile whose key range is much longer than the average
load per SM (a long prompt's query segment) is split into chunks of key blocks that run as separate programs; a
second small kernel merges their partial outputs by log-sum-exp (or, opt-in, the last chunk of a tile to finish
does, in the same launch: ``fused_merge``). Optionally (``tiles_per_program``, one-loop form) a program takes
several consecutive tiles of one segment in one software-pipelined loop.

Shapes: q [T, Hq, D], k and v [T, Hkv, D], D in {64, 80, 128} (any D <= 256 works; D is padded to a power of
two in registers). fp16/bf16/fp32. Returns out [T, Hq, D] (q's dtype) and lse [T, Hq] (float32, natural log).
Offsets are 32-bit unless a tensor holds 2^31 elements or more (then 64-bit: ``WIDE``), so that long packed
prompts at large shapes (e.g. 524k tokens x 32 heads x 128) address correctly.
Timed on: an NVIDIA H200 and an H100 (bench/RESULTS.md, "Kernels on the GPU" and the notes after it); tested in
the Triton interpreter on the CPU and on both GPUs; compiled for sm_80, sm_86/89, sm_90, sm_100 and sm_120 in the
tests.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from .._checks import (COMPILE_OPTIONS, check_launch, check_output, check_qkv, check_scale, cuda_capability,
                       cuda_sm_count, padded_d, product_rows)
from .._shared_memory import launch_fitting
from .._tickets import tickets
from ..layout import SegmentLayout

LOG2E = 1.4426950408889634
COLS = tl.constexpr(8)  # ints per launch row (schedule)
SHORT_SHARE = 16  # schedule: programs of at most 1/16 of the longest one (or max_blocks) run grouped by segment


@triton.jit
def _load(ptrs, row_mask, col_mask, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A [rows, BLOCK_D] tile, masked only along the dimensions that need it."""
    if MASK_ROWS and MASK_COLS:
        x = tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    elif MASK_COLS:
        x = tl.load(ptrs, mask=col_mask[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _product_rows(row_s, row_e, kvh, GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                  WIDE: tl.constexpr):
    """Row i < ROWS * GROUP of a tile's product is token row_s + i // GROUP under query head kvh * GROUP +
    i % GROUP: the query heads that share a key/value head read each key block once. Rows past ROWS * GROUP pad
    the product to a power of two. Returns (i, token, head, valid)."""
    offs_i = tl.arange(0, BLOCK_M)
    tok = row_s + offs_i // GROUP
    head = kvh * GROUP + offs_i % GROUP
    if WIDE:  # element offsets past 2^31: 64-bit address arithmetic
        tok = tok.to(tl.int64)
    return offs_i, tok, head, (tok < row_e) & (offs_i < ROWS * GROUP)


@triton.jit
def _key_block(q, K, V, start, end, in_prefix, kvh, stride_kt, stride_kh, stride_vt, stride_vh, offs_d, d_mask, tok,
               m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, EITHER: tl.constexpr,
               BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, WIDE: tl.constexpr, PREC: tl.constexpr,
               LAZY: tl.constexpr, TMA: tl.constexpr):
    """Keys [start, start + BLOCK_N) into the tile's online softmax. MASKED: keys at or past ``end`` are cut and,
    with CAUSAL, keys after a row's token ``tok``; unmasked blocks are wholly visible to every row of the tile.
    EITHER (the one-loop form): a masked block that is causal unless the run-time flag ``in_prefix`` is set.
    A row's visible keys end at one per-row limit, so the mask is one comparison and one select per score."""
    offs_b = tl.arange(0, BLOCK_N)
    n_mask = offs_b < end - start
    first = tl.cast(start, tl.int64) if WIDE else start  # (a Python int in the interpreter's loops)
    if TMA:  # descriptors of [T, HKV * D] (D a power of two): rows past ``end`` are cut by the mask below
        k = K.load([start, kvh * offs_d.shape[0]])
        v = V.load([start, kvh * offs_d.shape[0]])
    else:
        k = _load(K + first * stride_kt + kvh * stride_kh + (offs_b[:, None] * stride_kt + offs_d[None, :]),
                  n_mask, d_mask, MASKED, D_PAD)
        v = _load(V + first * stride_vt + kvh * stride_vh + (offs_b[:, None] * stride_vt + offs_d[None, :]),
                  n_mask, d_mask, MASKED, D_PAD)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # unscaled: the scale goes into the softmax's exponent
    if MASKED:  # (against the block's own key offsets: against absolute positions ptxas took 60 more registers)
        if EITHER or CAUSAL:
            last = tl.minimum(tok, end - 1)  # each row's last visible key
            if EITHER:
                last = tl.where(in_prefix, end - 1, last)
            s = tl.where(offs_b[None, :] <= (last - start)[:, None], s, float("-inf"))
        else:
            s = tl.where(n_mask[None, :], s, float("-inf"))
    return _softmax_step(s, v, m_i, l_i, acc, qk_scale, MASKED, PREC, LAZY)


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, PREC: tl.constexpr, LAZY: tl.constexpr):
    """One key block's unscaled scores ``s`` and values into the running maximum (scaled, base 2), sum and
    output. The scale (positive) multiplies the row maxima, then the scores inside one fused multiply-add with
    the maximum's subtraction. MASKED: some scores may be -inf, and a row that sees none of these keys (yet) must
    not rescale by -inf - -inf.
    LAZY: a row's running maximum moves only when the block's maximum passes it by more than 8 (a factor of 256
    in base 2), and the output accumulator (64 multiplies per thread at 64 x 128 on 4 warps) is rescaled only
    when some row of the tile moved, by a branch that the whole program takes or skips. In between,
    probabilities may reach 2^8: the same relative rounding in 16 bits, far from any overflow in float32. The
    sum and the log-sum-exp are taken against the maximum actually used, so the results are the same up to
    rounding."""
    m_blk = tl.max(s, 1) * qk_scale
    if LAZY:
        grow = m_blk > m_i + 8.0
        m_new = tl.where(grow, m_blk, m_i)
    else:
        m_new = tl.maximum(m_i, m_blk)
    if MASKED:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_safe = m_new
    p = tl.exp2(tl.fma(s, qk_scale, -m_safe[:, None]))
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if LAZY:
        if tl.max(grow.to(tl.int32), 0) > 0:  # (alpha is exactly 1 on the rows that did not move)
            acc = acc * alpha[:, None]
    else:
        acc = acc * alpha[:, None]
    acc = acc + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _bsa_fwd(Q, K, V, O, LSE, PO, PL, TILES, COUNT, GROUPS, GROUP_OF, HKV, stride_qt, stride_qh, stride_kt,
             stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lt, stride_lh, qk_scale,
             GROUP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr, PREC: tl.constexpr,
             ONE_LOOP: tl.constexpr, RUNS: tl.constexpr, Q_AT_SWITCH: tl.constexpr, LAZY: tl.constexpr,
             TMA: tl.constexpr, FUSED: tl.constexpr):
    pid = tl.program_id(0)
    tile = pid // HKV
    kvh = pid % HKV
    # launch row (COLS ints): row start, row end, prefix start, prefix end, causal start, causal end, partial slot
    # (-1: none), key blocks visited. RUNS (one-loop form): a row may hold a run of tiles of one segment; tile t
    # covers rows [row start + t * ROWS, ...), each tile but the last whole, and its causal range ends at its own
    # last row (or at the causal end, when that comes first: a split chunk's).
    row_s = tl.load(TILES + tile * COLS + 0)
    row_e = tl.load(TILES + tile * COLS + 1)
    pre_s = tl.load(TILES + tile * COLS + 2)
    pre_e = tl.load(TILES + tile * COLS + 3)
    cau_s = tl.load(TILES + tile * COLS + 4)
    cau_e = tl.load(TILES + tile * COLS + 5)
    part = tl.load(TILES + tile * COLS + 6)
    D_PAD: tl.constexpr = BLOCK_D != D

    offs_i, tok, head, m_mask = _product_rows(row_s, row_e, kvh, GROUP, ROWS, BLOCK_M, WIDE)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    in_run = False  # a compile-time False without RUNS, so that the run's loop is not compiled at all
    if RUNS:
        in_run = part < 0
    if in_run:  # a run of whole tiles, each written in the loop (split chunks take the path below)
        _one_loop(Q, K, V, O, LSE, row_s, row_e, pre_s, pre_e, cau_s, cau_e, kvh, tile, TILES, stride_qt,
                  stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lt, stride_lh,
                  offs_d, d_mask, qk_scale, True, Q_AT_SWITCH, GROUP, ROWS, D, BLOCK_M, BLOCK_N, D_PAD, WIDE, PREC,
                  LAZY, TMA)
    else:
        if ONE_LOOP:
            m_i, l_i, acc = _one_loop(Q, K, V, O, LSE, row_s, row_e, pre_s, pre_e, cau_s, cau_e, kvh, tile, TILES,
                                      stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot,
                                      stride_oh, stride_lt, stride_lh, offs_d, d_mask, qk_scale, False, False,
                                      GROUP, ROWS, D, BLOCK_M, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
        else:
            q = _load(Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :], m_mask, d_mask,
                      True, D_PAD)
            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            # The instruction prefix (document tiles): every row sees every key; only a last partial block is
            # masked.
            pre_mid = pre_s + (pre_e - pre_s) // BLOCK_N * BLOCK_N
            for start in range(pre_s, pre_mid, BLOCK_N):
                m_i, l_i, acc = _key_block(q, K, V, start, pre_e, False, kvh, stride_kt, stride_kh, stride_vt,
                                           stride_vh, offs_d, d_mask, tok, m_i, l_i, acc, qk_scale, False,
                                           False, False, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
            for start in range(pre_mid, pre_e, BLOCK_N):  # at most one block
                m_i, l_i, acc = _key_block(q, K, V, start, pre_e, False, kvh, stride_kt, stride_kh, stride_vt,
                                           stride_vh, offs_d, d_mask, tok, m_i, l_i, acc, qk_scale, True,
                                           False, False, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
            # The causal range [cau_s, cau_e): blocks that end at or before the tile's first token are seen whole
            # by every row; the rest (the diagonal and a last partial block) are masked.
            full_end = tl.minimum(cau_e, row_s + 1)
            cau_mid = cau_s + tl.maximum(full_end - cau_s, 0) // BLOCK_N * BLOCK_N
            for start in range(cau_s, cau_mid, BLOCK_N):
                m_i, l_i, acc = _key_block(q, K, V, start, cau_e, False, kvh, stride_kt, stride_kh, stride_vt,
                                           stride_vh, offs_d, d_mask, tok, m_i, l_i, acc, qk_scale, False,
                                           True, False, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
            for start in range(cau_mid, cau_e, BLOCK_N):
                m_i, l_i, acc = _key_block(q, K, V, start, cau_e, False, kvh, stride_kt, stride_kh, stride_vt,
                                           stride_vh, offs_d, d_mask, tok, m_i, l_i, acc, qk_scale, True,
                                           True, False, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
        _write(O, LSE, PO, PL, m_i, l_i, acc, part, kvh, offs_i, tok, head, m_mask, offs_d, d_mask, stride_ot,
               stride_oh, stride_lt, stride_lh, HKV, D, BLOCK_M, True)
        if FUSED:  # (COUNT, GROUPS and GROUP_OF are read only here)
            if part >= 0:
                _merge_last(PO, PL, O, LSE, COUNT, GROUPS, GROUP_OF, part, kvh, HKV, stride_ot, stride_oh, stride_lt,
                            stride_lh, GROUP, ROWS, D, BLOCK_D, BLOCK_M, WIDE)


@triton.jit
def _one_loop(Q, K, V, O, LSE, row_s, row_e, pre_s, pre_e, cau_s, cau_e, kvh, tile, TILES, stride_qt, stride_qh,
              stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lt, stride_lh, offs_d, d_mask,
              qk_scale, RUNS: tl.constexpr, Q_AT_SWITCH: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
              D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, WIDE: tl.constexpr,
              PREC: tl.constexpr, LAZY: tl.constexpr, TMA: tl.constexpr):
    """One loop over a tile's prefix blocks then its causal blocks, every block masked: loads overlap across the
    two ranges. Returns the tile's softmax state. RUNS: over the (tile, key block) pairs of the row's run of
    tiles, so that loads also overlap from one tile to the next; each tile is written out in the loop. A run's
    query rows load in the loop, ahead, with every key block, or (Q_AT_SWITCH) only with a tile's first block
    (the load is off, and moves no data, on the others) and are then held in registers."""
    offs_i, tok, head, m_mask = _product_rows(row_s, row_e, kvh, GROUP, ROWS, BLOCK_M, WIDE)
    if not RUNS:  # (runs load their query rows in the loop)
        q = _load(Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :], m_mask, d_mask, True,
                  D_PAD)
    elif Q_AT_SWITCH:
        q = tl.zeros([BLOCK_M, offs_d.shape[0]], dtype=Q.dtype.element_ty)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, offs_d.shape[0]], dtype=tl.float32)
    n_pre = tl.cdiv(pre_e - pre_s, BLOCK_N)
    tile_s = row_s
    tile_e = tl.minimum(tl.minimum(row_s + ROWS, row_e), cau_e)  # the current tile's causal end
    j = 0  # the current tile's key block
    for it in range(0, tl.load(TILES + tile * COLS + 7)):
        if RUNS:  # the current tile's query rows, loaded ahead with the key and value blocks by the pipeline
            if Q_AT_SWITCH:  # (``first`` is a row comparison: the interpreter rejects a mask with a scalar)
                first = offs_i < tl.where(j == 0, BLOCK_M, 0)
                q_new = tl.load(Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                                mask=(m_mask & first)[:, None] & d_mask[None, :], other=0.0)
                q = tl.where(j == 0, q_new, q)
            else:
                q = _load(Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :], m_mask,
                          d_mask, True, D_PAD)
        in_prefix = j < n_pre
        start = tl.where(in_prefix, pre_s + j * BLOCK_N, cau_s + (j - n_pre) * BLOCK_N)
        m_i, l_i, acc = _key_block(q, K, V, start, tl.where(in_prefix, pre_e, tile_e), in_prefix, kvh, stride_kt,
                                   stride_kh, stride_vt, stride_vh, offs_d, d_mask, tok, m_i, l_i, acc, qk_scale,
                                   True, True, True, BLOCK_N, D_PAD, WIDE, PREC, LAZY, TMA)
        if RUNS:
            done = j == n_pre + tl.cdiv(tile_e - cau_s, BLOCK_N) - 1  # the tile's last block
            if done:  # stores only: a branch that yields values would stop the loop's software pipelining
                _write(O, LSE, O, LSE, m_i, l_i, acc, -1, kvh, offs_i, tok, head, m_mask, offs_d, d_mask, stride_ot,
                       stride_oh, stride_lt, stride_lh, 0, D, BLOCK_M, False)
            # then the run's next tile, by selects: its rows and a fresh softmax state
            tile_s = tl.where(done, tile_s + ROWS, tile_s)
            tile_e = tl.minimum(tl.minimum(tile_s + ROWS, row_e), cau_e)
            j = tl.where(done, 0, j + 1)
            offs_i, tok, head, m_mask = _product_rows(tile_s, row_e, kvh, GROUP, ROWS, BLOCK_M, WIDE)
            m_i = tl.where(done, float("-inf"), m_i)
            l_i = tl.where(done, 0.0, l_i)
            acc = tl.where(done, 0.0, acc)
        else:
            j += 1
    return m_i, l_i, acc


@triton.jit
def _write(O, LSE, PO, PL, m_i, l_i, acc, part, kvh, offs_i, tok, head, m_mask, offs_d, d_mask, stride_ot, stride_oh,
           stride_lt, stride_lh, HKV, D: tl.constexpr, BLOCK_M: tl.constexpr, PARTIAL: tl.constexpr):
    """A finished tile's output and log-sum-exp, or (PARTIAL, ``part`` >= 0) one split chunk's float32 partials.
    Without PARTIAL the partials' store, and the shared memory its layout conversion takes, are not compiled."""
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc * (1.0 / l_safe)[:, None]  # one division per row, not per element (a division is ~5 instructions)
    lse = (m_i + tl.log2(l_safe)) / 1.4426950408889634  # -inf for a row that saw no key (split chunks only)
    if not PARTIAL or part < 0:
        tl.store(O + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
        tl.store(LSE + tok * stride_lt + head * stride_lh, lse, mask=m_mask)
    else:  # one chunk of a split tile: float32 partials [part, HKV, BLOCK_M, D] and [part, HKV, BLOCK_M]
        slot = (part.to(tl.int64) * HKV + kvh) * BLOCK_M
        tl.store(PO + (slot + offs_i[:, None]) * D + offs_d[None, :], out, mask=m_mask[:, None] & d_mask[None, :])
        tl.store(PL + slot + offs_i, lse, mask=m_mask)


@triton.jit
def _merge(PO, PL, O, LSE, GROUPS, HKV, stride_ot, stride_oh, stride_lt, stride_lh, GROUP: tl.constexpr,
           ROWS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, WIDE: tl.constexpr):
    """The chunks of one split tile and key/value head, merged by log-sum-exp into out and lse."""
    pid = tl.program_id(0)
    _merge_group(PO, PL, O, LSE, GROUPS, pid // HKV, pid % HKV, HKV, stride_ot, stride_oh, stride_lt, stride_lh,
                 GROUP, ROWS, D, BLOCK_D, BLOCK_M, WIDE, "")


@triton.jit
def _merge_group(PO, PL, O, LSE, GROUPS, grp, kvh, HKV, stride_ot, stride_oh, stride_lt, stride_lh,
                 GROUP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, WIDE: tl.constexpr, CACHE: tl.constexpr):
    """Merge group ``grp``'s chunks (GROUPS row: row start, row end, first partial slot, chunks) for key/value
    head ``kvh``, in chunk order (so the result does not depend on which program merges). CACHE: the partials'
    load cache modifier (".cg": from L2, past the SM's own L1, for partials that other programs wrote in this
    launch)."""
    row_s = tl.load(GROUPS + grp * 4 + 0)
    row_e = tl.load(GROUPS + grp * 4 + 1)
    first = tl.load(GROUPS + grp * 4 + 2)
    n = tl.load(GROUPS + grp * 4 + 3)
    offs_i, tok, head, m_mask = _product_rows(row_s, row_e, kvh, GROUP, ROWS, BLOCK_M, WIDE)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    slot0 = (first.to(tl.int64) * HKV + kvh) * BLOCK_M  # chunk j's partials start at slot0 + j * HKV * BLOCK_M
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for j in range(0, n):
        m = tl.maximum(m, tl.load(PL + slot0 + j * HKV * BLOCK_M + offs_i, mask=m_mask, other=float("-inf"),
                                  cache_modifier=CACHE))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, n):
        slot = slot0 + j * HKV * BLOCK_M
        w = tl.exp(tl.load(PL + slot + offs_i, mask=m_mask, other=float("-inf"), cache_modifier=CACHE) - m_safe)
        o = tl.load(PO + (slot + offs_i[:, None]) * D + offs_d[None, :], mask=m_mask[:, None] & d_mask[None, :],
                    other=0.0, cache_modifier=CACHE)
        den += w
        acc += w[:, None] * o
    den_safe = tl.where(den > 0, den, 1.0)
    tl.store(O + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             (acc * (1.0 / den_safe)[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(LSE + tok * stride_lt + head * stride_lh, m_safe + tl.log(den_safe), mask=m_mask)


@triton.jit
def _last_arrival(COUNTER, n):
    """Whether this program is the last of the ``n`` that share the int32 counter at ``COUNTER`` to arrive
    (each calls this once, after storing what the last one reads); the last zeroes the counter for the next
    launch. The barrier puts every thread's stores before the ticket, whose acquire-release atomic add (at GPU
    scope) makes the other programs' stores visible to the last: the pattern of CUTLASS's semaphores. The last
    program reads them with the ".cg" cache modifier (from L2, not its SM's L1)."""
    tl.debug_barrier()
    last = tl.atomic_add(COUNTER, 1, sem="acq_rel", scope="gpu") == n - 1
    if last:
        tl.store(COUNTER, 0)
    return last


@triton.jit
def _merge_last(PO, PL, O, LSE, COUNT, GROUPS, GROUP_OF, part, kvh, HKV, stride_ot, stride_oh, stride_lt,
                stride_lh, GROUP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, WIDE: tl.constexpr):
    """After a split chunk's partials are stored (``fused_merge``): the last chunk of its group (per key/value
    head) to finish merges all of them."""
    grp = tl.load(GROUP_OF + part)
    if _last_arrival(COUNT + grp * HKV + kvh, tl.load(GROUPS + grp * 4 + 3)):
        _merge_group(PO, PL, O, LSE, GROUPS, grp, kvh, HKV, stride_ot, stride_oh, stride_lt, stride_lh, GROUP, ROWS,
                     D, BLOCK_D, BLOCK_M, WIDE, ".cg")


def launch_table(tiles: np.ndarray, block_n: int) -> np.ndarray:
    """Layout tiles (int [n, 5]) as launch rows, int64 [n, 8]: the causal range ends at the tile's last row, no
    partial slot (-1), and the key blocks the tile visits."""
    t = tiles.astype(np.int64)
    table = np.column_stack([t, t[:, 1], np.full(len(t), -1, dtype=np.int64), np.zeros(len(t), dtype=np.int64)])
    table[:, 7] = key_blocks(table, block_n)
    return table


def key_blocks(table: np.ndarray, block_n: int) -> np.ndarray:
    """Key blocks each one-tile launch row visits (prefix and causal range), int64 [n]."""
    return -(-(table[:, 3] - table[:, 2]) // block_n) + -(-(table[:, 5] - table[:, 4]) // block_n)


def runs(table: np.ndarray, rows: int, per_program: int) -> np.ndarray:
    """One-tile launch rows (unsplit, in layout order) joined into runs of at most ``per_program`` consecutive
    tiles of one segment: same prefix and causal start, each tile but the last ``rows`` rows long and ending
    where the next begins. A run's row spans its tiles' rows and sums their key blocks."""
    if per_program <= 1 or len(table) < 2:
        return table
    prev, cur = table[:-1], table[1:]
    joins = ((cur[:, 2:5] == prev[:, 2:5]).all(1) & (cur[:, 0] == prev[:, 1]) & (prev[:, 1] - prev[:, 0] == rows))
    chain = np.concatenate([[0], np.cumsum(~joins)])  # tiles joined to the one before share a chain
    first = np.flatnonzero(np.concatenate([[True], ~joins]))
    run = (np.arange(len(table)) - first[chain]) // per_program  # position in the chain, per program
    starts = np.flatnonzero(np.concatenate([[True], (chain[1:] != chain[:-1]) | (run[1:] != run[:-1])]))
    ends = np.concatenate([starts[1:], [len(table)]]) - 1
    out = table[starts].copy()
    out[:, 1] = out[:, 5] = table[ends, 1]
    out[:, 7] = np.add.reduceat(table[:, 7], starts)
    return out


def schedule(tiles: np.ndarray, block_n: int, max_blocks: int, rows: int = 1, per_program: int = 1,
             segments: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The launch table (int32 [n, 8]) and the merge groups (int32 [g, 4]: row start, row end, first partial
    slot, chunks). A tile that visits more than ``max_blocks`` key blocks (0: never split) becomes chunks of at
    most that many blocks, each with its own partial slot. With ``per_program`` > 1 (the one-loop form only) the
    other tiles of a segment run ``per_program`` at a time in one program (tiles of ``rows`` token rows).

    Order: programs run longest first. With ``segments`` (int [T], each token's segment:
    :meth:`SegmentLayout.segment_ids`; a program's segment is its first row's), programs short enough that their
    order cannot unbalance the end of the launch run after the others, grouped by segment and longest first within
    one: the segments whose longest such program is longest first, then in layout order. Short: at most
    1/SHORT_SHARE of the longest program's key blocks, or of ``max_blocks`` where that is more (the default split
    threshold is the average load of a program slot, which the launch takes in any case, or 64 blocks for small
    launches; the query tiles of a batch of 2k-token prompts are shorter than it and unsplit). A document's tiles
    then run together and read its keys and values from L2, where longest first across all documents runs its
    tiles in as many waves as their lengths differ, each wave over every document's keys (bench/model_l2.py)."""
    table = launch_table(tiles, block_n)
    if segments is not None:
        segments = np.asarray(segments, dtype=np.int64)
        T = int(table[:, 1].max()) if len(table) else 0
        if segments.ndim != 1 or len(segments) < T:
            raise ValueError(f"segments must hold each token's segment (at least {T}), got shape {segments.shape}")
        if len(segments) and segments.min() < 0:
            raise ValueError("segments must be segment indices (>= 0)")
    cost = table[:, 7]
    split = np.flatnonzero(cost > max_blocks) if max_blocks > 0 else np.zeros(0, dtype=np.int64)
    rows_out, groups = [runs(table[np.setdiff1d(np.arange(len(table)), split)], rows, per_program)], []
    slot = 0
    for i in split.tolist():
        r0, r1, p0, p1, c0 = table[i, :5].tolist()
        n_pre = -(-(p1 - p0) // block_n)  # the visited keys as one list of blocks, the prefix's first
        first_slot = slot
        for first in range(0, int(cost[i]), max_blocks):
            last = min(first + max_blocks, int(cost[i]))
            pre = (min(p0 + first * block_n, p1), min(p0 + last * block_n, p1))
            a, b = max(first - n_pre, 0), max(last - n_pre, 0)
            rows_out.append(np.array([[r0, r1, *pre, min(c0 + a * block_n, r1), min(c0 + b * block_n, r1), slot,
                                       last - first]]))
            slot += 1
        groups.append((r0, r1, first_slot, slot - first_slot))
    table = np.concatenate(rows_out)
    cost = table[:, 7].astype(np.int64)
    if segments is None or not len(table):
        order = np.argsort(-cost, kind="stable")
    else:
        seg = segments[table[:, 0]]  # (a run may join a prompt's instruction and query: the instruction's)
        short = cost <= max(int(cost.max()), max_blocks) // SHORT_SHARE
        longest = np.zeros(int(seg.max()) + 1, dtype=np.int64)
        np.maximum.at(longest, seg[short], cost[short])
        # the long programs first, longest first; then the short ones by segment
        keys = [np.where(short, x, 0) for x in (-cost, seg, -longest[seg])]  # (long ones: their old order)
        order = np.lexsort((*keys, -np.where(short, 0, cost), short))
    return table[order].astype(np.int32), np.asarray(groups, dtype=np.int32).reshape(-1, 4)


def programs_per_sm(cfg: dict) -> int:
    """Programs of a launch configuration that an SM holds at once, as its 65,536 registers allow: 32 x warps
    threads of ``maxnreg`` registers each, or of 255 (ptxas's most) where no cap is set, which makes the count
    a lower bound there. The Hopper default (4 warps, 168 registers) is 3."""
    return max(1, 65536 // (32 * cfg["num_warps"] * cfg.get("maxnreg", 255)))


def split_threshold(key_blocks: int, heads: int, sms: int, per_sm: int) -> int:
    """Key blocks a program may visit before its tile is split, for ``key_blocks`` in the launch table (per
    head), ``heads`` programs per table row, ``sms`` SMs and ``per_sm`` programs resident on each: the average
    load of one program slot, ceil(key_blocks x heads / (sms x per_sm)), and never below 64 blocks. At the
    bench's shapes on an H100 (132 SMs, 3 slots each: 142 blocks at 16k tokens, 1,011 at 100k) the query's
    long tiles become 4 chunks each. Timed from CUDA graphs (bench/probe_kernels.py, bench/RESULTS.md), the
    call is flat within 3% for chunks from half to one and a half slot loads, and slower outside: at 16k 0.223
    ms for 213 blocks, 0.228 for 128 and 160, 0.235 for 64-71, 0.252 for 32, 0.272 for 320; at 100k 1.56-1.57
    ms from 506 to 1,024 blocks, 1.61 at 256 and 1,516, 1.97 at 64. Each chunk costs more than its share of
    the work (its query load, pipeline fill and partial write, and the merge): half a slot's load (the rule of
    bd5779e) was 5% slower than 1.5 slots at 16k, where a list-scheduling model (bench/model_split.py) had
    predicted it faster."""
    return max(64, -(-key_blocks * heads // (sms * per_sm)))


def total_key_blocks(tiles: np.ndarray, block_n: int) -> int:
    """Key blocks the launch table's programs visit in all, per key/value head (the split rule's load)."""
    return int(launch_table(tiles, block_n)[:, 7].sum())


def auto_max_blocks(tiles: np.ndarray, block_n: int, heads: int, device: torch.device, per_sm: int) -> int:
    """:func:`split_threshold` for these tiles on ``device``'s SMs with ``per_sm`` programs resident on each
    (:func:`programs_per_sm`). 0 (no split) off CUDA."""
    if device.type != "cuda":
        return 0
    sms = cuda_sm_count(device)
    return split_threshold(total_key_blocks(tiles, block_n), heads, sms, per_sm)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None, block_m: Optional[int] = None,
                           block_n: Optional[int] = None,
                           out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
                           wide: Optional[bool] = None, max_blocks: Optional[int] = None,
                           num_warps: Optional[int] = None, num_stages: Optional[int] = None,
                           one_loop: Optional[bool] = None, tiles_per_program: int = 1,
                           query_load: str = "block", lazy_rescale: Optional[bool] = None,
                           max_registers: Optional[int] = None, tma: Optional[bool] = None,
                           fused_merge: bool = False, launch_order: str = "segments", *, _checked: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel's entry, with its launch options; q, k, v and layout as the public
    :func:`irforge.kernels.block_sparse_attention` takes them, and checked as it checks them (``_checked``: by the
    caller, which that function is). ``out`` [T, Hq, D] (q's dtype) and ``lse`` [T, Hq] float32 may be given
    (contiguous, on q's device) to be written in place.
    ``wide``: 64-bit element offsets (default: when a tensor holds 2^31 elements or more). ``max_blocks``: key
    blocks per program before a tile is split (None: from the GPU's SM count and the programs each SM holds,
    :func:`split_threshold`; 0: never). ``num_warps`` and
    ``num_stages``: Triton launch options; ``block_m``: rows of each product (block_m // group token rows x the
    group of query heads per key/value head, at least one token row), ``block_n``: keys per block (None: from
    :func:`launch_config`). The launch table is built once per layout and device and kept on the layout.
    ``one_loop``: a tile's prefix and causal key blocks in one software-pipelined loop, every block masked,
    instead of four loops that skip the masks of whole blocks. A document tile visits only 2-4 blocks, spread
    over those loops, so each loop's first load is waited for; one loop overlaps them. None (the default): one
    loop where :func:`launch_config` picks it (Hopper, 16-bit rows of 256 bytes or more: 1.33x the four-loop
    form at 16k tokens and 1.20x at 100k on an H100, ``bench_kernels.py --sweep``), four loops elsewhere (not
    timed on other GPUs). ``tiles_per_program``: in the one-loop form (implied when above 1), a program takes up
    to this many consecutive tiles of one segment in turn, in the same loop, so that the next tile's first key
    blocks load while this tile's last ones are computed and the pipeline fills once per run instead of once per
    tile (a 160-token document holds 10 tiles of 16 tokens); tiles that are split never join a run. The query
    rows load ahead with the key and value blocks (``query_load="block"``): half again the traffic from L2 of
    the key and value blocks alone.
    ``query_load="tile"`` loads them only with a tile's first block and holds them in registers instead.
    Neither is the default: on an H100 runs of 2-16 tiles took 0.287-0.293 ms at 16k tokens against 0.242 for one
    tile per program in the default configuration, and "tile" was slower than "block" in every configuration swept.
    ptxas (triton 3.9, bf16, D 128, 64 x 64, sm_90, 4 warps, 2 stages): "block" 252 registers, 104 KB of shared
    memory (two programs per SM), no spills; "tile" spills 36 bytes (none at 64 x 32 keys). In the one-loop default
    at fp16 D 80 under groups of 3 (sm_90, 32 keys, 3 stages, 168 registers), runs spill 92 bytes, and 212 with
    64-bit offsets. A default configuration that the GPU's shared memory cannot hold falls back to smaller ones
    (kernels/_shared_memory.py). ``lazy_rescale``: the output accumulator is rescaled only when a row's running
    maximum grows by more than a factor of 2^8, not after every key block (see ``_softmax_step``); None: where
    :func:`default_lazy_rescale` says. ``max_registers``: ptxas's register limit per thread (Triton's ``maxnreg``,
    NVIDIA only); None: :func:`launch_config`'s (168 for the Hopper default, so that three programs fit an SM
    whatever registers a Triton version's compiler would otherwise take), else the compiler's choice.
    ``tma``: key and value blocks loaded by the Tensor Memory Accelerator through host-made tensor descriptors
    (NVIDIA compute capability 9.0 and later, and the Triton interpreter), not by per-thread addresses: 14-28
    fewer instructions per key block on sm_90 under triton 3.6-3.9 (bench/count_sass.py --tma). D must be a
    power of two (a block is whole rows). A block's rows past its range then hold the next keys, not zeros: the
    mask cuts their scores and their probabilities are 0, so only a non-finite value there (which the pointer
    loads never read) would reach the output. Keys or values not 16-byte aligned in memory take the pointer
    loads. None (the default): where :func:`default_tma` says (Hopper's one-loop form at 16-bit D 128).
    ``fused_merge``: split tiles' chunks are merged by the last of them to finish, in the same launch (a ticket
    per tile and key/value head, counted by an atomic add), instead of by a second kernel: one launch fewer per
    call (host time, and the second kernel's start on the GPU). The result is the same either way: the merge
    reads the chunks in their order. The counters are kept per CUDA stream, zero between calls, or made in the
    captured work under CUDA-graph capture (kernels/_tickets.py). Off by default: in two H100 runs
    (bench/RESULTS.md, 2026-11-27), from CUDA graphs it took 1% longer than the merge kernel at 16k tokens
    (0.207 and 0.216 ms against 0.205 and 0.214) and 3% longer to 1% shorter at 100k (1.430 and 1.422 against
    1.384 and 1.432); eagerly it was faster in three of four timings (0.251 and 0.209 ms against 0.339 and 0.221
    at 16k, 1.403 and 1.384 against 1.396 and 1.443 at 100k), but the default's were the first timings of their
    runs (bench_kernels.py now warms up and times the default again); the first run's probe, which timed the
    default three times first, gave 0.206 against 0.210-0.213 ms at 16k and 1.522 against 1.415-1.435 at 100k.
    The merge adds registers to the kernel: the Hopper default holds its 168 without spills (143 without the
    merge), and at D 256 on sm_90 ptxas spills 228 bytes (tests/test_kernels_compile.py).
    ``launch_order``: "segments" (the default) runs the long programs longest first, then the short ones (a
    document's tiles, in practice) grouped by segment, so that a document's keys and values are read from
    memory about once, not once per wave of tiles of one length; "longest" (the order before) runs all longest
    first (:func:`schedule`). A model of the L2 cache (bench/model_l2.py) puts the bench's memory reads at 247
    against 351 MB at 16k tokens and 1.65 against 3.00 GB at 100k, for a list-scheduling time within 1%. In two
    H100 runs (2026-11-27, CUDA graphs) "segments" took 0.205 and 0.214 ms against 0.225 and 0.230 at 16k
    tokens, and 1.384 and 1.432 against 1.793 and 1.761 at 100k. The results are the same in either order."""
    if not _checked:
        check_qkv(q, k, v, layout)
    if out is not None:
        check_output("out", out, q.shape, q.dtype, q.device)
    if lse is not None:
        check_output("lse", lse, q.shape[:2], torch.float32, q.device)
    check_launch(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages,
                 max_blocks=max_blocks, tiles_per_program=tiles_per_program, max_registers=max_registers)
    if query_load not in ("block", "tile"):
        raise ValueError(f"query_load must be 'block' or 'tile', got {query_load!r}")
    if launch_order not in ("segments", "longest"):
        raise ValueError(f"launch_order must be 'segments' or 'longest', got {launch_order!r}")
    check_scale(scale)  # positive: the kernel scales the row maxima, not each score (see _softmax_step)
    if max_registers is not None and torch.version.hip is not None:
        raise ValueError("max_registers is ptxas's register limit: NVIDIA GPUs only")
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(T, Hq, dtype=torch.float32, device=q.device) if lse is None else lse
    block_d = padded_d(D)
    capability = cuda_capability(q.device) if q.is_cuda else None
    one_loop = tiles_per_program > 1 or (default_one_loop(q.dtype, block_d, capability) if one_loop is None
                                         else bool(one_loop))
    if tma is None:
        tma = default_tma(q.dtype, D, capability, one_loop)
    elif tma:  # (capability None: CPU tensors, the Triton interpreter)
        if D != block_d:
            raise ValueError(f"tma=True loads whole rows of keys and values: D must be a power of two, got {D}")
        if capability is not None and (torch.version.hip is not None or capability[0] < 9):
            raise ValueError("tma=True needs the Tensor Memory Accelerator: an NVIDIA GPU of compute capability "
                             "9.0 or later")
        if tensor_descriptor_class() is None:
            raise ValueError(f"tma=True needs host tensor descriptors, which triton {triton.__version__} lacks "
                             "(triton.tools.tensor_descriptor)")
    cfg = launch_config(q.dtype, block_d, block_m, block_n, num_warps, num_stages, capability, one_loop,
                        max_registers)
    lazy = (default_lazy_rescale(q.dtype, block_d, capability, cfg["num_warps"], one_loop)
            if lazy_rescale is None else bool(lazy_rescale))
    wide = check_wide(wide, q, k, v, out)
    tma = bool(tma) and k.data_ptr() % 16 == 0 and v.data_ptr() % 16 == 0  # (rows of 2^k >= 16 elements are)
    given_max_blocks = max_blocks

    def run(cfg: dict) -> None:
        cfg = dict(cfg)
        block_n = cfg.pop("block_n")
        rows, block_m = product_rows(cfg.pop("block_m"), group)  # token rows per tile, rows of the product
        tiles = layout.memo(("tiles", rows), lambda: layout.tiles(rows))
        if len(tiles) == 0:
            return
        max_blocks = given_max_blocks
        if max_blocks is None:
            per_sm = programs_per_sm(cfg)
            max_blocks = layout.memo(("max_blocks", rows, block_n, Hkv, per_sm, str(q.device)),
                                     lambda: auto_max_blocks(tiles, block_n, Hkv, q.device, per_sm))

        def build():
            segments = layout.segment_ids() if launch_order == "segments" else None
            table, groups = schedule(tiles, block_n, max_blocks, rows, tiles_per_program, segments)
            return (torch.as_tensor(table, device=q.device), torch.as_tensor(groups, device=q.device),
                    int(groups[:, 3].sum()) if len(groups) else 0)

        memo_key = (rows, block_n, max_blocks, tiles_per_program, launch_order, str(q.device))
        table, groups, parts = layout.memo(("bsa", *memo_key), build)
        fused = bool(fused_merge) and len(groups) > 0
        counts = group_of = table  # (int32 placeholders where nothing is merged in the kernel: never read)
        if fused:  # the split tiles' tickets, one per tile and key/value head (kernels/_tickets.py), and each
            # partial slot's tile (a tile's slots are consecutive), built on the device once per layout
            counts = tickets(len(groups) * Hkv, q.device)
            group_of = layout.memo(("bsa_group_of", *memo_key), lambda: torch.repeat_interleave(
                torch.arange(len(groups), dtype=torch.int32, device=q.device), groups[:, 3], output_size=parts))
        part_o = torch.empty(max(parts * Hkv * block_m * D, 1), dtype=torch.float32, device=q.device)
        part_l = torch.empty(max(parts * Hkv * block_m, 1), dtype=torch.float32, device=q.device)
        keys, values = k, v
        if tma:  # a [T, Hkv * D] matrix each, read in blocks of block_n rows by one head's D columns
            descriptor = tensor_descriptor_class()
            keys, values = (descriptor(x, [T, Hkv * D], [Hkv * D, 1], [block_n, D]) for x in (k, v))
        _bsa_fwd[(len(table) * Hkv,)](q, keys, values, out, lse, part_o, part_l, table, counts,
                                      groups if fused else table, group_of, Hkv, q.stride(0),
                                      q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                      out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), scale * LOG2E,
                                      GROUP=group, ROWS=rows, D=D, BLOCK_D=block_d, BLOCK_M=block_m,
                                      BLOCK_N=block_n, WIDE=wide, PREC=dot_precision(q.dtype), ONE_LOOP=one_loop,
                                      RUNS=tiles_per_program > 1, Q_AT_SWITCH=query_load == "tile", LAZY=lazy,
                                      TMA=tma, FUSED=fused, **cfg, **COMPILE_OPTIONS)
        if len(groups) and not fused:
            _merge[(len(groups) * Hkv,)](part_o, part_l, out, lse, groups, Hkv, out.stride(0), out.stride(1),
                                         lse.stride(0), lse.stride(1), GROUP=group, ROWS=rows, D=D,
                                         BLOCK_D=block_d, BLOCK_M=block_m, WIDE=wide, num_warps=8,
                                         **COMPILE_OPTIONS)

    # a configuration the caller set is launched as given; the default falls back to smaller ones where the
    # GPU's shared memory is too small for it (kernels/_shared_memory.py)
    pinned = any(x is not None for x in (block_m, block_n, num_warps, num_stages, max_registers))
    key = ("bsa", q.device, q.dtype, D, group, one_loop, tiles_per_program > 1, query_load, wide, lazy, tma,
           bool(fused_merge))
    launch_fitting(key, cfg, run, pinned)
    return out, lse


def _row_bytes(dtype: torch.dtype, block_d: int) -> int:
    """Bytes of one padded row of q, k or v."""
    return block_d * torch.finfo(dtype).bits // 8


def _hopper_16bit(dtype: torch.dtype, block_d: int, capability: Optional[tuple[int, int]]) -> bool:
    """NVIDIA Hopper (sm_90) and 16-bit rows of 256 bytes or more (D 128 and up): the case the
    launch-configuration sweeps on an H200 and an H100 (bench_kernels.py --sweep) chose defaults for. (ROCm
    builds of torch report AMD GPUs' own versions as capabilities, (9, 4) for an MI300: not Hopper.)"""
    return (dtype in (torch.float16, torch.bfloat16) and _row_bytes(dtype, block_d) >= 256
            and capability is not None and capability[0] == 9 and torch.version.hip is None)


def default_one_loop(dtype: torch.dtype, block_d: int, capability: Optional[tuple[int, int]]) -> bool:
    """Whether the kernel runs in its one-loop form when the caller does not say: on Hopper with 16-bit rows of
    256 bytes or more, where the H100 sweep timed it fastest; the four-loop form elsewhere."""
    return _hopper_16bit(dtype, block_d, capability)


def default_tma(dtype: torch.dtype, D: int, capability: Optional[tuple[int, int]], one_loop: bool) -> bool:
    """Whether key and value blocks load through tensor descriptors when the caller does not say: in the one-loop
    form on Hopper with 16-bit rows of 256 bytes (D 128, a power of two), where a Triton with host tensor
    descriptors runs. Two H100 runs of that configuration (3 stages, at most 168 registers) against pointer
    loads: 0.225-0.231 against 0.232-0.241 ms at 16k tokens in all four timings, and no better or worse at 100k
    (1.552-1.676 against 1.564-1.652 ms; bench/RESULTS.md). Elsewhere it has not been timed."""
    return (one_loop and _hopper_16bit(dtype, D, capability) and _row_bytes(dtype, D) == 256
            and tensor_descriptor_class() is not None)


def tensor_descriptor_class():
    """Triton's host tensor descriptor (triton.tools.tensor_descriptor.TensorDescriptor), or None in a Triton
    release without one."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


def default_lazy_rescale(dtype: torch.dtype, block_d: int, capability: Optional[tuple[int, int]],
                         num_warps: int, one_loop: bool = False) -> bool:
    """Whether the kernel rescales its accumulator lazily when the caller does not say: in the four-loop form on
    Hopper, 16-bit rows of 256 bytes or more, one warpgroup (4 warps), where ptxas (at its 255-register cap)
    spills 4-8 bytes without it. Not in the one-loop form, Hopper's default: there it saves 33-50 of 320-351
    SASS instructions per key block (triton 3.6 and 3.9), yet on an H100 it was slower, twice at both bench
    sizes (5d5ceb3: 0.240-0.241 against 0.232 ms at 16k tokens, 1.604-1.627 against 1.564-1.603 ms at 100k;
    bench/RESULTS.md). Not elsewhere: in the sm_80 four-loop default (8 warps, 32 accumulator values per
    thread) it saves 2 of 515 instructions and adds a barrier per block."""
    return num_warps == 4 and not one_loop and _hopper_16bit(dtype, block_d, capability)


def launch_config(dtype: torch.dtype, block_d: int, block_m: Optional[int] = None, block_n: Optional[int] = None,
                  num_warps: Optional[int] = None, num_stages: Optional[int] = None,
                  capability: Optional[tuple[int, int]] = None, one_loop: bool = False,
                  max_registers: Optional[int] = None) -> dict:
    """Tile sizes and Triton launch options, each taken from the caller when given; ``capability``: the GPU's
    compute capability (None: not known); ``one_loop``: the kernel's form; ``max_registers``: ptxas's limit per
    thread (``maxnreg``). Chosen so that ptxas spills no registers in the shipped configurations
    (tests/test_kernels_compile.py reads its counts for sm_80 to sm_120):
    - Products of 64 rows (token rows x the query-head group, padded to a power of two) by 64 keys.
    - Rows of 256 bytes or more (D 128 in 16 bits): on Hopper (sm_90) one warpgroup, 4 warps. In the one-loop
      form 32 keys per block and 3 stages: on an H100, 0.242 ms at 16k tokens against 0.277 at 64 keys and 3
      stages, 0.309 at 64 keys and 2 stages, and 0.322 for the four-loop form's best (64 keys, 2 stages; 3
      stages spill there). With at most 168 registers per thread (``maxnreg``), so that 3 programs share an SM
      (3 x 128 threads x 168 <= 65,536 registers; 3 x 64 KB of shared memory): ptxas alone gives this form
      201-205 registers under triton 3.6 to 3.9 (2 programs per SM above 168), and at 168 spills none in any
      of them. Only at D 128: a D 256 tile's 128 KB of shared memory lets one program run per SM in any case.
      Elsewhere 8 warps, since at 4 the 64 x D float32 accumulator, the query tile and the key/value tiles need
      more than 255 registers per thread on sm_80. Narrower rows: 4 warps.
    - float32 at full precision (tl.dot's "ieee" path runs on FMA units, not tensor cores, and holds more in
      registers): 32 rows by 32 keys (16 keys from a padded D of 128) and 8 warps. With TF32 allowed: 64 x 64,
      8 warps from D 64. The one known spill: at D 64 on sm_80 ptxas holds this kernel to 64 registers per
      thread and spills 4-12 bytes (triton 3.6-3.9), not in the compile test.
    Otherwise Triton's default stages."""
    ieee = dot_precision(dtype) == "ieee"
    wide_rows = _row_bytes(dtype, block_d) >= 256
    hopper_16bit = _hopper_16bit(dtype, block_d, capability)
    hopper_one_loop = hopper_16bit and one_loop and num_warps is None
    cfg = {"block_m": block_m or (32 if ieee else 64),
           "block_n": block_n or ((16 if block_d >= 128 else 32) if ieee else 32 if hopper_one_loop else 64),
           "num_warps": num_warps or (4 if hopper_16bit else 8 if ieee or wide_rows else 4)}
    if num_stages is None and hopper_16bit and num_warps is None:
        num_stages = 3 if one_loop else 2
    if num_stages is not None:
        cfg["num_stages"] = num_stages
    if max_registers is None and hopper_one_loop and _row_bytes(dtype, block_d) == 256:
        max_registers = 168
    if max_registers is not None:
        cfg["maxnreg"] = max_registers
    return cfg


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: float32 inputs follow torch.get_float32_matmul_precision() ("highest", torch's
    default: full float32; "high"/"medium": TF32 tensor cores), as torch's own matrix products do. 16-bit
    inputs are exact in either."""
    return "ieee" if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest" else "tf32"


def needs_wide(*tensors: torch.Tensor) -> bool:
    """Whether element offsets into any of the tensors can pass 2^31 - 1 (int32 arithmetic would wrap)."""
    return max(t.numel() for t in tensors) >= 2**31 - 1


def check_wide(wide: Optional[bool], *tensors: torch.Tensor) -> bool:
    """The kernels' ``wide`` option for these tensors: 64-bit offsets where :func:`needs_wide` says when not
    given (None); ``wide=False`` where they are needed is a ValueError, not offsets that wrap into other memory."""
    needed = needs_wide(*tensors)
    if wide is not None and not wide and needed:
        raise ValueError("wide=False, but a tensor holds 2^31 elements or more: 32-bit offsets would wrap")
    return needed if wide is None else bool(wide)
