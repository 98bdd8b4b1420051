"""Where the kernels' time goes, at the GPU benchmark's two shapes (bench_kernels.py --gpu-only): the
measurements that tell one cause from another when a timing misses its prediction.

    python bench/probe_kernels.py [--write bench/RESULTS.md]     # on a GPU (bench/gpu_session.sh probe)
    TRITON_INTERPRET=1 python bench/probe_kernels.py --cpu-check  # a small shape in the interpreter: runs every
                                                                  # probe once with wall-clock timers

1. The block-sparse call's split threshold (max_blocks): the default against other rules, each timed eagerly
   by triton.testing.do_bench and replayed from a CUDA graph (no host); the default timed three times at once
   first (a first-timing effect shows as a first figure apart from the next two).
2. The attention mass with the rows' log-sum-exp not given (ICR's call): eagerly and from a CUDA graph, its
   kernels' GPU times from torch.profiler, and the log-sum-exp kernel alone by product rows, warps and key
   splits (graph).
3. Each call's host time: the mean wall time of 200 calls launched without a synchronisation (the GPU runs
   behind), against its GPU time: where the host's is the larger, the eager figure is the host's; and where
   the host's time goes, by function (cProfile).
4. The per-segment sums of reduce="segment" (attention_mass.common.segment_sums, two torch.segment_reduce
   steps) against the index_add_ they replaced, on layouts of short and long segments: eager and from a CUDA
   graph, whether two calls give the same bits, and the largest difference between the two sums.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from bench_kernels import failed, graph_bench  # (this script's folder is on the path)
from irforge.kernels import SegmentLayout, attention_mass, block_sparse_attention


def host_ms(f, n: int = 200) -> float:
    """Mean wall ms per call of ``n`` calls launched back to back (no synchronisation between them)."""
    f()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    dt = (time.perf_counter() - t) / n * 1e3
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return dt


def timers(gpu: bool):
    """(eager, graph) timers returning median ms: do_bench and do_bench_cudagraph on a GPU; wall clock (one
    call, no graph) in the CPU check."""
    if gpu:
        import triton

        return (lambda f: triton.testing.do_bench(f)), (lambda f: graph_bench(f)[0])

    def wall(f):
        f()
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    return wall, wall


def guarded(f) -> str:
    """f()'s figure with 3 decimals, or the failure on one line (a probe that fails does not stop the rest)."""
    try:
        return f"{f():.3f}"
    except Exception as e:  # noqa: BLE001
        return failed(e)


def host_profile(f, n: int, top: int = 14) -> list[str]:
    """Table rows of the ``top`` functions by own time over ``n`` calls of f (cProfile): own and cumulative
    microseconds per call."""
    import cProfile
    import pstats

    f()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        f()
    prof.disable()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    stats = pstats.Stats(prof).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [f"| {Path(file).name}:{line} {name} | {tt / n * 1e6:.1f} | {ct / n * 1e6:.1f} |"
            for (file, line, name), (_, _, tt, ct, _) in rows]


def kernel_times(f, calls: int = 20) -> list[tuple[str, float, int]]:
    """(kernel name, mean GPU microseconds per call, launches per call) of f's CUDA kernels by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            f()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None)
        us = e.cuda_time_total if us is None else us
        if us > 0:
            rows.append((e.key[:60], us / calls, round(e.count / calls)))
    return sorted(rows, key=lambda r: -r[1])


def probe(shapes, gpu: bool, dev: str, dtype: torch.dtype, heads=(32, 8), D: int = 128,
          host_calls: int = 200) -> list[str]:
    from irforge.kernels._checks import cdiv, product_rows
    from irforge.kernels.attention_mass import kernel as mass_kernel
    from irforge.kernels.block_sparse_attention import kernel as bsa_kernel

    eager, graph = timers(gpu)
    Hq, Hkv = heads
    out = []
    for n_docs, doc_len, sweep in shapes:
        layout = SegmentLayout.from_lengths([(64, [doc_len] * n_docs, 50)])
        T = layout.total_tokens
        q, k, v = (torch.randn(T, h, D, device=dev, dtype=dtype) for h in (Hq, Hkv, Hkv))
        cap = torch.cuda.get_device_capability() if gpu else None
        cfg = bsa_kernel.launch_config(dtype, D, capability=cap,
                                       one_loop=bsa_kernel.default_one_loop(dtype, D, cap))
        rows_per = product_rows(cfg["block_m"], Hq // Hkv)[0]
        tiles = layout.tiles(rows_per)
        per_sm = bsa_kernel.programs_per_sm(cfg)
        default = (bsa_kernel.auto_max_blocks(tiles, cfg["block_n"], Hkv, q.device, per_sm) if gpu else 0)
        total = bsa_kernel.total_key_blocks(tiles, cfg["block_n"])
        call = lambda: block_sparse_attention(q, k, v, layout, backend="triton")  # noqa: E731
        fused = lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, fused_merge=True)  # noqa: E731
        longest = lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, launch_order="longest")  # noqa: E731
        firsts = [guarded(lambda: eager(call)) for _ in range(3)]
        out += [f"### {T:,} tokens (64 + {n_docs} x {doc_len} + 50), {Hq}/{Hkv} heads, D {D}, {str(dtype)[6:]}", "",
                f"Block-sparse attention: {total:,} key blocks of {cfg['block_n']} per head in the launch table; "
                f"default max_blocks {default} ({per_sm} programs per SM counted). The default call timed three "
                f"times at once (do_bench, ms): {', '.join(firsts)}. Host: {host_ms(call, host_calls):.3f} ms per "
                f"call; with split tiles merged in the kernel (fused_merge=True) {host_ms(fused, host_calls):.3f}, "
                f"eager {guarded(lambda: eager(fused))} ms, from a CUDA graph {guarded(lambda: graph(fused))} ms. "
                f"Every program longest first (launch_order='longest', the order to 5a32a01): eager "
                f"{guarded(lambda: eager(longest))} ms, from a CUDA graph {guarded(lambda: graph(longest))} ms.",
                "", "| max_blocks | programs | partial slots | eager ms | CUDA graph ms |",
                "|---|---|---|---|---|"]
        for mb in sweep + ([default] if default not in sweep else []):
            table, groups = bsa_kernel.schedule(tiles, cfg["block_n"], mb, rows_per)
            f = lambda mb=mb: bsa_kernel.block_sparse_attention(q, k, v, layout, max_blocks=mb)  # noqa: E731
            out.append(f"| {mb}{' (default)' if mb == default else ''} | {len(table) * Hkv:,} | "
                       f"{int(groups[:, 3].sum()) * Hkv if len(groups) else 0:,} | {guarded(lambda: eager(f))} | "
                       f"{guarded(lambda: graph(f))} |")
        o, lse = call()
        rows = torch.arange(T - 50, T, device=dev)
        rows_host = rows.cpu()
        given = lambda: attention_mass(q[rows], rows_host, k, layout, lse=lse[rows], backend="triton")  # noqa: E731
        own = lambda: attention_mass(q[rows], rows_host, k, layout, backend="triton")  # noqa: E731
        own_fused = lambda: mass_kernel.attention_mass(q[rows], rows_host, k, layout, fused_merge=True)  # noqa: E731
        out += ["", "Attention mass of the 50 query rows:", "",
                "| call | eager ms | CUDA graph ms | host ms per call |", "|---|---|---|---|"]
        for name, f in (("log-sum-exp given", given), ("log-sum-exp not given (ICR)", own),
                        ("log-sum-exp not given, its splits merged in its kernel (fused_merge=True)", own_fused)):
            out.append(f"| {name} | {guarded(lambda: eager(f))} | {guarded(lambda: graph(f))} | "
                       f"{host_ms(f, host_calls):.3f} |")
        # the log-sum-exp kernel alone, at several key splits (its input tables as attention_mass builds them)
        _, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows_host, None, T, 64, q.device)
        qr = q[rows].contiguous()
        doc = torch.empty(0, dtype=torch.bool, device=dev)
        prec = bsa_kernel.dot_precision(dtype)
        key_blocks = cdiv(T, 64)
        sms = torch.cuda.get_device_properties(0).multi_processor_count if gpu else 4
        out += ["", f"The rows' log-sum-exp kernel alone ({key_blocks} key blocks of 64), CUDA graph ms, by product "
                "rows (selected rows x 4 heads), warps and key splits:", "",
                "| product rows | warps | programs | splits | ms |", "|---|---|---|---|---|"]
        for bm, warps, fixed in ((64, 4, None), (64, 4, 4), (64, 4, 32), (128, 4, None), (128, 8, None),
                                 (256, 8, None)):
            n_rb = cdiv(50, product_rows(bm, Hq // Hkv)[0])
            auto = mass_kernel.lse_splits(key_blocks, n_rb * Hkv, sms)
            s = fixed or auto
            f = lambda s=s, bm=bm, warps=warps: mass_kernel._row_lse(  # noqa: E731
                qr, k, pos_t, p0_t, doc, "causal", 1 / math.sqrt(D), bm, 64, prec, False, warps, splits=s)
            out.append(f"| {bm} | {warps} | {n_rb * Hkv * s} | {s}{' (default)' if s == auto else ''} | "
                       f"{guarded(lambda: graph(f))} |")
        for name, f in (("block-sparse attention", call), ("attention mass, log-sum-exp given", given),
                        ("attention mass, log-sum-exp not given", own)):
            out += ["", f"Host time of the {name} call by function (cProfile, {host_calls} calls; us per call):", "",
                    "| function | own | with callees |", "|---|---|---|"] + host_profile(f, host_calls)
        if gpu:
            out += ["", "GPU kernels of one call, log-sum-exp not given (torch.profiler, mean of 20 calls):", "",
                    "| kernel | us per call | launches |", "|---|---|---|"]
            try:
                out += [f"| {n} | {us:.1f} | {c} |" for n, us, c in kernel_times(own)]
            except Exception as e:  # noqa: BLE001
                out.append(f"| {failed(e)} | | |")
        out.append("")
    return out


def segment_sum_probe(layouts, gpu: bool, dev: str, heads: int = 32) -> list[str]:
    """Section 4 of the module docstring: one table row per layout (a list of from_lengths prompts)."""
    from irforge.kernels.attention_mass.common import segment_sums

    eager, graph = timers(gpu)
    out = ["### Per-segment sums of the attention mass (reduce='segment')", "",
           f"The mass of every token [T, {heads}] (float32) summed per segment: index_add_ (atomic adds on a GPU, "
           "the sum before 06aa860) against segment_sums (its two torch.segment_reduce steps, the sum since); ms.",
           "",
           "| layout | tokens | segments | index_add_ eager | segment_sums eager | segment_sums, CUDA graph | "
           "same bits twice: index_add_, segment_sums | largest difference |", "|---|---|---|---|---|---|---|---|"]
    for spec in layouts:
        layout = SegmentLayout.from_lengths(spec)
        T, S = layout.total_tokens, len(layout.kinds)
        mass = torch.rand(T, heads, device=dev)
        seg = torch.as_tensor(layout.segment_ids().copy(), device=dev)
        old = lambda: torch.zeros(S, heads, device=dev).index_add_(0, seg, mass)  # noqa: E731
        new = lambda: segment_sums(mass, layout)  # noqa: E731
        same = [all(torch.equal(f(), f()) for _ in range(20)) for f in (old, new)]
        diff = (new().double() - old().double()).abs().max().item()
        name = " + ".join(f"{n} + {len(d)} x {d[0]} + {m}" if len(set(d)) == 1 else f"{n} + {d} + {m}"
                          for n, d, m in spec)
        out.append(f"| {name} | {T:,} | {S:,} | {guarded(lambda: eager(old))} | {guarded(lambda: eager(new))} | "
                   f"{guarded(lambda: graph(new)) if gpu else 'no graph off a GPU'} | {same[0]}, {same[1]} | "
                   f"{diff:.1e} |")
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write")
    ap.add_argument("--cpu-check", action="store_true", help="a small shape in Triton's interpreter")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_bm25 import machine, write_section

    meta = machine()
    if args.cpu_check:
        body = probe([(3, 40, [0, 2])], False, "cpu", torch.float32, heads=(4, 2), D=32, host_calls=2)
        body += segment_sum_probe([[(4, [30] * 3, 2)], [(4, [300], 2)]], False, "cpu", heads=4)
        where = f"Machine: {meta['cpu']} (Triton's interpreter; wall-clock times, not GPU figures)."
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a CUDA device (or --cpu-check)")
        import triton

        # the split rules of bd5779e (71, 506) and of 82d3095 (213, 1516) twice around the default, for the noise
        body = probe([(100, 160, [71, 213, 71, 213]), (500, 200, [506, 1516, 506, 1516])], True, "cuda",
                     torch.bfloat16)
        # the benchmark's two shapes, a 100k-token document, and eight of 4,000 tokens after an 8,000-token prefix
        body += segment_sum_probe([[(64, [160] * 100, 50)], [(64, [200] * 500, 50)], [(64, [100000], 50)],
                                   [(8000, [4000] * 8, 50)]], True, "cuda")
        where = f"Card: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}."
    marker = "## Kernel probes"
    text = "\n".join([f"{marker} (bench/probe_kernels.py)", "", f"{where} Date: {meta['date']}; irforge git "
                      f"{meta['git']}. Command: `python bench/probe_kernels.py {' '.join(sys.argv[1:])}`.", ""]
                     + body) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), text, marker=marker)


if __name__ == "__main__":
    main()
