"""Attention-mass aggregation (ICR and BlockRank scores) with a reference, a CPU path and a Triton kernel.

>>> mass = attention_mass(q_rows, rows, k, layout, lse=lse_rows)            # [T, Hq]
>>> per_doc = attention_mass(q_rows, rows, k, layout, reduce="segment", sum_heads=True)   # [S]
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import pick_backend, wants_grad
from ..layout import SegmentLayout
from .common import check_mass_args, segment_sums, to_device

__all__ = ["attention_mass"]


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
    reduce : "key" -> [T, Hq] (or [T]); "segment" -> [S, Hq] (or [S]), summed over each segment's keys in a
        fixed order (the same bits on every call, on a GPU too).
    sum_heads : sum over query heads.
    backend : "auto" (Triton on CUDA, PyTorch otherwise and wherever autograd needs a gradient: the Triton
        kernel is forward only), "triton", "torch" or "naive" (float64, O(R*T) memory).
    window : a sliding window, as in Mistral's, Qwen2's or Gemma's windowed layers: a row at position p covers
        only keys j with p - j < window (transformers' sliding-window masks); None: no window. ``lse``, when
        given, must cover the same keys.

    Called from code under torch.compile, it runs as it does eagerly (a graph break): TorchDynamo does not trace
    its host-side tables (NumPy) and Triton launches.
    """
    window = check_mass_args(q_rows, rows, k, layout, lse, weights, mode, scale, window)
    if reduce not in ("key", "segment"):
        raise ValueError(f"unknown reduce {reduce!r}; choose 'key' or 'segment'")
    which = pick_backend(backend, q_rows.device, q_rows.dtype, grad=wants_grad(q_rows, k, lse, weights))
    if weights is not None and which != "triton":  # the Triton path keeps host weights with its row tables
        weights = to_device(weights.float(), q_rows.device)
    checked = {}
    if which == "naive":
        from .naive import attention_mass as impl
    elif which == "torch":
        from .cpu import attention_mass as impl
    else:
        from .kernel import attention_mass as impl
        checked = {"_checked": True}  # (the checks above are its own)
    mass = impl(q_rows, rows, k, layout, lse, weights, mode, scale, window=window, **checked)
    if reduce == "segment":
        mass = segment_sums(mass, layout)
    return mass.sum(-1) if sum_heads else mass
