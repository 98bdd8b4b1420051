"""A model of the block-sparse kernel's memory traffic under its launch order: how many bytes the launch reads
from DRAM when programs share an L2 cache, for the launch table as kernel.schedule orders it ("segments", the
default) and longest first throughout ("longest", the order before).

Programs are handed out in launch order (a table row's key/value heads adjacent) to ``sms`` x ``per_sm`` slots,
each to the slot that frees first. Every running program makes one access per step, in slot order: first its
query rows, then each key block it visits (keys and values of one head), then its output (a split chunk: its
float32 partials). An access that misses an LRU cache of ``l2_mb`` MB reads from DRAM; writes allocate in the
cache and all go to DRAM. So a program's time is its accesses, and the model counts only where data comes from,
not the compute. The time is the list-scheduling model's (bench/model_split.py) for the same programs.

    python bench/model_l2.py                 # the bench's 16k and 100k prompts, and three others
    python bench/model_l2.py --l2-mb 25      # half the cache

Why: longest first runs the tiles of equal cost together. A 160-token document's ten 16-token tiles visit 3-7
key blocks of 32 (two of the instruction, then their causal range), so longest first runs them in five waves,
and each wave reads every document's keys up to its tiles' end: 13-66 MB per wave at 16k (all heads), more
than the cache keeps between waves once the query and output rows stream through it. Grouped by segment, a
document's tiles run together and its keys come from the cache after the first. The query segment's long chunks
go first in either order.

At the bench's shapes (Mistral-7B's 32/8 heads, D 128, bf16; an H100's 132 SMs x 3 programs, 50 MB of L2) it
gives DRAM reads of 351 MB (longest first) against 247 MB (segments) at 16k tokens, and 3.00 against 1.65 GB at
100k; writes 136 and 857 MB in both. The H100 timed the longest-first order at 0.228 and 1.484 ms
(bench/RESULTS.md): 2.1 and 2.6 TB/s for the modelled traffic, near the HBM3's 3.35 at 100k. So the order should
gain most at 100k if the kernel is bound by memory there. A prediction, not a timing.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model_split import makespan  # noqa: E402

from irforge.kernels.block_sparse_attention.kernel import schedule, split_threshold, total_key_blocks  # noqa: E402
from irforge.kernels.layout import SegmentLayout  # noqa: E402


def _lengths(seed: int, low: int, high: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(low, high + 1, n).tolist()


SHAPES = {"16k: 64 + 100 x 160 + 50": [(64, [160] * 100, 50)],
          "100k: 64 + 500 x 200 + 50": [(64, [200] * 500, 50)],
          "64 + 100 documents of 30-290 + 50": [(64, _lengths(0, 30, 290, 100), 50)],
          "4 prompts of 32 + 20 x 50-100 + 20": [(32, _lengths(1, 50, 100, 20), 20)] * 4,
          "8 prompts of 64 + 19 x 100 + 50": [(64, [100] * 19, 50)] * 8}


def program_accesses(row, kvh: int, block_n: int, rows: int, group: int, D: int, elem: int) -> list:
    """One program's accesses in order: (key, bytes, is_write)."""
    r0, r1, p0, p1, c0, c1, part, _ = row
    out = [(("q", r0, kvh), rows * group * D * elem, False)]
    for a, b in ((p0, p1), (c0, c1)):
        out += [(("kv", s // block_n, kvh), 2 * block_n * D * elem, False) for s in range(a, b, block_n)]
    out.append((("o", r0, kvh), rows * group * D * elem, True) if part < 0 else
               (("partial", part, kvh), rows * group * D * 4, True))
    return out


def traffic(table: np.ndarray, heads: int, slots: int, l2_bytes: int, **shape) -> tuple[int, int]:
    """DRAM bytes read and written by the launch (see the module docstring)."""
    programs = ((i, h) for i in range(len(table)) for h in range(heads))
    cache, used, read, written = OrderedDict(), 0, 0, 0
    running = []
    for i, h in programs:
        if len(running) == slots:
            break
        running.append([program_accesses(table[i].tolist(), h, **shape), 0])
    while running:
        for j, prog in enumerate(running):
            accesses, pos = prog
            key, nbytes, write = accesses[pos]
            if key in cache:
                cache.move_to_end(key)
            else:
                read += 0 if write else nbytes
                cache[key] = nbytes
                used += nbytes
            written += nbytes if write else 0
            while used > l2_bytes:
                used -= cache.popitem(last=False)[1]
            prog[1] += 1
            if prog[1] == len(accesses):
                nxt = next(programs, None)
                running[j] = None if nxt is None else [
                    program_accesses(table[nxt[0]].tolist(), nxt[1], **shape), 0]
        running = [p for p in running if p is not None]
    return read, written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sms", type=int, default=132, help="SMs (H100 SXM and H200: 132)")
    ap.add_argument("--per-sm", type=int, default=3, help="programs an SM holds (the Hopper default: 3)")
    ap.add_argument("--l2-mb", type=float, default=50.0, help="L2 cache, MB (H100: 50)")
    ap.add_argument("--heads", type=int, nargs=2, default=[32, 8], help="query and key/value heads")
    ap.add_argument("--d", type=int, default=128, help="head dimension")
    ap.add_argument("--rows", type=int, default=16, help="token rows per tile (64 product rows / 4 query heads)")
    ap.add_argument("--block-n", type=int, default=32, help="keys per block (the Hopper one-loop default)")
    a = ap.parse_args()
    hq, hkv = a.heads
    shape = dict(block_n=a.block_n, rows=a.rows, group=hq // hkv, D=a.d, elem=2)
    g = (0.0, 0.85, 0.95, 1.0)[:a.per_sm + 1] if a.per_sm <= 3 else (0.0, *([1.0] * a.per_sm))
    for name, prompts in SHAPES.items():
        layout = SegmentLayout.from_lengths(prompts)
        tiles = layout.tiles(a.rows)
        max_blocks = split_threshold(total_key_blocks(tiles, a.block_n), hkv, a.sms, a.per_sm)
        segments = layout.segment_ids()
        T = layout.total_tokens
        print(f"{name}: {T:,} tokens; unique bytes: query rows {T * hq * a.d * 2 / 1e6:,.0f} MB, keys and values "
              f"{T * hkv * a.d * 4 / 1e6:,.0f} MB; split at {max_blocks} key blocks")
        times = {}
        for order in ("longest", "segments"):
            table, _ = schedule(tiles, a.block_n, max_blocks, a.rows, 1, segments if order == "segments" else None)
            read, written = traffic(table, hkv, a.sms * a.per_sm, int(a.l2_mb * 2**20), **shape)
            times[order] = makespan(np.repeat(table[:, 7].astype(np.float64), hkv) + 1.5, a.sms, a.per_sm, g)
            print(f"  {order:8s}: DRAM read {read / 1e6:8,.0f} MB, written {written / 1e6:6,.0f} MB; "
                  f"list-scheduling time {times[order] / times['longest']:.3f} of longest first's")


if __name__ == "__main__":
    main()
