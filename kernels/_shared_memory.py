"""Launch configurations that fit the GPU's shared memory.

The default tiles and pipeline stages are sized for an A100 or H100 (up to 163 or 227 KB of shared memory per
block). Some shapes need more than a GPU offers: D 256 (Gemma's heads) needs 168 KB for the block-sparse kernel's
default on sm_80, and 116 KB for the attention-mass kernel's, where RTX 30x0/40x0/50x0 cards (sm_86/89/120) give
99 KB.
Triton compiles a kernel and then refuses to launch it with OutOfResources, before anything runs. So a kernel
launched with its default configuration tries a short ladder of smaller ones in turn (fewer stages, then fewer
keys per block, then fewer rows) and remembers, per device and shape, the first that launched.
tests/test_kernels_compile.py checks, with Triton's compiler and ptxas, that the ladder reaches a configuration
that fits sm_80, sm_86, sm_89 and sm_120 at D 256 without register spills.
"""
from __future__ import annotations

import threading
from typing import Callable, Hashable, TypeVar

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # older triton
    from triton.runtime.autotuner import OutOfResources  # type: ignore[no-redef]

__all__ = ["OutOfResources", "ladder", "launch_fitting"]

R = TypeVar("R")
_fitted: dict[Hashable, int] = {}  # (kernel, device, shape...) -> index of the first candidate that launched
_lock = threading.Lock()


def ladder(cfg: dict, min_block_m: int = 16) -> list[dict]:
    """``cfg`` (keys block_m, block_n, num_warps and maybe num_stages), then smaller configurations:
    2 stages, 32 and 16 keys per block at 2 stages, then half the rows at 16 keys and 1 stage."""
    out = [dict(cfg)]

    def add(**change):
        c = {**cfg, **change}
        if c not in out:
            out.append(c)

    if cfg.get("num_stages", 3) > 2:
        add(num_stages=2)
    for bn in (32, 16):
        if cfg["block_n"] > bn:
            add(block_n=bn, num_stages=2)
    if cfg["block_m"] // 2 >= min_block_m:
        add(block_m=cfg["block_m"] // 2, block_n=min(cfg["block_n"], 16), num_stages=1)
    return out


def launch_fitting(key: Hashable, cfg: dict, launch: Callable[[dict], R], pinned: bool = False) -> R:
    """``launch(cfg)``. Where Triton refuses it for lack of shared memory and the caller did not pin it, the
    smaller configurations of :func:`ladder` in turn; the first that launches is remembered under ``key`` and
    tried first next time. Launching fails before any kernel writes, so a refused launch leaves no partial
    output. The last refusal is raised when none fits. The ladder is built only after a refusal: the wrappers
    run once per layer, and the usual launch should cost nothing extra."""
    if pinned:
        return launch(cfg)
    start = _fitted.get(key, 0)
    rungs = None
    if start == 0:
        try:
            return launch(cfg)
        except OutOfResources:
            rungs = ladder(cfg)
            if len(rungs) == 1:
                raise
    rungs = rungs or ladder(cfg)
    for i in range(min(max(start, 1), len(rungs) - 1), len(rungs)):
        try:
            result = launch(rungs[i])
        except OutOfResources:
            if i < len(rungs) - 1:
                continue
            raise
        if i != start:
            with _lock:
                _fitted[key] = i
        return result
