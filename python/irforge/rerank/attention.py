"""Attention hooks for Hugging Face transformers: an attention function, registered through transformers'
AttentionInterface, that computes attention as SDPA does and, while a capture is active, adds the attention
mass that the last ``n_rows`` query positions put on every key (summed over heads, averaged over the rows,
summed over layers) using irforge.kernels.attention_mass: no output_attentions, no attention matrix."""
from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..kernels import SegmentLayout, attention_mass

__all__ = ["CAPTURE_ATTENTION", "capture_mass", "use_capture_attention", "cache_kwarg"]

CAPTURE_ATTENTION = "irforge_capture"
_state = threading.local()


class _Capture:
    def __init__(self) -> None:
        self.mass: Optional[torch.Tensor] = None  # [keys], float64
        self.layers = 0


def _capture_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: Optional[torch.Tensor], **kwargs: Any):
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    cap: Optional[_Capture] = getattr(_state, "capture", None)
    if cap is not None:
        if query.shape[0] != 1:
            raise ValueError("attention capture runs one prompt at a time (batch size 1)")
        n_rows, n_keys = query.shape[2], key.shape[2]
        layout = SegmentLayout.from_lengths([(n_keys - n_rows, [], n_rows)])
        rows = torch.arange(n_keys - n_rows, n_keys, device=query.device)
        scaling = kwargs.get("scaling") or module.scaling
        m = attention_mass(query[0].transpose(0, 1), rows, key[0].transpose(0, 1), layout, mode="causal",
                           scale=float(scaling), sum_heads=True)
        cap.mass = m.double() if cap.mass is None else cap.mass + m.double()
        cap.layers += 1
    return out


AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
try:  # masks are built per attention implementation: ours wraps SDPA, so it takes SDPA's masks
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
except ImportError:  # older transformers build one mask format for every implementation
    pass


@contextlib.contextmanager
def capture_mass():
    """Within the block, attention layers using CAPTURE_ATTENTION add their query rows' attention mass."""
    cap = _Capture()
    prev = getattr(_state, "capture", None)
    _state.capture = cap
    try:
        yield cap
    finally:
        _state.capture = prev


@contextlib.contextmanager
def use_capture_attention(model: Any):
    """Switch ``model`` to the capturing attention function for the block (restored afterwards)."""
    prev = model.config._attn_implementation
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(CAPTURE_ATTENTION)
    else:
        model.config._attn_implementation = CAPTURE_ATTENTION
    try:
        yield model
    finally:
        if setter is not None:
            setter(prev)
        else:
            model.config._attn_implementation = prev


def cache_kwarg(model: Any) -> str:
    """The name the model's forward gives its KV cache argument (``cache`` in newer transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
