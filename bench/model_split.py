"""A list-scheduling model of the block-sparse kernel's launch, to choose where long tiles are split
(kernel.split_threshold) before a GPU times it.

The kernel's launch table (longest first, the order to 5a32a01, which bench/model_l2.py compares with the present
one; a row's key/value heads adjacent) becomes programs whose work is their key blocks plus a fixed cost. Each SM
holds ``per_sm`` programs at once and shares its throughput among them: g[k] of its full rate with k resident (1.0
with all slots full), split equally. Programs are handed out in launch order, the first wave across the SMs in
turn (or filling one SM's slots before the next with --depth-first), then each to the slot that frees first. The
result is the time of the last program, in units of one key block at an SM's full rate, and its ratio to the work
divided by the SMs (the lower bound).

  python bench/model_split.py                        # the bench's shapes, thresholds around the default
  python bench/model_split.py --fit 1.59 1.40        # g[1] from measured unsplit / split time ratios
  python bench/model_split.py --fixed 3 --g 0.75 0.95  # another fitted pair (fixed cost, g[1])

The fit: the H100 run of faed31a timed the default with and without splitting (bench_kernels.py's rows "irforge
Triton" and "long tiles not split"): 0.372 / 0.234 ms at 16k tokens and 2.319 / 1.652 ms at 100k. With the default
fixed cost of 1.5 key blocks the model needs a lone program at 0.8-0.9 of an SM's rate to give those ratios; any
fixed cost from 0 to 5 blocks fits with its own g[1], so a GPU timing of two thresholds is what pins it
(bench/RESULTS.md).

The model missed: it predicted half a slot's load (bd5779e: 71 blocks at 16k) 0-10% faster than the rule before
(213), and the H100 timed it 5% slower (bench/probe_kernels.py: 0.235 against 0.223 ms from CUDA graphs). Chunks
cost more than a fixed 0-5 blocks each; the threshold now follows the measured sweep (kernel.split_threshold).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from irforge.kernels.block_sparse_attention.kernel import schedule, split_threshold, total_key_blocks  # noqa: E402
from irforge.kernels.layout import SegmentLayout  # noqa: E402

SHAPES = {"16k": [(64, [160] * 100, 50)], "100k": [(64, [200] * 500, 50)]}


def program_work(layout: SegmentLayout, max_blocks: int, heads: int, rows: int, block_n: int,
                 fixed: float) -> np.ndarray:
    """Work of each program in launch order: its key blocks plus ``fixed`` (filling the pipeline, the write)."""
    table, _ = schedule(layout.tiles(rows), block_n, max_blocks, rows, 1)
    return np.repeat(table[:, 7].astype(np.float64), heads) + fixed


def makespan(work: np.ndarray, sms: int, per_sm: int, g: tuple[float, ...], depth_first: bool = False) -> float:
    """Time until the last program ends (see the module docstring). ``g[k]``: an SM's rate with k programs."""
    rate_of = np.asarray(g, dtype=np.float64) / np.maximum(np.arange(len(g)), 1)  # each program's share
    rem = np.full((sms, per_sm), np.inf)  # remaining work per slot; inf: empty
    busy = np.zeros((sms, per_sm), dtype=bool)
    slots = [(i // per_sm, i % per_sm) if depth_first else (i % sms, i // sms) for i in range(sms * per_sm)]
    nxt = 0
    for m, s in slots[:len(work)]:
        rem[m, s], busy[m, s] = work[nxt], True
        nxt += 1
    t = 0.0
    while busy.any():
        rate = rate_of[busy.sum(1)][:, None] * busy
        with np.errstate(divide="ignore", invalid="ignore"):
            left = np.where(busy, rem / rate, np.inf)
        dt = left.min()
        t += dt
        rem = np.where(busy, rem - dt * rate, rem)
        done = busy & (rem <= 1e-9 * np.maximum(work.max(), 1))
        busy &= ~done
        for m, s in zip(*np.nonzero(done)):
            if nxt < len(work):
                rem[m, s], busy[m, s] = work[nxt], True
                nxt += 1
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sms", type=int, default=132, help="SMs (H100 SXM and H200: 132)")
    ap.add_argument("--per-sm", type=int, default=3, help="programs an SM holds (the Hopper default: 3)")
    ap.add_argument("--heads", type=int, default=8, help="key/value heads (Mistral-7B: 8)")
    ap.add_argument("--rows", type=int, default=16, help="token rows per tile (64 product rows / 4 query heads)")
    ap.add_argument("--block-n", type=int, default=32, help="keys per block (the Hopper one-loop default)")
    ap.add_argument("--fixed", type=float, default=1.5, help="fixed cost per program, in key blocks")
    ap.add_argument("--g", type=float, nargs="+", default=[0.85, 0.95],
                    help="an SM's rate with 1, 2, ... programs (the last slot count is 1.0)")
    ap.add_argument("--depth-first", action="store_true", help="the first wave fills one SM before the next")
    ap.add_argument("--fit", type=float, nargs=2, metavar=("RATIO_16K", "RATIO_100K"),
                    help="measured unsplit / split (at the old threshold) time ratios: print the model's for g[1] "
                         "from 0.5 to 0.9")
    a = ap.parse_args()
    g = (0.0, *a.g, 1.0)[:a.per_sm + 1]
    if len(g) != a.per_sm + 1:
        ap.error(f"--g needs {a.per_sm - 1} rates (1 to {a.per_sm - 1} programs)")
    for name, prompts in SHAPES.items():
        layout = SegmentLayout.from_lengths(prompts)
        blocks = total_key_blocks(layout.tiles(a.rows), a.block_n)
        old = split_threshold(blocks, a.heads, 2 * a.sms, 1)  # the rule to 82d3095: half an SM's load
        new = split_threshold(blocks, a.heads, a.sms, a.per_sm)
        work = {m: program_work(layout, m, a.heads, a.rows, a.block_n, a.fixed)
                for m in sorted({0, old, old * 2 // 3, new, max(64, new // 2), 64}, reverse=True)}
        bound = work[old].sum() / a.sms
        if a.fit:
            target = a.fit[0] if name == "16k" else a.fit[1]
            for g1 in (0.5, 0.6, 0.7, 0.8, 0.9):
                gg = (0.0, g1, *((1.0,) * (a.per_sm - 1)))
                ratio = makespan(work[0], a.sms, a.per_sm, gg) / makespan(work[old], a.sms, a.per_sm, gg)
                print(f"{name}: g[1] {g1:.1f}: unsplit / split {ratio:.2f} (measured {target:.2f})")
            continue
        print(f"{name}: {blocks:,} key blocks per head, {a.heads} heads, {a.sms} SMs x {a.per_sm} programs, "
              f"g {g}; old threshold {old}, new {new}; lower bound {bound:,.0f}")
        base = makespan(work[old], a.sms, a.per_sm, g, a.depth_first)
        for m, w in work.items():
            t = makespan(w, a.sms, a.per_sm, g, a.depth_first)
            over = t * a.sms / w.sum()  # against this threshold's own lower bound
            print(f"  max_blocks {m:5d}: {len(w):6,} programs, time {t:9,.1f}, / lower bound {over:.3f}, "
                  f"/ old threshold's {t / base:.3f}")


if __name__ == "__main__":
    main()
