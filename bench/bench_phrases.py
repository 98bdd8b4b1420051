"""Exact-phrase BM25 (irforge.seal.PhraseSearcher) on wiki100k: the filtered top-k, which scores only the
documents holding every phrase, against the plan it replaced (score every document matching a query term,
then filter), in one run. Results are checked to be identical.

Usage:
    python bench/bench_phrases.py [--queries N]

Queries: for N random passages (fixed seed), two consecutive words of the passage in quotes followed by its
title, e.g. `"river flows" Danube`. Timed: one query at a time from Python, top 10, median and mean.
"""
from __future__ import annotations

import argparse
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bm25 import load_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    import irforge
    from irforge.seal import NGramIndex, PhraseSearcher, parse_phrases

    docs, _, _ = load_corpus("wiki100k", 1)
    t = time.perf_counter()
    bm25 = irforge.BM25Index.build(docs)
    t_bm25 = time.perf_counter() - t
    t = time.perf_counter()
    ng = NGramIndex.build(docs)
    t_ng = time.perf_counter() - t
    ps = PhraseSearcher(bm25, ng)
    rnd = random.Random(7)
    queries = []
    while len(queries) < args.queries:
        d = docs[rnd.randrange(len(docs))]
        words = re.findall(r"[A-Za-z]{3,}", d["text"])
        if len(words) < 2 or not d["title"].strip():
            continue
        i = rnd.randrange(len(words) - 1)
        queries.append(f'"{words[i]} {words[i + 1]}" {d["title"]}')

    def old_plan(q: str):
        phrases, text = parse_phrases(q)
        allowed = None
        for p in phrases:
            got = ng.phrase_docs(p)
            allowed = got if allowed is None else np.intersect1d(allowed, got)
        hits = bm25.search(text, k=bm25.n_docs)
        sel = np.flatnonzero(np.isin(hits.docnos, allowed))[:10]
        return hits.docnos[sel], hits.scores[sel]

    sizes, new_ms, old_ms = [], [], []
    for q in queries:
        t = time.perf_counter()
        h = ps.search(q, k=10)
        new_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        od, os_ = old_plan(q)
        old_ms.append((time.perf_counter() - t) * 1e3)
        assert h.docnos.tolist() == od.tolist() and h.scores.tolist() == os_.tolist(), q
        sizes.append(len(ng.phrase_docs(parse_phrases(q)[0][0])))
    print(f"Machine: {platform.processor() or platform.machine()}; irforge {irforge.__version__}; "
          f"{len(docs):,} passages; BM25 build {t_bm25:.1f} s, n-gram index build {t_ng:.1f} s; "
          f"{len(queries)} phrase queries, documents holding the phrase: median {statistics.median(sizes):.0f}, "
          f"mean {statistics.mean(sizes):.0f}")
    print("| plan | median ms | mean ms |")
    print("|---|---|---|")
    print(f"| filtered top-k (irforge) | {statistics.median(new_ms):.3f} | {statistics.mean(new_ms):.3f} |")
    print(f"| score all, then filter | {statistics.median(old_ms):.3f} | {statistics.mean(old_ms):.3f} |")
    print(f"ratio (filtered / score-all), median: {statistics.median(new_ms) / statistics.median(old_ms):.3f}")


if __name__ == "__main__":
    main()
