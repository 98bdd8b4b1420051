"""Triton kernel for attention mass: per key token and head, the weighted sum over selected rows of their softmax
probabilities, without materialising the attention matrix.

Grid: key blocks of BLOCK_N x key/value heads, heads fastest. Each program loads its key block once for every
query head that shares the key/value head (grouped-query heads packed into the rows of the products, as in the
block-sparse kernel) and loops over the selected rows that can see its keys (rows sorted by position; per key
block the host gives the run of rows at or after the block whose first covered key is before its end, so
packed prompts never meet each other's keys). P0 holds each row's first covered key: its prompt's start, or
later under a sliding window. It recomputes their scores against its keys, masks them (causal from P0; in
"documents" mode, also document keys only), turns them into probabilities with the rows'
log-sum-exp, and accumulates weight * probability per head (with ``whole_blocks``, the row blocks that see its
whole key block, by a host table per key block, skip the mask). Memory: O(T * Hq) output, nothing of size R x T.
Needs each row's log-sum-exp: given (the block-sparse forward returns it), or computed first by _lse_kernel over
the same sorted rows, their keys split across programs and merged by _lse_merge (ICR's capture, which runs SDPA,
and "documents" mode).

Shapes: q_rows [R, Hq, D], k [T, Hkv, D], lse [R, Hq] (natural log), weights [R]; returns mass [T, Hq] float32.
Offsets are 32-bit unless a tensor holds 2^31 elements or more (then 64-bit: ``WIDE``).
Timed on: an NVIDIA H200 and an H100 (bench/RESULTS.md, "Kernels on the GPU" and the notes after it); tested
in the Triton interpreter on the CPU and on both GPUs (_lse_kernel and sliding windows on the H100 only);
compiled for sm_80, sm_86/89, sm_90, sm_100 and sm_120 in the tests. Outside the shapes they compile, ptxas (triton
3.9) spills a few bytes in some of BlockRank's documents mode at fp16: 4-8 bytes in the normaliser's wider tiles
on sm_120 (D 80 and 128, groups of 3 and 4), 4 bytes in the mass kernel on sm_89 (D 80, groups of 3). Untimed.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from .._checks import (COMPILE_OPTIONS, cdiv, check_launch, check_output, cuda_sm_count, next_pow2, padded_d,
                       product_rows)
from .._shared_memory import launch_fitting
from .._tickets import tickets
from ..block_sparse_attention.kernel import _last_arrival, check_wide, dot_precision
from ..layout import SegmentLayout
from .common import check_mass_args, document_keys, first_keys, row_meta, to_device

LOG2E = 1.4426950408889634


@triton.jit
def _mass_rows(Q, LSE, W, POS, P0, r0, r_hi, offs_i, head, offs_d, d_mask, k, offs_n, key_ok, onehot, g_of_i, gcol,
               acc, stride_qr, stride_qh, stride_lr, stride_lh, qk_scale, MASKED: tl.constexpr,
               GROUP: tl.constexpr, ROWS: tl.constexpr, DOCS_ONLY: tl.constexpr, WIDE: tl.constexpr,
               PREC: tl.constexpr, HEAD_DOT: tl.constexpr):
    """acc plus the weighted probabilities of the row block from r0 on the program's key block, per key and
    query head. MASKED: each row's covered range [p0, pos] applies (and the key mask); else every row sees the
    whole key block (only "documents" mode's key mask applies), and the scale and the normaliser fold into one
    multiply-add. Product rows past the block (or past r_hi) load zero weight either way."""
    r = r0 + offs_i // GROUP
    if WIDE:
        r = r.to(tl.int64)
    m_mask = (r < r_hi) & (offs_i < ROWS * GROUP)
    q = tl.load(Q + r[:, None] * stride_qr + head[:, None] * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if MASKED:  # (as the kernel was before the unmasked path, and as timed then)
        pos = tl.load(POS + r, mask=m_mask, other=-1)
        p0 = tl.load(P0 + r, mask=m_mask, other=0)
        lse = tl.load(LSE + r * stride_lr + head * stride_lh, mask=m_mask, other=0.0)
        w = tl.load(W + r, mask=m_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        ok = (offs_n[None, :] >= p0[:, None]) & (offs_n[None, :] <= pos[:, None]) & key_ok[None, :] & m_mask[:, None]
        p = tl.where(ok, tl.exp2(s - lse[:, None] * 1.4426950408889634), 0.0) * w[:, None]
    else:
        lse2 = tl.load(LSE + r * stride_lr + head * stride_lh, mask=m_mask, other=0.0) * 1.4426950408889634
        w = tl.load(W + r, mask=m_mask, other=0.0)
        p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lse2[:, None]) * w[:, None]
        if DOCS_ONLY:
            p = tl.where(key_ok[None, :], p, 0.0)
    if HEAD_DOT:  # per head, the sum over its rows as one product on the tensor cores
        acc += tl.dot(tl.trans(p), onehot, input_precision=PREC)
    else:
        for g in tl.static_range(GROUP):  # the rows of head g summed into its column
            col = tl.sum(tl.where((g_of_i == g)[:, None], p, 0.0), 0)
            acc += tl.where(gcol[None, :] == g, col[:, None], 0.0)
    return acc


@triton.jit(do_not_specialize=["R"])
def _mass_kernel(Q, K, LSE, W, TABLES, DOC, MASS, T, R, HKV, qk_scale,
                 GROUP: tl.constexpr, GP: tl.constexpr, ROWS: tl.constexpr, DOCS_ONLY: tl.constexpr,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 WIDE: tl.constexpr, PREC: tl.constexpr, HEAD_DOT: tl.constexpr, WHOLE: tl.constexpr):
    """Q [R, Hq, D], K [T, HKV, D], LSE [R, Hq], MASS [T, Hq], all contiguous (the wrapper makes them so): their
    strides follow from the shapes and are not passed. TABLES: the rows' tables of :func:`_row_tables`, back to
    back from the positions on: positions, first covered keys (R each), then per key block row_lo, row_hi,
    whole_lo and whole_hi. One pointer and no strides, where there were six and eight: each argument costs the
    host time at every launch (Triton specialises and packs it), and at 16k tokens the call is bound by the
    host's time. R is not specialised: the query span's length does not compile a kernel of its own."""
    HQ = HKV * GROUP
    stride_qr, stride_qh, stride_kt, stride_kh = HQ * D, D, HKV * D, D
    stride_lr, stride_lh, stride_mt, stride_mh = HQ, 1, HQ, 1
    nbs = tl.cdiv(T, BLOCK_N)
    POS = TABLES
    P0 = POS + R
    ROW_LO = P0 + R
    ROW_HI = ROW_LO + nbs
    WHOLE_LO = ROW_HI + nbs
    WHOLE_HI = WHOLE_LO + nbs
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
    onehot = acc  # (a placeholder where HEAD_DOT is off: never read)
    if HEAD_DOT:  # the product rows' heads as a one-hot [BLOCK_M, GP] matrix (GP at least 16 for tl.dot)
        onehot = (g_of_i[:, None] == gcol[None, :]).to(tl.float32)
    r_lo = tl.load(ROW_LO + nb).to(tl.int32)  # row indices (below 2^31; int64 in the table)
    r_hi = tl.load(ROW_HI + nb).to(tl.int32)
    u0 = r_hi  # masked row blocks before u0; without WHOLE, all of them in this one loop
    if WHOLE:  # the row blocks that lie in the run of rows seeing the whole key block go unmasked, in the middle
        w_lo = tl.load(WHOLE_LO + nb).to(tl.int32)
        w_hi = tl.load(WHOLE_HI + nb).to(tl.int32)
        u0 = tl.minimum(r_lo + tl.cdiv(tl.maximum(w_lo - r_lo, 0), ROWS) * ROWS, r_hi)
    for r0 in range(r_lo, u0, ROWS):
        acc = _mass_rows(Q, LSE, W, POS, P0, r0, r_hi, offs_i, head, offs_d, d_mask, k, offs_n, key_ok, onehot,
                         g_of_i, gcol, acc, stride_qr, stride_qh, stride_lr, stride_lh, qk_scale, True, GROUP,
                         ROWS, DOCS_ONLY, WIDE, PREC, HEAD_DOT)
    if WHOLE:
        u1 = u0 + tl.maximum(w_hi - u0, 0) // ROWS * ROWS
        for r0 in range(u0, u1, ROWS):
            acc = _mass_rows(Q, LSE, W, POS, P0, r0, r_hi, offs_i, head, offs_d, d_mask, k, offs_n, key_ok, onehot,
                             g_of_i, gcol, acc, stride_qr, stride_qh, stride_lr, stride_lh, qk_scale, False, GROUP,
                             ROWS, DOCS_ONLY, WIDE, PREC, HEAD_DOT)
        for r0 in range(u1, r_hi, ROWS):
            acc = _mass_rows(Q, LSE, W, POS, P0, r0, r_hi, offs_i, head, offs_d, d_mask, k, offs_n, key_ok, onehot,
                             g_of_i, gcol, acc, stride_qr, stride_qh, stride_lr, stride_lh, qk_scale, True, GROUP,
                             ROWS, DOCS_ONLY, WIDE, PREC, HEAD_DOT)
    tl.store(MASS + offs_n[:, None] * stride_mt + (kvh * GROUP + gcol)[None, :] * stride_mh, acc,
             mask=n_mask[:, None] & (gcol < GROUP)[None, :])


@triton.jit
def _row_block(rb, kvh, R, GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, WIDE: tl.constexpr):
    """Product rows of row block ``rb`` under key/value head ``kvh``: (row of the product, its query head, its
    selected row, whether it is one)."""
    offs_i = tl.arange(0, BLOCK_M)
    head = kvh * GROUP + offs_i % GROUP
    r = rb * ROWS + offs_i // GROUP
    if WIDE:
        r = r.to(tl.int64)
    return offs_i, head, r, (r < R) & (offs_i < ROWS * GROUP)


@triton.jit
def _natural_lse(m_i, l_i):
    """log(sum) in natural log from a running maximum and sum in base 2; -inf where the sum is 0 (no key)."""
    return tl.where(l_i > 0, (m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0))) * 0.6931471805599453, float("-inf"))


@triton.jit
def _lse_block(q, K, DOC, start, k1, kvh, stride_kt, stride_kh, offs_d, d_mask, p0, pos, m_i, l_i, qk_scale,
               MASKED: tl.constexpr, DOCS_ONLY: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
               PREC: tl.constexpr):
    """The running maximum and sum (base 2) of _lse_kernel's rows after keys [start, start + BLOCK_N). MASKED:
    each row's covered range [p0, pos] and the end k1 apply (and may leave a row with no key yet); else every
    row sees every key of the block, and the scale and the maximum fold into one multiply-add per score. The
    maximum is taken over unscaled scores: the scale is positive."""
    offs_n = start + tl.arange(0, BLOCK_N)
    if WIDE:
        offs_n = offs_n.to(tl.int64)
    if MASKED:
        n_mask = offs_n < k1
        k = tl.load(K + offs_n[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        ok = (offs_n[None, :] >= p0[:, None]) & (offs_n[None, :] <= pos[:, None]) & n_mask[None, :]
        if DOCS_ONLY:
            ok = ok & (tl.load(DOC + offs_n, mask=n_mask, other=0) != 0)[None, :]
        s = tl.where(ok, tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: nothing to rescale
        p = tl.exp2(s - m_safe[:, None])
    else:
        k = tl.load(K + offs_n[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                    mask=d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        if DOCS_ONLY:  # the key side of the mask only: a document key or not
            s = tl.where((tl.load(DOC + offs_n) != 0)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # (in "documents" mode a row may see no key yet)
        p = tl.exp2(s * qk_scale - m_safe[:, None])
    return m_new, l_i * tl.exp2(m_i - m_safe) + tl.sum(p, 1)


@triton.jit
def _lse_kernel(Q, K, POS, P0, DOC, OUT, PM, PL, COUNT, R, HKV, SPLITS, stride_qr, stride_qh, stride_kt, stride_kh,
                stride_or, stride_oh, qk_scale,
                GROUP: tl.constexpr, ROWS: tl.constexpr, DOCS_ONLY: tl.constexpr, D: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr,
                PREC: tl.constexpr, FINAL: tl.constexpr, FUSED: tl.constexpr):
    """Each selected row's log-sum-exp over the keys its softmax covers, for the rows sorted by position.
    Program = (block of ROWS rows, key/value head, split of their keys), row blocks fastest: the programs that
    read the same keys (a query span's few row blocks) run side by side and share them through L2 (on an H100
    at 100k tokens 0.222 ms against 0.264 with row blocks outermost; at 16k no change, 0.049 ms). The kernel is
    bound by its arithmetic, not by memory: the blocks every row sees whole, which take no mask (_lse_block),
    took it to 0.154 and 0.032 ms (bench/RESULTS.md). The product rows are the block's rows x the GROUP query
    heads of the key/value head, as in the mass kernel. The block's keys run from its first row's first
    covered key (P0) to its last row; SPLITS programs share them. FINAL (one split): the natural-log result into
    OUT [R, Hq]; else each split's running maximum and sum (base 2) into PM, PL [row blocks, SPLITS, HKV,
    BLOCK_M] for _lse_merge, or (FUSED) merged by the last split of the row block and head to finish, which a
    ticket from the int32 counters COUNT [row blocks, HKV] tells (zero at rest)."""
    pid = tl.program_id(0)
    n_rb = tl.cdiv(R, ROWS)
    rb = pid % n_rb
    kvh = (pid // n_rb) % HKV
    split = pid // (n_rb * HKV)
    offs_i, head, r, m_mask = _row_block(rb, kvh, R, GROUP, ROWS, BLOCK_M, WIDE)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    q = tl.load(Q + r[:, None] * stride_qr + head[:, None] * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    pos = tl.load(POS + r, mask=m_mask, other=-1).to(tl.int32)  # positions below 2^31 (int64 in the table)
    p0 = tl.load(P0 + r, mask=m_mask, other=2147483647).to(tl.int32)
    lo = tl.min(p0, 0)  # the block's keys: its rows are sorted, so these bound every row's range
    hi = tl.max(pos, 0) + 1
    per = tl.cdiv(tl.cdiv(hi - lo, BLOCK_N), SPLITS) * BLOCK_N
    k0 = lo + split * per
    k1 = tl.minimum(hi, k0 + per)
    # Blocks that every row sees whole, [a, b): from the last row's first covered key to the first row's
    # position (rows past R, whose results are not stored, have zero queries and count as seeing everything).
    # They take no mask (outside "documents" mode) and fold the scale into one multiply-add; the blocks before
    # and after them (a query span's last few) are masked.
    a = tl.minimum(k0 + tl.cdiv(tl.maximum(tl.max(tl.where(m_mask, p0, 0), 0) - k0, 0), BLOCK_N) * BLOCK_N, k1)
    b = a + tl.maximum(tl.minimum(tl.min(tl.where(m_mask, pos, 2147483646), 0) + 1, k1) - a, 0) // BLOCK_N * BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(k0, a, BLOCK_N):
        m_i, l_i = _lse_block(q, K, DOC, start, k1, kvh, stride_kt, stride_kh, offs_d, d_mask, p0, pos, m_i, l_i,
                              qk_scale, True, DOCS_ONLY, BLOCK_N, WIDE, PREC)
    for start in range(a, b, BLOCK_N):
        m_i, l_i = _lse_block(q, K, DOC, start, k1, kvh, stride_kt, stride_kh, offs_d, d_mask, p0, pos, m_i, l_i,
                              qk_scale, False, DOCS_ONLY, BLOCK_N, WIDE, PREC)
    for start in range(b, k1, BLOCK_N):
        m_i, l_i = _lse_block(q, K, DOC, start, k1, kvh, stride_kt, stride_kh, offs_d, d_mask, p0, pos, m_i, l_i,
                              qk_scale, True, DOCS_ONLY, BLOCK_N, WIDE, PREC)
    if FINAL:
        tl.store(OUT + r * stride_or + head * stride_oh, _natural_lse(m_i, l_i), mask=m_mask)
    else:
        at = ((rb * SPLITS + split) * HKV + kvh) * BLOCK_M + offs_i
        tl.store(PM + at, m_i)
        tl.store(PL + at, l_i)
        if FUSED:
            if _last_arrival(COUNT + rb * HKV + kvh, SPLITS):
                _lse_fold(PM, PL, OUT, rb, kvh, R, HKV, SPLITS, stride_or, stride_oh, GROUP, ROWS, BLOCK_M, WIDE,
                          ".cg")


@triton.jit
def _lse_merge(PM, PL, OUT, R, HKV, SPLITS, stride_or, stride_oh, GROUP: tl.constexpr, ROWS: tl.constexpr,
               BLOCK_M: tl.constexpr, WIDE: tl.constexpr):
    """The splits of _lse_kernel merged: program = (row block, key/value head), heads fastest."""
    pid = tl.program_id(0)
    _lse_fold(PM, PL, OUT, pid // HKV, pid % HKV, R, HKV, SPLITS, stride_or, stride_oh, GROUP, ROWS, BLOCK_M, WIDE,
              "")


@triton.jit
def _lse_fold(PM, PL, OUT, rb, kvh, R, HKV, SPLITS, stride_or, stride_oh, GROUP: tl.constexpr, ROWS: tl.constexpr,
              BLOCK_M: tl.constexpr, WIDE: tl.constexpr, CACHE: tl.constexpr):
    """Row block ``rb``'s splits under key/value head ``kvh``: their maxima and sums (base 2) folded in split
    order, the natural-log result into OUT [R, Hq] (-inf for a row that no split saw a key for). CACHE: the
    partials' load cache modifier (".cg" where other programs of the same launch wrote them)."""
    offs_i, head, r, m_mask = _row_block(rb, kvh, R, GROUP, ROWS, BLOCK_M, WIDE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for split in range(0, SPLITS):
        at = ((rb * SPLITS + split) * HKV + kvh) * BLOCK_M + offs_i
        m_s = tl.load(PM + at, cache_modifier=CACHE)
        l_s = tl.load(PL + at, cache_modifier=CACHE)
        m_new = tl.maximum(m_i, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key in any split yet: the sum stays 0
        l_i = l_i * tl.exp2(m_i - m_safe) + l_s * tl.exp2(m_s - m_safe)
        m_i = m_new
    tl.store(OUT + r * stride_or + head * stride_oh, _natural_lse(m_i, l_i), mask=m_mask)


def lse_splits(key_blocks: int, programs: int, sms: int) -> int:
    """Key splits of the rows' log-sum-exp kernel, for ``key_blocks`` blocks in the longest range and
    ``programs`` (row block, key/value head) pairs on ``sms`` SMs: enough for two programs per SM and at most
    64 blocks a split, but never under 16 blocks a split (a range of 16 blocks or fewer takes one launch).
    A query span of 50 rows with 8 key/value heads makes only 32 programs. Unsplit (the rule before split only
    past 256 blocks), each walked its 252 key blocks (16k keys) in turn while 100 SMs idled: about 0.18 ms of
    the 0.255 ms call on an H100, by the difference with the call given the log-sum-exp. Timed alone from a
    CUDA graph on an H100 (bench/probe_kernels.py): 0.179 ms unsplit, 0.048 at this rule's 9 splits, 0.044 at
    16 or 32; at 100k 1.090 unsplit, 0.264 at 25 splits, 0.263-0.287 from 16 to 64."""
    return max(1, min(cdiv(key_blocks, 16), max(cdiv(2 * sms, max(programs, 1)), cdiv(key_blocks, 64))))


def lse_launch(cfg: dict, rows: int, group: int, prec: str, pinned: bool, block_d: int) -> tuple[int, int]:
    """(rows of each product, warps) of the rows' log-sum-exp kernel, launched with the mass kernel's
    configuration ``cfg`` for ``rows`` selected rows, ``group`` query heads per key/value head and a padded
    head dimension ``block_d``: twice the mass kernel's product rows and warps (128 and 8 by default) where its
    products run on tensor cores (``prec`` not "ieee"), the caller pinned no launch option, ``block_d`` is at
    most 128 (at 256 ptxas spills 4-8 bytes on sm_80 and sm_86: tests/test_kernels_compile.py), and the wider
    tiles hold no more padding rows than the narrower ones (50 rows under Mistral's groups of 4: 2 tiles of 128
    rows, or 4 of 64); else the mass kernel's own. On an H100, 50 rows x 4 heads from a CUDA graph
    (bench/probe_kernels.py): 0.026 ms against 0.032 at 16k keys, 0.145 against 0.154 at 100k
    (bench/RESULTS.md, "Kernel probes"). Tiles that would hold more padding (SmolLM2's groups of 3, one head
    per key/value head) have not been timed."""
    block_m, warps = cfg["block_m"], cfg["num_warps"]
    if pinned or prec == "ieee" or block_d > 128:
        return block_m, warps
    narrow, wide = (product_rows(m, group) for m in (block_m, 2 * block_m))
    if cdiv(rows, wide[0]) * wide[1] > cdiv(rows, narrow[0]) * narrow[1]:
        return block_m, warps
    return 2 * block_m, 2 * warps


def _row_lse(q_rows: torch.Tensor, k: torch.Tensor, pos_t: torch.Tensor, p0_t: torch.Tensor, doc: torch.Tensor,
             mode: str, scale: float, block_m: int, block_n: int, prec: str, wide: bool, num_warps: int,
             splits: Optional[int] = None, num_stages: Optional[int] = None,
             fused: bool = False) -> torch.Tensor:
    """The log-sum-exp [R, Hq] (float32, natural log) of rows sorted by position (q_rows in that order), over
    the keys each row's softmax covers. The keys are split across programs as :func:`lse_splits` says
    (``splits`` overrides; on the CPU, in Triton's interpreter, as for 4 SMs), and a second launch merges the
    splits (_lse_merge), or (``fused``) the last split of each row block and head to finish does, in the same
    launch (its counters: kernels/_tickets.py); one split writes the result at once. The PyTorch path it
    replaces issues about 70 operators per call at 2k keys and 1,600 at 100k, key chunk by key chunk; ICR calls
    it in every layer."""
    R, Hq, D = q_rows.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    rows_per, bm = product_rows(block_m, group)
    n_rb = cdiv(R, rows_per)
    lse = torch.empty(R, Hq, dtype=torch.float32, device=q_rows.device)
    if R == 0:
        return lse
    if splits is None:
        sms = cuda_sm_count(q_rows.device) if q_rows.is_cuda else 4
        splits = lse_splits(cdiv(k.shape[0], block_n), n_rb * Hkv, sms)
    final = splits == 1
    part = torch.empty(0 if final else 2 * n_rb * splits * Hkv * bm, dtype=torch.float32, device=q_rows.device)
    pm, pl = (part, part) if final else part.view(2, -1).unbind(0)
    fused = fused and not final
    count = tickets(n_rb * Hkv, q_rows.device) if fused else pos_t  # (a placeholder where nothing merges in it)
    _lse_kernel[(n_rb * splits * Hkv,)](q_rows, k, pos_t, p0_t, doc, lse, pm, pl, count, R, Hkv, splits,
                                         q_rows.stride(0), q_rows.stride(1), k.stride(0), k.stride(1), lse.stride(0),
                                         lse.stride(1), scale * LOG2E, GROUP=group, ROWS=rows_per,
                                         DOCS_ONLY=(mode == "documents"), D=D, BLOCK_D=padded_d(D), BLOCK_M=bm,
                                         BLOCK_N=block_n, WIDE=wide, PREC=prec, FINAL=final, FUSED=fused,
                                         num_warps=num_warps, **({} if num_stages is None else
                                                                 {"num_stages": num_stages}), **COMPILE_OPTIONS)
    if not final and not fused:
        _lse_merge[(n_rb * Hkv,)](pm, pl, lse, R, Hkv, splits, lse.stride(0), lse.stride(1), GROUP=group,
                                  ROWS=rows_per, BLOCK_M=bm, WIDE=wide, num_warps=1, **COMPILE_OPTIONS)
    return lse


def _row_tables(layout: SegmentLayout, rows: torch.Tensor, weights: Optional[torch.Tensor], T: int, block_n: int,
                dev: torch.device, window: Optional[int] = None):
    """(order or None when the rows are already in position order, positions, first covered keys (prompt
    starts, or later under a sliding ``window``), per key block the run of rows that see it and the run of
    rows that see all of it, weights in that order) on ``dev``. Rows in position order have ascending first
    keys too; per key block [a, b) the rows that can see it are those at or after a whose first key is before
    b: one run of the sorted rows. Those that see all of it are those at or after b - 1 whose first key is at
    or before a (none for a last block cut short by the end of the keys): another run. The tables from the
    positions to whole_hi are views of one int64 array, back to back in that order (after the order), which the
    mass kernel reads from the positions' address on. The tables for the last rows and host weights seen are
    kept on the layout: a model passes the same rows in every layer, and then no table is rebuilt or copied."""
    pos = rows.detach().cpu().numpy().astype(np.int64)  # a synchronisation only for rows on a GPU
    w_host = weights.detach().float().numpy() if weights is not None and weights.device.type == "cpu" else None
    sig = (pos.tobytes(), window, None if weights is None else (w_host.tobytes() if w_host is not None else "device"))
    last = layout.memo(("mass_rows", block_n, str(dev)), lambda: [None])  # [(signature, tables)]
    entry = last[0]
    if entry is None or entry[0] != sig:
        pos, p0 = row_meta(layout, pos)
        p0 = first_keys(pos, p0, window)
        R = len(pos)
        in_order = bool(np.all(pos[1:] >= pos[:-1]))  # the usual case (a query span)
        order = np.arange(R) if in_order else np.argsort(pos, kind="stable")
        pos, p0 = pos[order], p0[order]
        starts = np.arange(0, T, block_n, dtype=np.int64)
        row_lo = np.searchsorted(pos, starts, side="left")
        row_hi = np.searchsorted(p0, np.minimum(starts + block_n, T), side="left")
        whole_lo = np.where(starts + block_n <= T, np.searchsorted(pos, starts + block_n - 1, side="left"), R)
        whole_hi = np.searchsorted(p0, starts, side="right")
        meta = to_device(np.concatenate([order, pos, p0, row_lo, row_hi, whole_lo, whole_hi]), dev)  # one copy
        if weights is None:
            w = torch.full((R,), 1.0 / max(R, 1), dtype=torch.float32, device=dev)
        else:
            w = to_device(w_host[order], dev) if w_host is not None else None
        nb = len(starts)
        entry = (sig, (None if in_order else meta[:R], meta[R:2 * R], meta[2 * R:3 * R],
                       *meta[3 * R:].view(4, nb).unbind(0), w))
        last[0] = entry  # one assignment: another thread sees the old entry or this one, never a mix
    order_t, pos_t, p0_t, row_lo_t, row_hi_t, whole_lo_t, whole_hi_t, w = entry[1]
    if w is None:  # weights on the device: taken as given, in the rows' order
        w = weights.float() if order_t is None else weights.float()[order_t]
    return order_t, pos_t, p0_t, row_lo_t, row_hi_t, whole_lo_t, whole_hi_t, w


def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, window: Optional[int] = None, block_m: Optional[int] = None,
                   block_n: Optional[int] = None, out: Optional[torch.Tensor] = None, wide: Optional[bool] = None,
                   num_warps: Optional[int] = None, num_stages: Optional[int] = None,
                   head_sum: Optional[str] = None, whole_blocks: bool = False,
                   fused_merge: bool = False, *, _checked: bool = False) -> torch.Tensor:
    """The Triton kernel's entry, with its launch options; the arguments up to ``window`` as the public
    :func:`irforge.kernels.attention_mass` takes them, and checked as it checks them (``_checked``: by the caller,
    which that function is). ``out`` [T, Hq] float32 may be given (contiguous, on q_rows' device) to be written
    in place. ``wide``: 64-bit element offsets (default: when a tensor holds 2^31 elements or more).
    ``block_m``: rows of each product (block_m // group selected rows x the group of query heads per key/value
    head); ``block_n``: keys per program. Defaults 64 x 64; for full-precision float32, whose FMA products need
    more registers, 16 x 64 (16 x 16 from a padded D of 128): ptxas spills above that (checked by
    tests/test_kernels_compile.py).
    ``num_warps`` (default 4; 8 for full-precision float32) and ``num_stages``: Triton launch options. The
    rows' log-sum-exp kernel (``lse`` not given) takes the same, or wider tiles by default (:func:`lse_launch`).
    ``head_sum``: how each program sums its probabilities per query head: "dot" (one product of the
    probabilities with a one-hot head matrix, on tensor cores: TF32-rounded probabilities, a relative error of
    at most 2^-11 each, below that of 16-bit inputs; the default for 16-bit inputs and TF32 float32, 1.55x
    faster than "loop" on an H200 in bench_kernels.py --sweep) or "loop" (a masked reduction per head of the
    group; the default for full-precision float32, where the product would run on FMA units). ``window``: a
    sliding window, as in the public :func:`irforge.kernels.attention_mass`. ``whole_blocks``: the row blocks
    that see a program's whole key block (by a host table per key block) skip the per-score mask and fold the
    scale and normaliser into one multiply-add, as the normaliser's kernel does (35% faster there on an H100).
    Off by default: in two H100 runs (bench/RESULTS.md, 2026-11-27; CUDA graphs) it took 0.068-0.069 ms against
    the default's 0.067-0.068 at 16k tokens and 0.370-0.376 against 0.368-0.372 at 100k, no faster (a branch per
    row block for the same end had made the kernel 31-35% slower). Its three loops take more registers: 231 per
    thread on sm_90 at D 128 in 16 bits in "documents" mode (219 without), and ptxas spills 100 bytes on sm_80 at
    D 128 and 4 on sm_90 at D 256 (tests/test_kernels_compile.py). ``fused_merge`` (``lse`` not given): the
    normaliser's key splits are merged by the last split of each row block to finish, in its own launch, instead
    of by _lse_merge (one launch fewer; the same result, folded in split order; as the block-sparse kernel's
    ``fused_merge``). Off by default: in two H100 runs (2026-11-27) it was within 1% of the default from CUDA
    graphs (0.092-0.093 ms at 16k tokens, 0.518-0.522 at 100k); one launch fewer cut the host's time per call from
    0.246 to 0.207 ms at 16k, but the eager call took 0.207 ms against 0.191. A default configuration that the GPU's
    shared memory cannot hold falls back to smaller ones (kernels/_shared_memory.py)."""
    if not _checked:
        window = check_mass_args(q_rows, rows, k, layout, lse, weights, mode, scale, window)
    if out is not None:
        check_output("out", out, (k.shape[0], q_rows.shape[1]), torch.float32, q_rows.device)
    check_launch(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    if head_sum not in (None, "loop", "dot"):
        raise ValueError(f"head_sum must be 'loop' or 'dot', got {head_sum!r}")
    R, Hq, D = q_rows.shape
    T, Hkv = k.shape[0], k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q_rows.device
    block_d = padded_d(D)
    prec = dot_precision(q_rows.dtype)
    cfg = {"block_m": block_m or (16 if prec == "ieee" else 64),
           "block_n": block_n or (16 if prec == "ieee" and block_d >= 128 else 64),
           "num_warps": num_warps or (8 if prec == "ieee" else 4)}  # full-precision float32 spills at 4
    if num_stages is not None:
        cfg["num_stages"] = num_stages
    k = k.contiguous()
    mass = torch.empty(T, Hq, dtype=torch.float32, device=dev) if out is None else out
    # which keys are document tokens: read only in "documents" mode (else any tensor stands in, unread)
    doc = document_keys(layout, dev) if mode == "documents" else mass
    wide = check_wide(wide, q_rows, k, mass)
    group = Hq // Hkv
    head_dot = head_sum == "dot" if head_sum is not None else prec != "ieee"
    pinned = any(x is not None for x in (block_m, block_n, num_warps, num_stages))

    def run(cfg: dict) -> None:
        block_m, block_n = cfg["block_m"], cfg["block_n"]
        opts = {o: cfg[o] for o in ("num_warps", "num_stages") if o in cfg}
        # (the mass kernel reads all the row tables from pos_t's address on)
        order_t, pos_t, p0_t, *_, w = _row_tables(layout, rows, weights, T, block_n, dev, window)
        q, row_lse = q_rows, lse
        if order_t is not None:  # rows not in position order: sort them on the device
            q = q[order_t]
            row_lse = row_lse[order_t] if row_lse is not None else None
        q, w = q.contiguous(), w.contiguous()
        if T == 0:
            return
        if row_lse is None:  # the normaliser over the covered keys, by a first kernel over the same rows and keys
            lse_m, lse_warps = lse_launch(cfg, R, group, prec, pinned, block_d)
            row_lse = _row_lse(q, k, pos_t, p0_t, doc, mode, scale, lse_m, block_n, prec, wide, lse_warps,
                               num_stages=opts.get("num_stages"), fused=bool(fused_merge))
        row_lse = row_lse.float().contiguous()
        rows_per, product_m = product_rows(block_m, group)  # selected rows per product, rows of the product
        _mass_kernel[(cdiv(T, block_n) * Hkv,)](
            q, k, row_lse, w, pos_t, doc, mass, T, R, Hkv, scale * LOG2E, GROUP=group,
            GP=max(16 if head_dot else 1, next_pow2(group)), ROWS=rows_per, DOCS_ONLY=(mode == "documents"), D=D,
            BLOCK_D=block_d, BLOCK_M=product_m, BLOCK_N=block_n, PREC=prec, WIDE=wide, HEAD_DOT=head_dot,
            WHOLE=bool(whole_blocks), **opts, **COMPILE_OPTIONS)

    # a configuration the caller set is launched as given; the default falls back to smaller ones where the
    # GPU's shared memory is too small for it (kernels/_shared_memory.py)
    key = ("mass", dev, q_rows.dtype, D, group, mode, lse is None, wide, head_dot, bool(whole_blocks),
           bool(fused_merge))
    launch_fitting(key, cfg, run, pinned)
    return mass
