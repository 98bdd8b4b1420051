"""Per-query cost of each BM25 query algorithm by the number of postings a query touches, to set the `auto`
choice (irforge.bm25's choose_algorithm). All algorithms return identical top-k; only speed differs.

Usage:
    python bench/bench_bm25_algorithms.py [--k 10]

Corpora: wiki100k (the bench_bm25.py title queries, bucketed by postings) and a synthetic corpus of 300,000
(--synthetic-docs) documents of 30 token ids drawn from a Zipf(1.1) law over 50,000 ids (queries of 1, 2, 4 and 8 ids drawn at
several frequency ranks). Timed: `core.search` (no Python-side id mapping), mean µs per query, best of 3.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bm25 import load_corpus  # noqa: E402

ALGOS = ["exhaustive", "maxscore", "bmw", "auto"]


def timed(core, queries, k, algo):
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for q in queries:
            core.search(q, k, algo)
        best = min(best, time.perf_counter() - t)
    return best / len(queries) * 1e6


def postings_of(core, q):
    return sum(core.document_frequency(t) for t, _ in core.query_terms(q))


def wiki_rows(k):
    """Rows for the wiki100k title queries, bucketed by postings."""
    import irforge

    docs, queries, _ = load_corpus("wiki100k", 1000)
    core = irforge.BM25Index.build(docs)._core
    texts = [q for _, q in queries]
    sizes = [postings_of(core, q) for q in texts]
    rows = []
    for lo, hi in [(0, 1000), (1000, 5000), (5000, 20000), (20000, 50000), (50000, 10**9)]:
        qs = [q for q, n in zip(texts, sizes) if lo <= n < hi]
        if qs:
            rows.append((f"wiki100k, {lo:,}-{hi:,} postings ({len(qs)} queries)",
                         statistics.mean(n for n in sizes if lo <= n < hi), [timed(core, qs, k, a) for a in ALGOS]))
    return rows


def synthetic_rows(k, n_docs):
    """Rows for a Zipf(1.1) corpus of n_docs documents of 30 ids over 50,000 ids."""
    import irforge

    rng = np.random.default_rng(0)
    w = 1.0 / np.arange(1, 50_001) ** 1.1
    w /= w.sum()
    core = irforge.BM25Index.build(list(rng.choice(50_000, size=(n_docs, 30), p=w).astype(np.uint32)))._core
    rows = []
    for n_terms in (1, 2, 4, 8):
        for rank in (3, 30, 300):  # a query's terms drawn around this frequency rank
            qs = [rng.integers(rank, rank * 4, size=n_terms).tolist() for _ in range(100)]
            mean_post = statistics.mean(postings_of(core, q) for q in qs)
            rows.append((f"synthetic Zipf, {n_docs:,} docs, {n_terms} terms near rank {rank}", mean_post,
                         [timed(core, qs, k, a) for a in ALGOS]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--synthetic-docs", type=int, default=300_000)
    ap.add_argument("--skip-wiki", action="store_true")
    args = ap.parse_args()
    import irforge

    rows = ([] if args.skip_wiki else wiki_rows(args.k)) + synthetic_rows(args.k, args.synthetic_docs)
    print(f"top-{args.k}, mean µs per query (irforge {irforge.__version__})")
    print("| queries | postings per query | " + " | ".join(ALGOS) + " |")
    print("|---|---|" + "---|" * len(ALGOS))
    for name, post, ts in rows:
        print(f"| {name} | {post:,.0f} | " + " | ".join(f"{t:.1f}" for t in ts) + " |")


if __name__ == "__main__":
    main()
