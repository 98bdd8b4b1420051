"""Row metadata shared by the attention-mass implementations."""
from __future__ import annotations

import numpy as np
import torch

from ..layout import SegmentLayout


def row_meta(layout: SegmentLayout, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(token position, start of its prompt) of each selected row."""
    pos = rows.detach().cpu().numpy().astype(np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= layout.total_tokens):
        raise IndexError(f"row positions must lie in [0, {layout.total_tokens}), got {pos.min()}..{pos.max()}")
    prompt_start = layout.memo("prompt_starts", layout.prompt_starts)
    return pos, prompt_start[pos] if pos.size else pos
