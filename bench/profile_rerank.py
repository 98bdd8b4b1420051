"""Where a reranker's time goes: torch.profiler over ICR and BlockRank queries, after a warm-up pass.

    python bench/profile_rerank.py [--device cuda --dtype bfloat16 --model random:mistral-7b --tokenizer DIR]
                                   [--queries 3] [--methods icr blockrank]

On an H200 with a Mistral-7B-shaped model, bench_rerank.py measured ICR at 0.22-0.28 s per query and BlockRank
at 0.06 s, several times what the forward pass's matrix products need (bench/RESULTS.md). This says where the
rest goes: per method, the wall time per query, the time the device was busy in kernels (on a GPU), and the
operators with the most self time on the device and on the host. Wall time far above device time means the
host (Python, launches, synchronisations) is the bound. Same data and models as bench_rerank.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--max-doc-tokens", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=["icr", "blockrank"], choices=["icr", "blockrank"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokenizer")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--rows", type=int, default=20, help="operators listed per table")
    args = ap.parse_args()
    if args.queries < 1:
        raise SystemExit("--queries must be at least 1")

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from bench_rerank import load_model, scifact_top20
    from irforge.rerank import BlockRankReranker, ICRReranker

    work = scifact_top20(args.queries)
    model, tok = load_model(args.model, args.tokenizer, args.device, getattr(torch, args.dtype))
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    device_key = "self_device_time_total"

    for method in args.methods:
        if method == "icr":
            r = ICRReranker(model, tok, max_doc_tokens=args.max_doc_tokens)
            run = lambda q, d: r.score(q, d)  # noqa: E731
        else:
            br = BlockRankReranker(model, tok, max_doc_tokens=args.max_doc_tokens)
            # rerank, as users run it: under inference mode. scores() outside it is the differentiable path,
            # which backend "auto" runs in PyTorch, not Triton, when the weights require gradients
            run = lambda q, d: br.rerank(q, d)  # noqa: E731
        for q, d in work:  # warm-up: Triton's compilation and cuBLAS's first calls are not what is asked here
            run(q, d)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()  # without the profiler, whose per-operator cost inflates host-bound time
        for q, d in work:
            run(q, d)
        if cuda:
            torch.cuda.synchronize()
        plain = (time.perf_counter() - t) / len(work)
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            for q, d in work:
                run(q, d)
            if cuda:
                torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / len(work)
        events = prof.key_averages()
        print(f"\n### {method}: {plain * 1e3:.1f} ms per query without the profiler, {wall * 1e3:.1f} under it "
              f"({len(work)} queries)")
        if cuda:
            # the kernels' own events only: an operator's self device time is its kernels' time again, so a sum
            # over all events counts it twice (torch's table total counts as here)
            busy = sum(getattr(e, device_key, 0) for e in events
                       if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / len(work)
            print(f"device busy in kernels: {busy:.1f} ms per query ({busy / (wall * 1e3):.0%} of the wall time)")
            print(events.table(sort_by=device_key, row_limit=args.rows))
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
