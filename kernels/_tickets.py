"""Counters for the kernels' tickets: the programs that share a counter each take a ticket by an atomic add, and
the last to arrive merges what the others stored, in the same launch (``fused_merge``). A counter must be zero
when its launch starts; the last program zeroes it again for the next launch.

Outside CUDA-graph capture, one buffer per device and stream is kept for the process, zeroed once when it is
made (or grown): launches on one stream run in order, so no two share a counter at once, and launches on other
streams have their own. Under capture the counters are made in the captured work itself (a zeroing copied into
the graph, run by every replay): a buffer kept from before would be shared with eager launches, and one made
there but kept would be zeroed only when that graph replays, not when another graph captured on the same
stream does.
"""
from __future__ import annotations

import threading

import torch

_buffers: dict[tuple, torch.Tensor] = {}
_lock = threading.Lock()


def tickets(n: int, device: torch.device) -> torch.Tensor:
    """At least ``n`` int32 counters on ``device``, zero when the next launch on the current stream starts."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)
    key = (str(device), torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    buf = _buffers.get(key)
    if buf is None or buf.numel() < n:  # (the old buffer's queued launches finish first: same stream)
        buf = torch.zeros(max(n, 64, 0 if buf is None else 2 * buf.numel()), dtype=torch.int32, device=device)
        with _lock:
            _buffers[key] = buf
    return buf
