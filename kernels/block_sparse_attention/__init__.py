"""Block-sparse in-context attention (BlockRank's layout) with a reference, a CPU path and a Triton kernel.

>>> out, lse = block_sparse_attention(q, k, v, layout)   # q [T, Hq, D], k/v [T, Hkv, D]
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_qkv, check_scale, pick_backend, wants_grad
from ..layout import SegmentLayout

__all__ = ["block_sparse_attention"]


@torch.compiler.disable
def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over packed prompts with the instruction / documents / query rules of :class:`SegmentLayout`.

    Parameters
    ----------
    q : [T, Hq, D]; k, v : [T, Hkv, D] with Hq a multiple of Hkv; float16, bfloat16 or float32.
    layout : the segments of the packed prompts.
    scale : softmax scale (default 1/sqrt(D)).
    backend : "auto" (Triton on CUDA tensors, the PyTorch path otherwise and wherever autograd needs a
        gradient: the Triton kernel is forward only), "triton", "torch" or "naive" (dense float64 reference,
        O(T^2) memory).

    Returns
    -------
    out : [T, Hq, D] in q's dtype; lse : [T, Hq] float32, each row's log-sum-exp (natural log) of its scaled scores.

    Precision: 16-bit inputs are multiplied with float32 sums, and the probabilities are rounded to the inputs'
    dtype before their product with the values (the Triton kernel; the PyTorch path on bfloat16 inputs where the
    CPU multiplies bfloat16 natively, AVX512-BF16 or AMX). The PyTorch path computes other inputs, and any whose
    gradient is wanted, in float32.

    Called from code under torch.compile, it runs as it does eagerly (a graph break): TorchDynamo does not trace
    its host-side tables (NumPy) and Triton launches.
    """
    check_qkv(q, k, v, layout)
    check_scale(scale)
    which = pick_backend(backend, q.device, q.dtype, grad=wants_grad(q, k, v))
    checked = {}
    if which == "naive":
        from .naive import block_sparse_attention as impl
    elif which == "torch":
        from .cpu import block_sparse_attention as impl
    else:
        from .kernel import block_sparse_attention as impl
        checked = {"_checked": True}  # (the checks above are its own)
    return impl(q, k, v, layout, scale, **checked)
