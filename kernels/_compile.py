"""The Triton kernels compiled for an NVIDIA GPU on any machine, without one: what the GPU compiler and ptxas
make of a launch. tests/test_kernels_compile.py reads registers, spills and the pipelining from it, and
bench/count_sass.py the instruction counts. Needs a triton build with its NVIDIA backend (the PyPI wheel ships
ptxas and nvdisasm); nothing here runs a kernel.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import triton

from ._checks import COMPILE_OPTIONS, padded_d
from .block_sparse_attention.kernel import default_lazy_rescale, dot_precision, launch_config

DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compile_for(fn: Any, cc: int, pointers: dict, constexprs: dict, options: dict) -> Any:
    """``fn`` compiled for sm_``cc`` as a launch specialises it: the arguments in ``pointers`` typed as given
    (e.g. ``{"Q": "*bf16"}``, or a tensor descriptor's ``"tensordesc<bf16[32, 128]>"``), ``qk_scale`` float32,
    the other run-time arguments int32, and pointers and strides divisible by 16 (as torch's are).
    ``options``: Triton's launch options (num_warps, num_stages, maxnreg), with the wrappers' COMPILE_OPTIONS
    unless given."""
    from triton.backends.compiler import GPUTarget

    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n == "qk_scale" else "i32")
                 for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if (n in pointers and pointers[n].startswith("*")) or n.startswith("stride")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", cc, 32), options={**COMPILE_OPTIONS, **options})


def tool(cc: int, name: str = "ptxas") -> Path:
    """The path of the triton wheel's ptxas for sm_``cc``, or of another tool beside it (nvdisasm)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        ptxas = Path(get_ptxas(cc).path)
    except TypeError:  # triton before 3.6: one ptxas for every target
        ptxas = Path(get_ptxas().path)
    return ptxas if name == "ptxas" else ptxas.parent / name


def ptxas_usage(kernel: Any, cc: int) -> tuple[int, int]:
    """(registers per thread, bytes of spill stores) as ``ptxas -v`` reports them for the kernel's PTX (the
    cubin's own counts are read only on a GPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(kernel.asm["ptx"])
        arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"  # as Triton names its targets
        report = subprocess.run([str(tool(cc)), "-v", f"--gpu-name={arch}", str(ptx), "-o", os.devnull],
                                capture_output=True, text=True).stderr
    return (int(re.search(r"Used (\d+) registers", report).group(1)),
            int(re.search(r"(\d+) bytes spill stores", report).group(1)))


def sass(kernel: Any, cc: int) -> str:
    """The kernel's machine code, disassembled by nvdisasm."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        return subprocess.run([str(tool(cc, "nvdisasm")), "-c", str(cubin)], capture_output=True,
                              text=True).stdout


def bsa_launch(cc: int, dt: str, d: int, group: int, one_loop: bool, *, wide: bool = False, runs: bool = False,
               lazy: Optional[bool] = None, max_registers: Optional[int] = None,
               cfg: Optional[dict] = None, tma: bool = False, fused: bool = False) -> tuple[dict, dict, dict]:
    """The block-sparse kernel's (pointer types, constexprs, launch options) as the wrapper launches it on
    sm_``cc`` for dtype ``dt`` ("bf16", "fp16", "fp32"), head dimension ``d`` and ``group`` query heads per
    key/value head: its default configuration (or ``cfg``, one of launch_config's), the default rescale rule
    unless ``lazy`` is given, float32 at torch's default precision; ``tma``: key and value blocks through tensor
    descriptors (the wrapper's default in Hopper's one-loop form at 16-bit D 128, ``default_tma``: here it is
    asked for, so that both load forms of that configuration compile); ``fused``: split tiles merged in the
    kernel (``fused_merge``)."""
    dtype, block_d, capability = DTYPE_NAMES[dt], padded_d(d), (cc // 10, cc % 10)
    cfg = dict(cfg or launch_config(dtype, block_d, capability=capability, one_loop=one_loop,
                                    max_registers=max_registers))
    if lazy is None:
        lazy = default_lazy_rescale(dtype, block_d, capability, cfg["num_warps"], one_loop)
    block_m, block_n = cfg.pop("block_m"), cfg.pop("block_n")  # block_m // group token rows
    consts = dict(GROUP=group, ROWS=block_m // group, D=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
                  WIDE=wide, PREC=dot_precision(dtype), ONE_LOOP=one_loop, RUNS=runs, Q_AT_SWITCH=False, LAZY=lazy,
                  TMA=tma, FUSED=fused)
    key_type = f"tensordesc<{dt}[{block_n}, {d}]>" if tma else "*" + dt
    pointers = dict(Q="*" + dt, K=key_type, V=key_type, O="*" + dt, LSE="*fp32", PO="*fp32", PL="*fp32",
                    TILES="*i32", COUNT="*i32", GROUPS="*i32", GROUP_OF="*i32")
    return pointers, consts, cfg
