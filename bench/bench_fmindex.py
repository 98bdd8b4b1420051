"""FM-index engines compared in one run: irforge.FMIndex, fm-index (PyPI, Rust), infini-gram (suffix array),
and pydivsufsort for suffix-array construction alone.

Usage:
    python bench/bench_fmindex.py [--docs N] [--write bench/RESULTS.md]

Corpus: ../shared/data/wiki100k (99,703 Wikipedia passages, title + text) tokenised with a byte-level BPE of
50,000 tokens trained on that corpus with the `tokenizers` package (trained once, cached with the token ids
under $IRFORGE_CACHE, default ~/.cache/irforge). Each engine runs in its own subprocess (peak RSS is its own).

irforge runs three times: with the query kernels its CPU check picks (AVX-512 VPOPCNTDQ here), with the AVX2 ones
(x86-64 CPUs without AVX-512) and with the portable ones ("irforge-portable": other architectures).
Patterns: n-grams of length 1..8 cut at random positions of random documents (fixed seed), so every pattern
occurs at least once. Figures:
  build         wall time, and peak RSS above the RSS before building (peak reset through /proc/self/clear_refs);
                bytes per token of the saved index
  count         µs per pattern by length, one call each, and batched (irforge count_batch, 1 thread)
  locate/docid  µs per occurrence to turn suffix-array rows into document ids, on patterns with 20-2,000 hits
  next tokens   µs per next-token distribution by prefix length 1..4, mean (and median): irforge next_tokens
                (exact); infini-gram ntd with its default support cap of 1,000 occurrences (approximate for
                frequent prefixes; uncapped, it terminated on this corpus); fm-index has no such operation
  extract       µs per document (irforge only: the peers keep the text besides the index)
Peers' inputs: fm-index indexes strings, so token ids become characters chr(256 + id); infini-gram gets our
token ids in its own on-disk format (u16, 0xFFFF document separators) and builds its suffix array with its
Rust indexer.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ENGINES = ["irforge", "irforge-avx2", "irforge-portable", "fm-index", "infini-gram", "pydivsufsort"]
VOCAB = 50_000


def data_root() -> Path:
    env = os.environ.get("IRFORGE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "wiki100k" / "corpus.jsonl.gz").exists():
        raise SystemExit(f"no wiki100k under {root}; set IRFORGE_DATA")
    return root


def cache_dir() -> Path:
    d = Path(os.environ.get("IRFORGE_CACHE", Path.home() / ".cache" / "irforge")) / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def corpus_tokens(max_docs: int):
    """(flat uint16 token ids, offsets) for the first max_docs passages, BPE-tokenised (cached)."""
    import numpy as np

    path = cache_dir() / f"wiki100k_bpe{VOCAB}_{max_docs}.npz"
    if path.exists():
        z = np.load(path)
        return z["tokens"], z["offsets"]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from irforge.datasets import iter_jsonl

    texts = [f"{r.get('title') or ''} {r.get('text') or ''}" for r in iter_jsonl(data_root() / "wiki100k" / "corpus.jsonl.gz")][:max_docs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    enc = tok.encode_batch(texts)
    lens = np.array([len(e.ids) for e in enc], dtype=np.int64)
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    tokens = np.fromiter((i for e in enc for i in e.ids), dtype=np.uint16, count=int(offsets[-1]))
    np.savez(path, tokens=tokens, offsets=offsets)
    return tokens, offsets


def patterns(tokens, offsets, n_per_len: int, seed: int = 7):
    rnd = random.Random(seed)
    out = {m: [] for m in range(1, 9)}
    n_docs = len(offsets) - 1
    while any(len(v) < n_per_len for v in out.values()):
        d = rnd.randrange(n_docs)
        a, b = int(offsets[d]), int(offsets[d + 1])
        for m in range(1, 9):
            if b - a >= m and len(out[m]) < n_per_len:
                i = rnd.randrange(a, b - m + 1)
                out[m].append(tokens[i:i + m].astype("int64").tolist())
    return out


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    """Current RSS; also resets the peak (VmHWM) so that peak_rss_mb() covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak RSS since the last rss_mb() call (Linux clear_refs), else since the process started."""
    return _status_mb("VmHWM")


def timed(f, items, reps=1):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for x in items:
            f(x)
        best = min(best, time.perf_counter() - t)
    return best / len(items) * 1e6


def median_us(f, items):
    """Median over items of one call each (the mean is dominated by the few prefixes with thousands of
    continuations)."""
    ts = []
    for x in items:
        t = time.perf_counter()
        f(x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def worker(engine: str, max_docs: int, out: str, next_cache: Optional[int] = None) -> None:
    import numpy as np

    tokens, offsets = corpus_tokens(max_docs)
    pats = patterns(tokens, offsets, 300)
    n_tok = int(offsets[-1])
    res = {"engine": engine, "tokens": n_tok, "docs": len(offsets) - 1}
    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        if engine in ("irforge", "irforge-avx2", "irforge-portable"):
            import irforge

            # the query kernels the CPU check picks, the AVX2 ones, and the portable ones (no x86 vector code)
            res["kernels"] = irforge._core.fm_set_isa({"irforge": "auto", "irforge-avx2": "avx2"}.get(engine, "scalar"))

            docs = [tokens[offsets[d]:offsets[d + 1]] for d in range(len(offsets) - 1)]
            t = time.perf_counter()
            fm = irforge.FMIndex.build(docs, next_cache=next_cache)
            res["build_s"] = time.perf_counter() - t
            res["build_rss_mb"] = peak_rss_mb() - before
            fm.save(Path(tmp) / "fm.irx")
            res["bytes_per_token"] = (Path(tmp) / "fm.irx").stat().st_size / n_tok
            res["version"] = irforge.__version__
            for m, ps in pats.items():
                res[f"count_us_{m}"] = timed(fm.count, ps, reps=3)
                res[f"count_batch_us_{m}"] = min(_batch(fm, ps) for _ in range(3))
            many = [p for p in pats[1] + pats[2] if 20 <= fm.count(p) <= 2000][:60]
            occ = sum(fm.count(p) for p in many)
            t = time.perf_counter()
            for p in many:
                fm.doc_frequencies(p)
            res["docid_us_per_occ"] = (time.perf_counter() - t) / occ * 1e6
            for m in range(1, 5):
                res[f"next_us_{m}"] = timed(fm.next_tokens, pats[m][:200], reps=2)
                res[f"next_med_us_{m}"] = median_us(fm.next_tokens, pats[m][:200])
            res["extract_us"] = timed(fm.extract, list(range(0, len(offsets) - 1, max(1, (len(offsets) - 1) // 300))))
        elif engine == "fm-index":
            from importlib.metadata import version

            import fm_index

            strs = ["".join(chr(256 + int(t)) for t in tokens[offsets[d]:offsets[d + 1]]) for d in range(len(offsets) - 1)]
            spats = {m: ["".join(chr(256 + t) for t in p) for p in ps] for m, ps in pats.items()}
            before = rss_mb()
            t = time.perf_counter()
            fm = fm_index.MultiFMIndex(strs)
            res["build_s"] = time.perf_counter() - t
            res["build_rss_mb"] = peak_rss_mb() - before
            import pickle

            res["bytes_per_token"] = len(pickle.dumps(fm)) / n_tok
            res["version"] = version("fm-index")
            for m, ps in spats.items():
                res[f"count_us_{m}"] = timed(fm.count_all, ps, reps=3)
            many = [p for p in spats[1] + spats[2] if 20 <= fm.count_all(p) <= 2000][:60]
            occ = sum(fm.count_all(p) for p in many)
            t = time.perf_counter()
            for p in many:
                fm.count(p)  # {doc: count}
            res["docid_us_per_occ"] = (time.perf_counter() - t) / occ * 1e6
        elif engine == "infini-gram":
            from importlib.metadata import version

            from infini_gram.engine import InfiniGramEngine

            save = Path(tmp) / "index"
            save.mkdir()
            sep = b"\xff\xff"
            with open(save / "tokenized.0", "wb") as f, open(save / "offset.0", "wb") as g:
                pos = 0
                for d in range(len(offsets) - 1):
                    body = sep + tokens[offsets[d]:offsets[d + 1]].astype("<u2").tobytes()
                    g.write(np.array([pos], dtype=np.uint64).tobytes())
                    f.write(body)
                    pos += len(body)
            data = Path(tmp) / "raw"
            data.mkdir()
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(data), "--save_dir", str(save),
                                "--token_dtype", "u16", "--cpus", "2", "--mem", "8",
                                "--ulimit", str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])], capture_output=True, text=True)
            res["build_s"] = time.perf_counter() - t
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-500:])
            res["build_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            size = sum(f.stat().st_size for f in save.iterdir() if f.name.startswith(("table", "tokenized", "offset")))
            res["bytes_per_token"] = size / n_tok
            res["version"] = version("infini-gram")
            eng = InfiniGramEngine(index_dir=str(save), eos_token_id=0, vocab_size=65535, token_dtype="u16")
            for m, ps in pats.items():
                res[f"count_us_{m}"] = timed(lambda q: eng.count(input_ids=q), ps, reps=3)
            for m in range(1, 5):
                # its default: at most 1,000 sampled occurrences (approximate); an exact enumeration
                # (max_support unbounded) terminates the engine on frequent prefixes of this corpus
                res[f"next_us_{m}"] = timed(lambda q: eng.ntd(prompt_ids=q), pats[m][:200], reps=1)
                res[f"next_med_us_{m}"] = median_us(lambda q: eng.ntd(prompt_ids=q), pats[m][:200])
            many = [p for p in pats[1] + pats[2] if 20 <= eng.count(input_ids=p)["count"] <= 2000][:60]
            occ = 0
            t = time.perf_counter()
            for q in many:
                f = eng.find(input_ids=q)
                s = f["segment_by_shard"][0]
                ranks = list(range(s[0], s[1]))
                occ += len(ranks)
                for c in range(0, len(ranks), 64):  # the engine starts a thread per request: keep batches small
                    eng.get_docs_by_ranks_2([(0, r, len(q), 0) for r in ranks[c:c + 64]])
            res["docid_us_per_occ"] = (time.perf_counter() - t) / max(occ, 1) * 1e6
        elif engine == "pydivsufsort":
            from importlib.metadata import version

            import pydivsufsort

            arr = np.empty(n_tok + len(offsets) - 1, dtype=np.uint16)
            pos = 0
            for d in range(len(offsets) - 1):
                seg = tokens[offsets[d]:offsets[d + 1]]
                arr[pos:pos + len(seg)] = seg
                arr[pos + len(seg)] = 65535
                pos += len(seg) + 1
            before = rss_mb()
            t = time.perf_counter()
            pydivsufsort.divsufsort(arr)
            res["build_s"] = time.perf_counter() - t
            res["build_rss_mb"] = peak_rss_mb() - before
            res["version"] = version("pydivsufsort")
    Path(out).write_text(json.dumps(res))


def _batch(fm, ps):
    t = time.perf_counter()
    fm.count_batch(ps, threads=1)
    return (time.perf_counter() - t) / len(ps) * 1e6


def report(results, command):
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_bm25 import machine

    meta = machine()
    lines = ["## FM-index (bench/bench_fmindex.py)", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['mem_gib']} GiB; Python {meta['python']}. "
             f"Date: {meta['date']}; irforge git {meta['git']}. Command: `{command}`.", ""]
    r0 = next(r for r in results if "tokens" in r)
    lines += [f"Corpus: wiki100k, {r0['docs']:,} passages, {r0['tokens']:,} BPE tokens (vocabulary {VOCAB:,}).", "",
              "| engine | version | build s | Mtokens/s | build peak RSS MB | bytes/token | count µs 1/2/4/8 tokens | "
              "count µs/token batched (8-grams) | docid µs/occurrence | next-token µs, prefix 1/2/3/4 | extract µs/doc |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['engine']} | failed: {r['error'][:100]} |" + " |" * 9)
            continue
        f = lambda k, nd=2: (f"{r[k]:.{nd}f}" if k in r else "-")
        counts = "/".join(f(f"count_us_{m}") for m in (1, 2, 4, 8)) if "count_us_1" in r else "-"
        nxt = "/".join(f(f"next_us_{m}", 1) for m in (1, 2, 3, 4)) if "next_us_1" in r else "-"
        if "next_med_us_1" in r:
            nxt += " (median " + "/".join(f(f"next_med_us_{m}", 1) for m in (1, 2, 3, 4)) + ")"
        per_tok = f"{r['count_batch_us_8'] / 8:.3f}" if "count_batch_us_8" in r else "-"
        name = f"{r['engine']} ({r['kernels']} kernels)" if "kernels" in r else r["engine"]
        lines.append(f"| {name} | {r.get('version', '-')} | {f('build_s')} | {r['tokens'] / r['build_s'] / 1e6:.2f} | "
                     f"{f('build_rss_mb', 0)} | {f('bytes_per_token', 4)} | {counts} | {per_tok} | {f('docid_us_per_occ')} | {nxt} | {f('extract_us', 1)} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10**9, help="use the first N passages (default all)")
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--next-cache", type=int, help="irforge's next-token cache in bytes (default: 2.5%% of the index)")
    ap.add_argument("--write")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.docs, args.worker[1], args.next_cache)
        return
    corpus_tokens(args.docs)  # train/cache once, outside the timed subprocesses
    results = []
    for e in args.engines:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            print(f"{e} ...", file=sys.stderr, flush=True)
            cache = [] if args.next_cache is None else ["--next-cache", str(args.next_cache)]
            p = subprocess.run([sys.executable, __file__, "--docs", str(args.docs), *cache, "--worker", e, f.name],
                               capture_output=True, text=True)
            if p.returncode != 0:
                err = (p.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"  failed: {err}", file=sys.stderr)
                results.append({"engine": e, "error": err})
                continue
            r = json.loads(Path(f.name).read_text())
            print("  " + json.dumps(r), file=sys.stderr)
            results.append(r)
    text = report(results, "python bench/bench_fmindex.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_bm25 import write_section

        write_section(Path(args.write), text, marker="## FM-index")


if __name__ == "__main__":
    main()
