"""Triton kernel for block-sparse in-context attention (forward only).

Each program takes one query tile (at most BLOCK_M rows of one segment; tiles never straddle a segment) and one
query head. It visits exactly the keys its rows may see: the instruction prefix (document tiles; no mask but the
range end) and its causal range [start, last row] (causal mask only on the diagonal blocks). Fully masked key
blocks are never loaded, so the cost follows the allowed (q, k) pairs, not T^2. Online softmax in float32 with
exp2; grouped-query attention by mapping query head h to key/value head h // (Hq / Hkv).

Shapes: q [T, Hq, D], k and v [T, Hkv, D], D in {64, 80, 128} (any D <= 256 works; D is padded to a power of
two in registers). fp16/bf16/fp32. Returns out [T, Hq, D] (q's dtype) and lse [T, Hq] (float32, natural log).
Offsets are 32-bit unless a tensor holds 2^31 elements or more (then 64-bit: ``WIDE``), so that long packed
prompts at large shapes (e.g. 524k tokens x 32 heads x 128) address correctly.
Timed on: not yet on a GPU (tested in the Triton interpreter on the CPU).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..layout import SegmentLayout

LOG2E = 1.4426950408889634


@triton.jit
def _key_block(q, K, V, start, end, kvh, stride_kt, stride_kh, stride_vt, stride_vh, offs_d, d_mask, offs_m,
               m_mask, m_i, l_i, acc, qk_scale, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, WIDE: tl.constexpr):
    """Keys [start, min(start + BLOCK_N, end)) into the tile's online softmax; CAUSAL masks keys after a row."""
    offs_n = start + tl.arange(0, BLOCK_N)
    if WIDE:
        offs_n = offs_n.to(tl.int64)
    n_mask = offs_n < end
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + offs_n[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    allowed = n_mask[None, :] & m_mask[:, None]
    if CAUSAL:
        allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _bsa_fwd(Q, K, V, O, LSE, TILES, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
             stride_ot, stride_oh, stride_lt, stride_lh, qk_scale,
             GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, WIDE: tl.constexpr):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    row_s = tl.load(TILES + tile * 5 + 0)
    row_e = tl.load(TILES + tile * 5 + 1)
    pre_s = tl.load(TILES + tile * 5 + 2)
    pre_e = tl.load(TILES + tile * 5 + 3)
    cau_s = tl.load(TILES + tile * 5 + 4)

    offs_m = row_s + tl.arange(0, BLOCK_M)
    if WIDE:  # element offsets past 2^31: 64-bit address arithmetic
        offs_m = offs_m.to(tl.int64)
    m_mask = offs_m < row_e
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    q = tl.load(Q + offs_m[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # The instruction prefix (document tiles): every row sees every key.
    for start in range(pre_s, pre_e, BLOCK_N):
        m_i, l_i, acc = _key_block(q, K, V, start, pre_e, kvh, stride_kt, stride_kh, stride_vt, stride_vh, offs_d,
                                   d_mask, offs_m, m_mask, m_i, l_i, acc, qk_scale, False, BLOCK_N, WIDE)
    # The causal range: keys [cau_s, row], blocks up to the tile's last row only.
    for start in range(cau_s, row_e, BLOCK_N):
        m_i, l_i, acc = _key_block(q, K, V, start, row_e, kvh, stride_kt, stride_kh, stride_vt, stride_vh, offs_d,
                                   d_mask, offs_m, m_mask, m_i, l_i, acc, qk_scale, True, BLOCK_N, WIDE)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(O + offs_m[:, None] * stride_ot + h * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_mask[:, None] & d_mask[None, :])
    lse = (m_i + tl.log2(l_safe)) / 1.4426950408889634
    tl.store(LSE + offs_m * stride_lt + h * stride_lh, lse, mask=m_mask)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None, block_m: int = 64, block_n: int = 64,
                           out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
                           wide: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` [T, Hq, D] and ``lse`` [T, Hq] float32 may be given (contiguous) to be written in place.
    ``wide``: 64-bit element offsets (default: when a tensor holds 2^31 elements or more)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(T, Hq, dtype=torch.float32, device=q.device) if lse is None else lse
    tiles = torch.as_tensor(layout.tiles(block_m), device=q.device)
    if len(tiles) == 0:
        return out, lse
    block_d = max(16, triton.next_power_of_2(D))
    grid = (len(tiles), Hq)
    _bsa_fwd[grid](q, k, v, out, lse, tiles, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
                   v.stride(1), out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), scale * LOG2E,
                   GROUP=Hq // Hkv, D=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
                   WIDE=needs_wide(q, k, v, out) if wide is None else bool(wide))
    return out, lse


def needs_wide(*tensors: torch.Tensor) -> bool:
    """Whether element offsets into any of the tensors can pass 2^31 - 1 (int32 arithmetic would wrap)."""
    return max(t.numel() for t in tensors) >= 2**31 - 1
