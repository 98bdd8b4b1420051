"""Argument checks shared by the kernels' dispatch functions, and the host-side integer helpers of their wrappers."""
from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import os
import warnings
from typing import Any, Optional

import torch

from .layout import SegmentLayout

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "triton", "torch", "naive")
# Triton compile options of every kernel launch (and of irforge.kernels._compile): multiply-adds contracted into
# FMAs (LLVM's fp-contract, ptxas's --fmad), as in every GPU timing of bench/RESULTS.md. Left to its default,
# triton 3.9 warns once per process that the default turns it off in 3.10. Without it each kernel's SASS has
# 0.3-7.5% more instructions (sm_80 and sm_90, triton 3.9; the block-sparse key loop on sm_90: 325 against 323).
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must be [T, heads, D], got shape {tuple(x.shape)}")
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; use float16, bfloat16 or float32")
    if not isinstance(layout, SegmentLayout):
        raise TypeError(f"layout must be a SegmentLayout, got {type(layout).__name__}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share T and D")
    if min(q.shape[1], k.shape[1], q.shape[2]) == 0:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need at least one head and D of at least 1")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError("q, k, v must be on one device")
    if layout.total_tokens != q.shape[0]:
        raise ValueError(f"the layout covers {layout.total_tokens} tokens but q has {q.shape[0]}")
    if q.shape[2] > 256:
        raise ValueError(f"head dimension {q.shape[2]} is above the supported 256")


def check_output(name: str, x: Any, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    """A tensor given to be written in place (``out``, ``lse``): ``shape``, ``dtype``, on ``device``, contiguous.
    The kernels write it by its row strides, unchecked: a smaller one would be written past its end."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} must be on {device}, got {x.device}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_scale(scale) -> None:
    """A softmax scale: None (the default, 1/sqrt(D)) or a finite positive number."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")


def wants_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will differentiate a call on these tensors (grad mode on, one of them requiring grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def check_backend(backend: Any) -> str:
    """ValueError unless ``backend`` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    return backend


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    """Whether the triton package is there to import (a CUDA build of torch on Windows comes without it)."""
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def cuda_capability(device: torch.device) -> tuple[int, int]:
    """torch.cuda.get_device_capability of a tensor's device (one with an index), kept per device: torch reads the
    device's properties anew at every call, host time that bounds the wrappers' small calls."""
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def cuda_sm_count(device: torch.device) -> int:
    """The multiprocessor count of a tensor's CUDA device (one with an index), kept per device as
    :func:`cuda_capability` is."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def pick_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None,
                 grad: bool = False) -> str:
    """The backend that runs: "auto" is Triton on CUDA, PyTorch otherwise. The Triton kernels are forward only:
    where a gradient is wanted (``grad``), "auto" runs PyTorch and "triton" raises ValueError (their outputs
    would carry no gradient, and a model's residual stream would hide that: the gradients would be silently
    wrong). Without CUDA, "triton" runs only in Triton's interpreter (TRITON_INTERPRET=1), else ValueError.
    Without the triton package, "auto" runs PyTorch on CUDA too, with a RuntimeWarning, and "triton" raises
    ImportError. Triton's bfloat16 products need a GPU of compute capability 8.0 or newer (a T4 or V100 has
    none): TypeError there, naming float16 instead."""
    check_backend(backend)
    which = ("triton" if device.type == "cuda" and not grad else "torch") if backend == "auto" else backend
    if which == "triton" and not triton_installed():
        if backend == "triton":
            raise ImportError("backend 'triton' needs the triton package (pip install triton)")
        warnings.warn("the triton package is not installed: the kernels run their PyTorch path on the GPU, "
                      "slower (pip install triton for the Triton kernels)", RuntimeWarning, stacklevel=2)
        which = "torch"
    if which == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend 'triton' needs CUDA tensors, got tensors on {device} (the Triton interpreter "
                         "runs CPU tensors when TRITON_INTERPRET=1 is set before irforge.kernels is imported)")
    if which == "triton" and grad:
        raise ValueError("the Triton kernels have no backward pass: for gradients use backend='torch' (or "
                         "'auto', which picks it), or call under torch.no_grad() or torch.inference_mode()")
    if which == "triton" and dtype == torch.bfloat16 and device.type == "cuda":
        cc = cuda_capability(device)
        if cc < (8, 0):
            raise TypeError(f"bfloat16 needs a GPU of compute capability 8.0 or newer for the Triton kernels; "
                            f"this one has {cc[0]}.{cc[1]}: use float16")
    return which


def check_launch(**sizes) -> None:
    """Launch options of the Triton kernels: tile sizes (``block_*``) powers of two of at least 16 (tl.dot's
    minimum), ``num_warps`` a power of two up to 32, ``num_stages`` and ``tiles_per_program`` positive ints,
    ``max_blocks`` a non-negative int, ``max_registers`` an int from 24 to 255 (ptxas's range per thread); None
    means the default."""
    for name, val in sizes.items():
        if val is None:
            continue
        if name in ("num_stages", "tiles_per_program"):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
            continue
        if name == "max_registers":
            if not isinstance(val, int) or isinstance(val, bool) or not 24 <= val <= 255:
                raise ValueError(f"max_registers must be an int from 24 to 255, got {val!r}")
            continue
        if name == "max_blocks":
            if not isinstance(val, int) or isinstance(val, bool) or val < 0:
                raise ValueError(f"max_blocks must be a non-negative int (0: never split), got {val!r}")
            continue
        low = 1 if name == "num_warps" else 16
        if not isinstance(val, int) or isinstance(val, bool) or val < low or val & (val - 1):
            raise ValueError(f"{name} must be a power of two of at least {low}, got {val!r}")
        if name == "num_warps" and val > 32:  # a block of at most 1,024 threads
            raise ValueError(f"num_warps must be at most 32 (1,024 threads), got {val}")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1). On the host, in place of triton.next_power_of_2, which
    triton 3.9 wraps as a constexpr function costing about 4 µs a call: the wrappers run once per layer."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of integers (host-side triton.cdiv)."""
    return -(-int(a) // int(b))


def padded_d(d: int) -> int:
    """BLOCK_D: the head dimension padded to a power of two of at least 16 (tl.dot's minimum) in registers."""
    return max(16, next_pow2(d))


def product_rows(block_m: int, group: int) -> tuple[int, int]:
    """Grouped-query heads packed into the rows of a product: (token rows per product, at least one; the
    product's row count, rows x group padded to a power of two of at least 16, tl.dot's minimum), for a
    requested ``block_m`` and ``group`` query heads per key/value head."""
    rows = max(1, block_m // group)
    return rows, padded_d(rows * group)
