"""Attention hooks for Hugging Face transformers: an attention function, registered through transformers'
AttentionInterface, that computes attention as SDPA does and, while a capture is active, adds the attention
mass that each prompt's query rows put on every key (summed over heads, averaged over the rows, summed over
layers) using irforge.kernels.attention_mass: no output_attentions, no attention matrix. A batch of prompts,
left-padded with right-padded query rows, is captured prompt by prompt in one kernel call. Layers with a
sliding window (Mistral, Qwen2 or Gemma configurations that set one) are captured over their window; attention
that SDPA cannot reproduce (soft-capped logits, sink logits) raises ValueError instead of being dropped."""
from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..kernels import SegmentLayout, attention_mass

__all__ = ["CAPTURE_ATTENTION", "capture_mass", "use_capture_attention", "cache_kwarg", "check_attention_kwargs"]

CAPTURE_ATTENTION = "irforge_capture"
_state = threading.local()


class _Capture:
    def __init__(self, spans: Optional[list[tuple[int, int]]]) -> None:
        self.spans = spans  # per batch row: (first valid key, query rows); None: one prompt, every key valid
        self.total: Optional[torch.Tensor] = None  # float64: the prompts' masses back to back, summed over layers
        self.packing: Optional[tuple] = None  # ((query rows, keys), rows, weights, lengths, layout) of the last layer
        self.layers = 0

    @property
    def masses(self) -> list[Optional[torch.Tensor]]:
        """Per prompt, the mass on each of its keys (float64), or None before any layer ran."""
        if self.total is None:
            return [None] * (len(self.spans) if self.spans else 1)
        return list(torch.split(self.total, self.packing[3]))

    def host_masses(self) -> list:
        """:attr:`masses` as NumPy arrays, after one copy of the total to the host (not one per prompt)."""
        if self.total is None:
            raise ValueError("no layer has been captured")
        return [m.numpy() for m in torch.split(self.total.cpu(), self.packing[3])]

    @property
    def mass(self) -> Optional[torch.Tensor]:
        """The mass on every key of a single prompt (batch size 1)."""
        masses = self.masses
        if len(masses) != 1:
            raise ValueError(f"the capture holds {len(masses)} prompts; use .masses")
        return masses[0]


def check_attention_kwargs(kwargs: dict, who: str) -> None:
    """Raise ValueError for the attention features a model's layer asks for that ``who`` would otherwise drop
    without a word: soft-capped logits (Gemma 2) and sink logits (gpt-oss)."""
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{who} cannot soft-cap attention logits, which this model's layers do "
                         f"(softcap={kwargs['softcap']})")
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{who} cannot add attention sink logits (s_aux), which this model's layers use")


def _capture_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: Optional[torch.Tensor], **kwargs: Any):
    check_attention_kwargs(kwargs, "ICR's attention capture (SDPA)")
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    cap: Optional[_Capture] = getattr(_state, "capture", None)
    if cap is not None:
        n_q, n_keys = query.shape[2], key.shape[2]
        spans = cap.spans or [(0, n_q)]
        if len(spans) != query.shape[0]:
            raise ValueError(f"attention capture was given {len(spans)} prompts but the batch holds {query.shape[0]}")
        # Prompt b's valid keys are [first, n_keys - n_q + n_rows): left padding before them, right padding of
        # the query rows after. They are packed into one sequence of causal prompts for a single kernel call.
        # Rows, weights and layout are host-side and the same for every layer of a forward pass: built once, so
        # that no layer waits for the GPU.
        if cap.packing is None or cap.packing[0] != (n_q, n_keys):
            rows, weights, lens, layout = [], [], [], []
            off = 0
            for first, n_rows in spans:
                end = n_keys - n_q + n_rows
                n_ctx = end - first - n_rows
                rows.append(torch.arange(off + n_ctx, off + n_ctx + n_rows))
                weights += [1.0 / n_rows] * n_rows  # the mean over each prompt's rows
                lens.append(end - first)
                layout.append((n_ctx, [], n_rows))
                off += end - first
            cap.packing = ((n_q, n_keys), torch.cat(rows), torch.tensor(weights), lens,
                           SegmentLayout.from_lengths(layout))
        _, rows, weights, _, layout = cap.packing
        keys = [key[b, :, first:n_keys - n_q + n_rows] for b, (first, n_rows) in enumerate(spans)]
        q_rows = [query[b, :, :n_rows] for b, (_, n_rows) in enumerate(spans)]
        scaling = kwargs.get("scaling") or module.scaling
        m = attention_mass(torch.cat(q_rows, 1).transpose(0, 1), rows, torch.cat(keys, 1).transpose(0, 1), layout,
                           weights=weights, mode="causal", scale=float(scaling), sum_heads=True,
                           window=kwargs.get("sliding_window"))  # this layer's window, or None
        # one running float64 total for all prompts, split per prompt when read: two operators per layer
        if cap.total is None:
            cap.total = m.double()
        elif cap.total.shape != m.shape:
            raise ValueError("an attention capture holds one forward pass: its layers must see the same keys")
        else:
            cap.total.add_(m.to(cap.total.device))  # on the first layer's device (a model split over GPUs)
        cap.layers += 1
    return out


AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
try:  # masks are built per attention implementation: ours wraps SDPA, so it takes SDPA's masks
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
except ImportError:  # older transformers build one mask format for every implementation
    pass


@contextlib.contextmanager
def capture_mass(spans: Optional[list[tuple[int, int]]] = None):
    """Within the block, attention layers using CAPTURE_ATTENTION add their query rows' attention mass.

    ``spans``: for a batch of left-padded prompts whose query rows are right-padded, per prompt (its first
    valid key, its number of query rows); None for one unpadded prompt."""
    cap = _Capture(spans)
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
