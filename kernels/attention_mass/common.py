"""Row metadata and host-to-device copies shared by the attention-mass implementations."""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np
import torch

from .._checks import DTYPES, check_scale
from ..layout import DOCUMENT, SegmentLayout

MODES = ("causal", "documents")


def check_mass_args(q_rows, rows, k, layout, lse, weights, mode, scale, window) -> Optional[int]:
    """The attention mass's arguments, as :func:`irforge.kernels.attention_mass` documents them: TypeError or
    ValueError naming the first one that is wrong (row positions out of range: IndexError, where they are read).
    Returns ``window`` as an int no longer than the prompt (a window past the prompt is no window), or None."""
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
        raise ValueError(f"q_rows {tuple(q_rows.shape)} and k {tuple(k.shape)}: D must match and Hq be a multiple "
                         "of Hkv")
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
        window = min(int(window), layout.total_tokens + 1)  # (and fits int64)
    return window


def to_device(x, device: torch.device) -> torch.Tensor:
    """A host array or tensor on ``device``. To a GPU through pinned memory without blocking the host: a copy
    from pageable memory would wait for all the work queued before it (in a model, the layers so far)."""
    t = torch.as_tensor(x)
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def row_meta(layout: SegmentLayout, rows) -> tuple[np.ndarray, np.ndarray]:
    """(token position, start of its prompt) of each selected row (a tensor or an array). Rows on a GPU are
    read back (a synchronisation); rows given on the CPU cost nothing."""
    pos = (rows if isinstance(rows, np.ndarray) else rows.detach().cpu().numpy()).astype(np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= layout.total_tokens):
        raise IndexError(f"row positions must lie in [0, {layout.total_tokens}), got {pos.min()}..{pos.max()}")
    prompt_start = layout.memo("prompt_starts", layout.prompt_starts)
    return pos, prompt_start[pos] if pos.size else pos


def first_keys(pos: np.ndarray, prompt_start: np.ndarray, window: Optional[int]) -> np.ndarray:
    """The first key each row's softmax covers: its prompt's start or, under a sliding window of ``window``
    keys (a row at p sees keys j with p - j < window, as transformers' sliding-window masks), the later of
    that and p - window + 1. Rows in position order keep these in ascending order."""
    return prompt_start if window is None else np.maximum(prompt_start, pos - window + 1)


def key_ranges(layout: SegmentLayout, pos: np.ndarray, prompt_start: np.ndarray, mode: str,
               window: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """The contiguous key range [first, end) each selected row's softmax covers (first >= end: none). A prompt's
    documents lie back to back between its instruction and its query, so in "documents" mode a row's range is
    its causal range cut to them."""
    first, end = first_keys(pos, prompt_start, window), pos + 1
    if mode == "documents" and pos.size:
        docs = layout.memo("document_ranges", layout.document_ranges)
        seg = np.searchsorted(layout.cu_seqlens, pos, side="right") - 1  # the (non-empty) segment holding pos
        first, end = np.maximum(first, docs[seg, 0]), np.minimum(end, docs[seg, 1])
    return first, end


def document_keys(layout: SegmentLayout, device: torch.device) -> torch.Tensor:
    """Whether each token is a document token, bool [T] on ``device``; built once per layout and device."""
    return layout.memo(("documents", str(device)), lambda: to_device(layout.key_kinds() == DOCUMENT, device))


def segment_sums(mass: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
    """``mass`` [T, H] summed over each segment's tokens: [S, H], the same bits on every call.

    Summing by segment index (``index_add_``) adds by atomics on a GPU, in an order that changes from call to
    call, so two calls on the same inputs differed in the last bits. ``torch.segment_reduce`` adds each
    (segment, head) in one thread, in token order, but one thread per segment is slow for long segments, so the
    sum runs in two such steps: first over pieces of each segment of at most ``piece`` tokens, then over each
    segment's pieces. ``piece`` is the square root of the longest segment (at least 64), so neither step loops
    over more than about that many values. The tables (piece boundaries, each segment's first piece) are built
    once per layout and device."""
    if mass.dim() != 2 or mass.shape[0] != layout.total_tokens:
        raise ValueError(f"mass must be [T, H] with T = {layout.total_tokens}, the layout's tokens; got "
                         f"{tuple(mass.shape)}")  # (segment_reduce below reads up to T rows unchecked)

    def tables():
        lengths = np.diff(layout.cu_seqlens)
        piece = max(64, int(np.ceil(np.sqrt(lengths.max(initial=0)))))
        per_seg = -(-lengths // piece)  # pieces per segment (none for an empty one)
        first = np.concatenate(([0], np.cumsum(per_seg)))
        seg = np.repeat(np.arange(len(lengths)), per_seg)
        starts = layout.cu_seqlens[:-1][seg] + (np.arange(first[-1]) - first[:-1][seg]) * piece
        bounds = np.concatenate((starts, [layout.total_tokens])).astype(np.int64)
        return to_device(bounds, mass.device), to_device(first.astype(np.int64), mass.device)

    bounds, first = layout.memo(("segment_sums", str(mass.device)), tables)
    pieces = torch.segment_reduce(mass, "sum", offsets=bounds, unsafe=True)
    return torch.segment_reduce(pieces, "sum", offsets=first, unsafe=True)
