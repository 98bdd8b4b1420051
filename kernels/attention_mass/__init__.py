"""Attention-mass aggregation (ICR and BlockRank scores) with a reference, a CPU path and a Triton kernel.

>>> mass = attention_mass(q_rows, rows, k, layout, lse=lse_rows)            # [T, Hq]
>>> per_doc = attention_mass(q_rows, rows, k, layout, reduce="segment", sum_heads=True)   # [S]
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .._checks import DTYPES, check_scale, pick_backend, wants_grad
from ..layout import SegmentLayout
from .common import to_device

__all__ = ["attention_mass"]
MODES = ("causal", "documents")


@torch.compiler.disable
def attention_mass(q_rows: torch.Tensor, rows: torch.Tensor, k: torch.Tensor, layout: SegmentLayout,
                   lse: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None, mode: str = "causal",
                   scale: Optional[float] = None, reduce: str = "key", sum_heads: bool = False,
                   backend: str = "auto", window: Optional[int] = None) -> torch.Tensor:
    """Weighted sum over selected rows of their softmax attention probabilities, per key token or per segment.

    Parameters
    ----------
    q_rows : [R, Hq, D] query vectors of the selected rows (e.g. the query segment's tokens).
    rows : [R] integer token positions of those rows in the packed sequence, on any device (on the CPU they
        cost no synchronisation with a GPU).
    k : [T, Hkv, D] all keys (Hq a multiple of Hkv).
    layout : the segments of the packed prompts.
    lse : [R, Hq] the rows' log-sum-exp over the keys their softmax covers (natural log), e.g. from
        block_sparse_attention for mode "causal"; computed when None.
    weights : [R] per-row weights (default 1/R: the mean over rows).
    mode : "causal" (ICR: a row's softmax covers every earlier key of its prompt) or "documents" (BlockRank:
        a softmax over the prompt's document keys before the row only).
    reduce : "key" -> [T, Hq] (or [T]); "segment" -> [S, Hq] (or [S]), summed over each segment's keys.
    sum_heads : sum over query heads.
    backend : "auto" (Triton on CUDA, PyTorch otherwise and wherever autograd needs a gradient: the Triton
        kernel is forward only), "triton", "torch" or "naive" (float64, O(R*T) memory).
    window : a sliding window, as in Mistral's, Qwen2's or Gemma's windowed layers: a row at position p covers
        only keys j with p - j < window (transformers' sliding-window masks); None: no window. ``lse``, when
        given, must cover the same keys.

    Called from code under torch.compile, it runs as it does eagerly (a graph break): TorchDynamo does not trace
    its host-side tables (NumPy) and Triton launches.
    """
    for name, x in (("q_rows", q_rows), ("k", k)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor [n, heads, D]")
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; use float16, bfloat16 or float32")
    if not isinstance(layout, SegmentLayout):
        raise TypeError(f"layout must be a SegmentLayout, got {type(layout).__name__}")
    R, Hq, D = q_rows.shape
    if min(Hq, k.shape[1], D) == 0:
        raise ValueError(f"q_rows {tuple(q_rows.shape)} and k {tuple(k.shape)} need at least one head and D of at "
                         "least 1")
    if k.shape[2] != D or Hq % k.shape[1] != 0:
        raise ValueError(f"q_rows {tuple(q_rows.shape)} and k {tuple(k.shape)}: D must match and Hq be a multiple of Hkv")
    if q_rows.dtype != k.dtype:
        raise TypeError(f"q_rows and k dtypes differ: {q_rows.dtype}, {k.dtype}")
    if q_rows.device != k.device:
        raise ValueError(f"q_rows and k must be on one device, got {q_rows.device} and {k.device}")
    if D > 256:
        raise ValueError(f"head dimension {D} is above the supported 256")
    check_scale(scale)
    if k.shape[0] != layout.total_tokens:
        raise ValueError(f"k has {k.shape[0]} tokens but the layout covers {layout.total_tokens}")
    if (not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.shape[0] != R or rows.dtype.is_floating_point
            or rows.dtype.is_complex or rows.dtype == torch.bool):
        raise ValueError(f"rows must be an integer tensor of shape [{R}]")
    if lse is not None:
        if not isinstance(lse, torch.Tensor) or not lse.dtype.is_floating_point:
            raise TypeError(f"lse must be a floating-point tensor, got {getattr(lse, 'dtype', type(lse).__name__)}")
        if lse.shape != (R, Hq):
            raise ValueError(f"lse must have shape [{R}, {Hq}], got {tuple(lse.shape)}")
        if lse.device != q_rows.device:
            raise ValueError(f"lse must be on q_rows' device ({q_rows.device}), got {lse.device}")
    if weights is not None and not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights is not None and (weights.shape != (R,)):
        raise ValueError(f"weights must have shape [{R}], got {tuple(weights.shape)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window <= 0:
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        window = min(int(window), layout.total_tokens + 1)  # a window past the prompt is no window (and fits int64)
    if reduce not in ("key", "segment"):
        raise ValueError(f"unknown reduce {reduce!r}; choose 'key' or 'segment'")
    which = pick_backend(backend, q_rows.device, q_rows.dtype, grad=wants_grad(q_rows, k, lse, weights))
    if weights is not None and which != "triton":  # the Triton path keeps host weights with its row tables
        weights = to_device(weights.float(), q_rows.device)
    if which == "naive":
        from .naive import attention_mass as impl
    elif which == "torch":
        from .cpu import attention_mass as impl
    else:
        from .kernel import attention_mass as impl
    mass = impl(q_rows, rows, k, layout, lse, weights, mode, scale, window=window)
    if reduce == "segment":
        seg = layout.memo(("segment_ids", str(mass.device)), lambda: to_device(layout.segment_ids(), mass.device))
        out = torch.zeros(len(layout.kinds), Hq, dtype=mass.dtype, device=mass.device)
        mass = out.index_add_(0, seg, mass)
    return mass.sum(-1) if sum_heads else mass
