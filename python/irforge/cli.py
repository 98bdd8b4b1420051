"""The ``irforge`` command: ``demo``, ``index``, ``search``, ``eval``."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .bm25 import ALGORITHMS, METHODS, BM25Index
from .datasets import BeirDataset, download_beir, find_beir, iter_jsonl, load_beir, read_queries, stdlib_corpus
from .metrics import evaluate, write_trec_run


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="lucene", help="BM25 variant (default: lucene)")
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--no-stem", action="store_true", help="no Porter stemming")
    p.add_argument("--no-stopwords", action="store_true", help="keep stopwords")
    p.add_argument("--threads", type=int, default=None, help="build threads (default: all cores)")


def _build(corpus, args) -> tuple[BM25Index, float]:
    t0 = time.perf_counter()
    index = BM25Index.build(
        corpus, method=args.method, k1=args.k1, b=args.b, stemmer=None if args.no_stem else "porter",
        stopwords=None if args.no_stopwords else "lucene", threads=args.threads,
    )
    return index, time.perf_counter() - t0


def _load_dataset(data: str) -> BeirDataset:
    p = Path(data)
    if not p.is_dir():
        found = find_beir(data)
        if found is None:
            raise SystemExit(f"irforge: no dataset directory {data!r} (and no BEIR dataset of that name under the data root)")
        p = found
    return load_beir(p)


def _demo_dataset(args) -> tuple[BeirDataset, str]:
    if args.data:
        return _load_dataset(args.data), f"from {args.data}"
    found = find_beir("scifact")
    if found is not None:
        return load_beir(found), f"BEIR SciFact from {found}"
    if not args.offline:
        try:
            path = download_beir("scifact", timeout=15)
            return load_beir(path), "BEIR SciFact, downloaded"
        except Exception as e:  # no network: fall back to a corpus built here
            print(f"(SciFact not found locally and download failed: {type(e).__name__}; using the stdlib corpus)")
    return stdlib_corpus(), "Python standard library docstrings, built on the spot (known-item queries)"


def cmd_demo(args) -> int:
    ds, source = _demo_dataset(args)
    print(f"irforge {__version__} demo: {ds.name} ({source})")
    print(f"  {len(ds.corpus):,} documents, {len(ds.test_queries):,} judged queries")
    index, build_s = _build(ds.corpus, args)
    print(f"  built BM25 index in {build_s:.2f} s: {index.vocab_size:,} terms ({index.params['method']}, "
          f"k1={index.params['k1']:g}, b={index.params['b']:g})")
    qids = list(ds.test_queries)
    texts = [ds.queries[q] for q in qids]
    t0 = time.perf_counter()
    batch = index.search_batch(texts, k=1000, threads=args.threads)
    batch_s = time.perf_counter() - t0
    res = evaluate(batch.to_run(qids), ds.qrels, ["ndcg@10", "recall@100", "mrr@10"])
    lat = []
    for t in texts:
        s = time.perf_counter()
        index.search(t, k=10)
        lat.append((time.perf_counter() - s) * 1e3)
    print(f"  nDCG@10 {res['ndcg@10']:.4f}   Recall@100 {res['recall@100']:.4f}   MRR@10 {res['mrr@10']:.4f}")
    print(f"  latency top-10, one query at a time: median {np.median(lat):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms;"
          f" batch top-1000: {len(texts) / batch_s:,.0f} queries/s")
    titles = {d["id"]: (d["title"] or d["text"]) for d in ds.corpus}
    for q in qids[:3]:
        print(f"\n  query {q}: {ds.queries[q][:100]}")
        for rank, hit in enumerate(index.search(ds.queries[q], k=3), 1):
            mark = "*" if ds.qrels.get(q, {}).get(hit.id, 0) > 0 else " "
            print(f"   {mark}{rank}. [{hit.id}] {hit.score:7.3f}  {titles[hit.id][:80]}")
    print("\n  (* = judged relevant)")
    return 0


def cmd_index(args) -> int:
    if args.data:
        corpus = _load_dataset(args.data).corpus
    else:
        corpus = list(iter_jsonl(args.corpus))
    index, build_s = _build(corpus, args)
    index.save(args.output)
    print(json.dumps({"documents": index.n_docs, "terms": index.vocab_size, "build_s": round(build_s, 3),
                      "bytes": Path(args.output).stat().st_size, "path": str(args.output)}))
    return 0


def cmd_search(args) -> int:
    index = BM25Index.load(args.index)
    if args.query is not None:
        for rank, hit in enumerate(index.search(args.query, k=args.k, algorithm=args.algorithm), 1):
            print(f"{rank}\t{hit.id}\t{hit.score:.4f}")
        return 0
    queries = read_queries(args.queries)
    qids = list(queries)
    batch = index.search_batch([queries[q] for q in qids], k=args.k, algorithm=args.algorithm, threads=args.threads)
    run = batch.to_run(qids)
    if args.output:
        write_trec_run(run, args.output)
    else:
        for q in qids:
            for rank, (d, s) in enumerate(sorted(run[q].items(), key=lambda x: -x[1]), 1):
                print(f"{q} Q0 {d} {rank} {s:.6f} irforge")
    return 0


def _eval_ngram(args, ds) -> int:
    """SEAL on the FM-index: model-free (the query's own n-grams), or with --model, n-grams generated by the
    language model under FM-index constraints (SEALRetriever)."""
    from .seal import NGramIndex, NGramRetriever

    qids = list(ds.test_queries)
    if args.max_queries:
        qids = qids[: args.max_queries]
    t0 = time.perf_counter()
    if args.model:
        from .seal_decoding import SEALRetriever

        model, tok = _load_lm(args.model, args.device, args.dtype)
        retriever = SEALRetriever.build([(d["title"] + " " + d["text"]).strip() for d in ds.corpus], model, tok,
                                        doc_ids=[d["id"] for d in ds.corpus])
        name = f"ngram (SEAL: constrained beam search with {args.model})"
    else:
        retriever = NGramRetriever(NGramIndex.build(ds.corpus))
        name = "ngram (SEAL scoring, model-free: the query's n-grams)"
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = {q: retriever.search(ds.queries[q], k=args.k).to_dict() for q in qids}
    search_s = time.perf_counter() - t0
    if args.run:
        write_trec_run(run, args.run)
    metrics = ["ndcg@10", "recall@100", "recall@1000", "mrr@10", "map"]
    qrels = {q: ds.qrels[q] for q in qids if q in ds.qrels}
    print(json.dumps({"dataset": ds.name, "retriever": name,
                      **{m: round(v, 4) for m, v in evaluate(run, qrels, metrics).items()}, "queries": len(qids),
                      "k": args.k, "ms_per_query": round(search_s / max(1, len(qids)) * 1e3, 4), "build_s": round(build_s, 3)}))
    return 0


def auto_dtype(dev) -> str:
    """--dtype auto: bfloat16 on a GPU that has it (compute capability 8.0 or newer), float16 on an older one
    (T4, V100), float32 on the CPU."""
    import torch

    if dev.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.get_device_capability(dev) >= (8, 0) else "float16"


def _load_lm(path: str, device: str = "auto", dtype: str = "auto"):
    """A causal LM and tokenizer from a directory, a .gguf file, or a hub name already in the local cache, placed
    on ``device`` in ``dtype`` ("auto": see :func:`auto_dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .rerank.prompts import check_device_dtype

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        dev, _ = check_device_dtype(device, None)
        _, dt = check_device_dtype(None, auto_dtype(dev) if dtype == "auto" else dtype)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"irforge: {e}") from None
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    return model.to(device=dev, dtype=dt).eval(), tok


def _rerank_run(args, ds, qids, texts, run):
    """Rerank each query's first-stage top --rerank-depth; reports nDCG@10 before and after."""
    from .rerank import BlockRankReranker, ICRReranker

    if not args.model:
        raise SystemExit("irforge: --reranker needs --model (a model directory or a .gguf file)")
    model, tok = _load_lm(args.model, args.device, args.dtype)
    if args.reranker == "icr":
        reranker = ICRReranker(model, tok, max_doc_tokens=args.max_doc_tokens, progress=sys.stderr.isatty())
    else:
        try:
            reranker = BlockRankReranker(model, tok, max_doc_tokens=args.max_doc_tokens, query_offset=args.query_offset,
                                         layer=args.layer, progress=sys.stderr.isatty())
        except ValueError as e:
            raise SystemExit(f"irforge: {e}") from None
    doc_text = {d["id"]: (d["title"] + " " + d["text"]).strip() for d in ds.corpus}
    before = evaluate(run, ds.qrels, ["ndcg@10"])["ndcg@10"]
    t0 = time.perf_counter()
    reranked, n_trunc = {}, 0
    tops = [[d for d, _ in sorted(run[q].items(), key=lambda x: (-x[1], x[0]))[: args.rerank_depth]] for q in qids]
    with warnings.catch_warnings():  # truncation is reported once, in the JSON ("documents_truncated"); other
        # warnings (positions past the model's range, sliding windows) still reach stderr
        warnings.filterwarnings("ignore", message=r".* documents cut to \d+ tokens", category=UserWarning)
        results = reranker.rerank_batch(texts, [[doc_text[d] for d in ids] for ids in tops])
    for q, ids, res in zip(qids, tops, results):
        n_trunc += len(res.truncated)
        # reranked documents first (scores above every first-stage score), the rest in first-stage order
        new = {ids[i]: float(len(ids) - r) + 1e6 for r, i in enumerate(res.indices)}
        new.update({d: s for d, s in run[q].items() if d not in new})
        reranked[q] = new
    seconds = (time.perf_counter() - t0) / max(1, len(qids))
    after = evaluate(reranked, ds.qrels, ["ndcg@10"])["ndcg@10"]
    param = next(model.parameters())
    return {"reranker": args.reranker, "model": args.model, "device": str(param.device),
            "dtype": str(param.dtype).removeprefix("torch."), "rerank_depth": args.rerank_depth,
            "ndcg@10_before_rerank": round(before, 4), "ndcg@10_after_rerank": round(after, 4),
            "rerank_s_per_query": round(seconds, 3), "documents_truncated": n_trunc,
            "max_doc_tokens": args.max_doc_tokens,
            **({"query_offset": reranker.query_offset, "layer": reranker.layer} if args.reranker == "blockrank" else {})
            }, reranked


def cmd_eval(args) -> int:
    if args.retriever not in ("bm25", "ngram"):
        raise SystemExit(f"irforge: retriever {args.retriever!r} is not available; choose bm25 or ngram")
    ds = _load_dataset(args.data)
    if args.retriever == "ngram":
        return _eval_ngram(args, ds)
    if args.index:
        t0 = time.perf_counter()
        index = BM25Index.load(args.index)
        build_s = time.perf_counter() - t0
    else:
        index, build_s = _build(ds.corpus, args)
    qids = list(ds.test_queries)[: args.max_queries]
    texts = [ds.queries[q] for q in qids]
    if args.max_queries:  # evaluate on the subset only
        ds.qrels = {q: ds.qrels[q] for q in qids}
    t0 = time.perf_counter()
    if args.phrases:  # quoted phrases constrain the BM25 ranking (queries without quotes are plain BM25)
        from .seal import NGramIndex, PhraseSearcher

        searcher = PhraseSearcher(index, NGramIndex.build(ds.corpus))
        t0 = time.perf_counter()
        run = {q: searcher.search(t, k=args.k).to_dict() for q, t in zip(qids, texts)}
        n_quoted = sum('"' in t for t in texts)
    else:
        batch = index.search_batch(texts, k=args.k, algorithm=args.algorithm, threads=args.search_threads)
        run = batch.to_run(qids)
    search_s = time.perf_counter() - t0
    rerank_info = {}
    if args.reranker:
        rerank_info, run = _rerank_run(args, ds, qids, texts, run)
    if args.remove_query:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    if args.run:
        write_trec_run(run, args.run)
    metrics = ["ndcg@10", "recall@100", "recall@1000", "mrr@10", "map"]
    out = {"dataset": ds.name, "retriever": "bm25", **{m: round(v, 4) for m, v in evaluate(run, ds.qrels, metrics).items()},
           "queries": len(qids), "k": args.k, "ms_per_query": round(search_s / max(1, len(qids)) * 1e3, 4),
           "search_threads": args.search_threads, "build_s": round(build_s, 3), "algorithm": args.algorithm,
           **index.params}
    if rerank_info:
        out.update(rerank_info)
    if args.phrases:
        out["phrases"] = True
        out["queries_with_quoted_phrases"] = n_quoted
    print(json.dumps(out))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="irforge", description="irforge: fast retrieval engines")
    parser.add_argument("--version", action="version", version=f"irforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="index a real corpus, answer its queries, print quality and speed")
    p.add_argument("--data", help="a BEIR dataset directory (default: SciFact from IRFORGE_DATA or ../shared/data)")
    p.add_argument("--offline", action="store_true", help="never try to download")
    _scoring_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("index", help="build an index and save it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a BEIR dataset directory or name")
    src.add_argument("--corpus", help="a JSONL corpus (records with _id/id, title, text)")
    p.add_argument("--output", "-o", required=True, help="index file to write")
    _scoring_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a saved index")
    p.add_argument("--index", required=True)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="one query; prints rank, id, score")
    q.add_argument("--queries", help="a JSONL file of queries (_id, text); prints or writes a TREC run")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--algorithm", choices=ALGORITHMS, default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", "-o", help="TREC run file to write")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="evaluate a retriever on a BEIR dataset; prints one JSON object")
    p.add_argument("--data", required=True, help="a BEIR dataset directory or name")
    p.add_argument("--retriever", default="bm25", choices=["bm25", "ngram"],
                   help="bm25, or ngram: SEAL n-gram scoring on the FM-index, model-free (the query's own n-grams) "
                        "or, with --model, n-grams generated by that LM under FM-index constraints")
    p.add_argument("--phrases", action="store_true", help="with bm25: \"quoted phrases\" in queries must occur exactly")
    p.add_argument("--reranker", choices=["icr", "blockrank"],
                   help="rerank the first stage with an LLM (needs torch, transformers)")
    p.add_argument("--model", help="the reranker's causal LM (or, with --retriever ngram, SEAL's): a model "
                                   "directory or a .gguf file")
    p.add_argument("--device", default="auto", help="where --model runs: auto (a GPU when torch sees one), cpu, "
                                                   "cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="--model's weights: auto (bfloat16 on a GPU, float16 on one "
                                                  "older than compute capability 8.0, float32 on the CPU), "
                                                  "float32, bfloat16 or float16")
    p.add_argument("--rerank-depth", type=int, default=20, help="first-stage hits to rerank (default 20)")
    p.add_argument("--max-doc-tokens", type=int, default=300, help="token budget per document in the prompt")
    p.add_argument("--query-offset", type=int, default=8192,
                   help="BlockRank: position id of the query segment (default 8192; keep it within the model's "
                        "positions, e.g. 4096 for an 8k-position model)")
    p.add_argument("--layer", type=int, default=None,
                   help="BlockRank: the scoring layer (default: the layer at 5/8 of the depth)")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate the first N judged queries only")
    p.add_argument("--index", help="use this saved index instead of building one")
    p.add_argument("--k", type=int, default=1000, help="hits per query (default 1000)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="auto")
    p.add_argument("--search-threads", type=int, default=1, help="threads for the queries (default 1)")
    p.add_argument("--remove-query", action="store_true", help="drop hits whose id equals the query id (Pyserini's --remove-query)")
    p.add_argument("--run", help="also write the TREC run here")
    _scoring_args(p)
    p.set_defaults(func=cmd_eval)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"irforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
