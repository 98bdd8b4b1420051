"""Instruction counts of the block-sparse kernel's compiled code, without a GPU.

    python bench/count_sass.py [--cc 90] [--dtype bf16] [--d 128] [--four-loop] [--lazy yes|no]
                               [--max-registers N] [--stages N] [--tma] [--fused]

Compiles ``_bsa_fwd`` as the wrapper launches it (its default configuration for the given GPU generation,
through irforge.kernels._compile, as the compile test does), disassembles the cubin with the nvdisasm that the
triton wheel ships, and prints per thread: the instructions of each key loop's body (and what its
forward branches skip: the lazy rescale's accumulator multiplies), the instructions before the loop and after
it up to the first exit (the write-out of an unsplit tile), ptxas's registers and spills, and shared memory.
This is the floor that a GPU timing is compared with (bench/RESULTS.md, the kernel notes); it measures no time.
Runs in a process without TRITON_INTERPRET (the interpreter would replace the kernels with Python functions).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys

INSTR = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+):")
BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")


def opcode(text: str) -> str:
    """``@!P0 FMUL.FTZ R1, ...`` -> ``FMUL``."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def count(sass: str) -> dict:
    """Loop bodies (a backward branch and its target), their forward branches, and the code before the first
    loop and after the last one up to the first EXIT, less what forward branches there skip. Code after the
    last EXIT is left out: ptxas places there the retries of barrier waits (the tensor-memory loads' mbarriers),
    which branch back into the loop."""
    lines = sass.splitlines()
    ins, labels = [], {}
    for i, line in enumerate(lines):
        m = INSTR.match(line)
        if m:
            ins.append((i, m.group(2)))
        m = LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
    exits = [k for k, (_, t) in enumerate(ins) if opcode(t) == "EXIT"]
    ins = ins[:exits[-1] + 1] if exits else ins
    loops = []
    for i, text in ins:
        m = BRANCH.search(text)
        if m and labels[m.group(1)] < i:
            lo = labels[m.group(1)]
            body = [t for j, t in ins if lo < j <= i]
            skips = []
            for j, t in ins:
                f = BRANCH.search(t)
                if f and lo < j < i and j < labels[f.group(1)] <= i:
                    skipped = [u for k, u in ins if j < k < labels[f.group(1)]]
                    skips.append((len(skipped), collections.Counter(map(opcode, skipped)).most_common(3)))
            loops.append(dict(start=lo, end=i, size=len(body), ops=collections.Counter(map(opcode, body)),
                              skips=skips))
    real = [lp for lp in loops if lp["size"] > 1]
    if not real:
        return dict(loops=[], before=len(ins), after=0)
    before = sum(1 for j, _ in ins if j < real[0]["start"])
    tail = [(j, t) for j, t in ins if j > real[-1]["end"]]
    stop = next((k for k, (_, t) in enumerate(tail) if opcode(t) == "EXIT"), len(tail) - 1)
    skipped = 0
    for j, t in tail[:stop]:
        f = BRANCH.search(t)
        if f and labels[f.group(1)] > j:
            skipped += sum(1 for k, _ in tail[:stop] if j < k < labels[f.group(1)])
    return dict(loops=real, before=before, after=stop + 1 - skipped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", type=int, default=90, help="compute capability x 10 (80: A100, 90: H100/H200)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--d", type=int, default=128, help="head dimension")
    ap.add_argument("--four-loop", action="store_true", help="the four-loop form (default: the one-loop form)")
    ap.add_argument("--lazy", choices=["yes", "no"], help="lazy rescale (default: the wrapper's rule)")
    ap.add_argument("--max-registers", type=int, help="ptxas's register cap (default: the wrapper's)")
    ap.add_argument("--stages", type=int, help="software-pipeline stages (default: the wrapper's)")
    ap.add_argument("--tma", action="store_true", help="key and value blocks through tensor descriptors")
    ap.add_argument("--fused", action="store_true", help="split tiles merged in the kernel (fused_merge)")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
    import triton

    from irforge.kernels._compile import bsa_launch, compile_for, ptxas_usage, sass
    from irforge.kernels.block_sparse_attention.kernel import _bsa_fwd

    lazy = None if args.lazy is None else args.lazy == "yes"
    pointers, consts, opts = bsa_launch(args.cc, args.dtype, args.d, 4, not args.four_loop, lazy=lazy,
                                        max_registers=args.max_registers, tma=args.tma,
                                        fused=args.fused)  # 4: Mistral's groups
    if args.stages:
        opts["num_stages"] = args.stages
    kernel = compile_for(_bsa_fwd, args.cc, pointers, consts, opts)
    regs, spills = ptxas_usage(kernel, args.cc)
    cfg = dict(block_m=consts["BLOCK_M"], block_n=consts["BLOCK_N"], **opts)
    got = count(sass(kernel, args.cc))
    form = "four-loop" if args.four_loop else "one-loop"
    print(f"_bsa_fwd, sm_{args.cc}, {args.dtype}, D {args.d}, {form}, {cfg}, lazy rescale {consts['LAZY']}, "
          f"tensor-memory loads {args.tma}, merge in the kernel {args.fused}; triton {triton.__version__}")
    print(f"registers {regs}, spill stores {spills} bytes, shared memory {kernel.metadata.shared} bytes")
    print(f"instructions per thread before the first key loop: {got['before']}; after the last, to the first exit "
          f"(unsplit tile): {got['after']}")
    for n, lp in enumerate(got["loops"], 1):
        print(f"key loop {n}: {lp['size']} instructions per iteration; "
              + ", ".join(f"{k} {v}" for k, v in lp["ops"].most_common(10)))
        for size, ops in lp["skips"]:
            print(f"  a forward branch in it skips {size}: " + ", ".join(f"{k} {v}" for k, v in ops))


if __name__ == "__main__":
    main()
