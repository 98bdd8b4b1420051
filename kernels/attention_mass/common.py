"""Row metadata and host-to-device copies shared by the attention-mass implementations."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..layout import DOCUMENT, SegmentLayout


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


def document_keys(layout: SegmentLayout, device: torch.device) -> torch.Tensor:
    """Whether each token is a document token, bool [T] on ``device``; built once per layout and device."""
    return layout.memo(("documents", str(device)), lambda: to_device(layout.key_kinds() == DOCUMENT, device))
