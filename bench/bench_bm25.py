"""BM25 engines compared in one run: irforge, PISA (pyterrier-pisa), tantivy, bm25s (numba), rank_bm25.

Usage:
    python bench/bench_bm25.py                       # both corpora, all engines, prints a markdown report
    python bench/bench_bm25.py --corpora scifact --engines irforge tantivy
    python bench/bench_bm25.py --write bench/RESULTS.md   # replace the BM25 section of RESULTS.md

Corpora (found under $IRFORGE_DATA, default ../shared/data):
  scifact   BEIR SciFact: 5,183 abstracts, the 300 judged test queries (nDCG@10 reported).
  wiki100k  99,703 Wikipedia passages. Queries: the distinct passage titles, 1,000 of them drawn with a fixed
            seed (no judgements, so no nDCG). Documents are indexed as title + text for every engine.

Each engine runs in its own subprocess so that its peak RSS is its own. Measured per engine:
  build_s        wall time to build (and, for engines that write to disk, persist) the index, 2 threads where
                 the engine takes a thread count
  build_rss_mb   peak RSS of the subprocess minus its RSS before building (the corpus is already in memory)
  index_mb       bytes on disk of the saved index
  p50/p99 ms     one query at a time from Python, after 50 warm-up queries, top-10 and top-1000, including
                 query parsing/analysis and returning document ids where the engine's API does
  qps_1t/qps_2t  batch throughput for top-10 with 1 and 2 threads (engines without a batch API: a Python loop,
                 and a 2-thread pool for tantivy, whose search releases the GIL)
Engine settings: irforge Lucene English analyzer, lucene BM25 k1=0.9 b=0.4, block-max WAND; PISA its defaults
(porter2, Terrier stopwords, block_simdbp, block-max WAND) with k1=0.9 b=0.4; tantivy en_stem tokenizer,
frequencies only (no positions), its fixed BM25 (k1=1.2, b=0.75), results as DocAddress without fetching a
stored id (which favours tantivy); bm25s method=lucene k1=0.9 b=0.4, numba backend, PyStemmer English and its
English stopwords; rank_bm25 BM25Okapi on the bm25s tokens (SciFact only: it scores every document).
Pyserini is not run: it needs Java 21, which this machine's package registry does not offer.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ["irforge", "pisa", "tantivy", "bm25s", "rank_bm25"]
CORPORA = ["scifact", "wiki100k"]
WARMUP = 50


def data_root() -> Path:
    env = os.environ.get("IRFORGE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        raise SystemExit(f"no data directory at {root}; set IRFORGE_DATA")
    return root


def load_corpus(name: str, n_queries: int):
    """Returns (docs [{id, title, text}], queries [(qid, text)], qrels or None)."""
    from irforge.datasets import iter_jsonl, load_beir

    root = data_root()
    if name == "scifact":
        ds = load_beir(root / "beir" / "scifact")
        return ds.corpus, list(ds.test_queries.items()), ds.qrels
    if name == "wiki100k":
        docs = [{"id": str(r["_id"]), "title": r.get("title") or "", "text": r.get("text") or ""}
                for r in iter_jsonl(root / "wiki100k" / "corpus.jsonl.gz")]
        titles = sorted({d["title"] for d in docs if d["title"].strip()})
        rnd = random.Random(12345)
        picked = rnd.sample(titles, min(n_queries, len(titles)))
        return docs, [(f"t{i}", t) for i, t in enumerate(picked)], None
    raise SystemExit(f"unknown corpus {name}")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ---- engines: each returns build(), search(q, k) -> list of ids, batch(qs, k, threads) --------------------
class IrforgeEngine:
    name = "irforge"

    def build(self, docs, workdir):
        import irforge

        self.index = irforge.BM25Index.build(docs, threads=2)
        path = workdir / "index.irf"
        self.index.save(path)
        return path

    def version(self):
        import irforge

        return irforge.__version__

    def search(self, q, k):
        return self.index.search(q, k=k).ids

    def batch(self, qs, k, threads):
        return self.index.search_batch(qs, k=k, threads=threads)

    def run(self, qs, k):
        b = self.index.search_batch([q for _, q in qs], k=k, threads=2)
        return b.to_run([qid for qid, _ in qs])


class PisaEngine:
    name = "pisa"

    def build(self, docs, workdir):
        import pyterrier_pisa

        path = workdir / "pisa"
        idx = pyterrier_pisa.PisaIndex(str(path), threads=2)
        idx.index({"docno": d["id"], "text": f"{d['title']} {d['text']}"} for d in docs)
        self.retr = {k: idx.bm25(k1=0.9, b=0.4, num_results=k, threads=1) for k in (10, 1000)}
        return path

    def version(self):
        from importlib.metadata import version

        return version("pyterrier-pisa")

    def _retrieve(self, qs, k, threads):
        import numpy as np
        from pyterrier_pisa import _pisathon

        r = self.retr[k]
        n = len(qs) * k
        out = dict(result_qidxs=np.empty(n, np.int32), result_docnos=np.empty(n, object),
                   result_ranks=np.empty(n, np.int32), result_scores=np.empty(n, np.float32))
        size = _pisathon.retrieve(r._ctxt, r.query_algorithm.value, list(enumerate(qs)), k=k, threads=threads,
                                  query_weighted=0, pretokenised=False, **out)
        return out, size

    def search(self, q, k):
        out, size = self._retrieve([q], k, 1)
        return out["result_docnos"][:size]

    def batch(self, qs, k, threads):
        return self._retrieve(qs, k, threads)

    def run(self, qs, k):
        out, size = self._retrieve([q for _, q in qs], k, 2)
        run = {qid: {} for qid, _ in qs}
        for i in range(size):
            run[qs[out["result_qidxs"][i]][0]][str(out["result_docnos"][i])] = float(out["result_scores"][i])
        return run


class TantivyEngine:
    name = "tantivy"

    def build(self, docs, workdir):
        import tantivy

        sb = tantivy.SchemaBuilder()
        sb.add_text_field("body", stored=False, tokenizer_name="en_stem", index_option="freq")
        sb.add_text_field("id", stored=True, tokenizer_name="raw")
        schema = sb.build()
        path = workdir / "tantivy"
        path.mkdir()
        self.index = tantivy.Index(schema, path=str(path))
        writer = self.index.writer(heap_size=512 * 2**20, num_threads=2)
        for d in docs:
            writer.add_document(tantivy.Document(body=f"{d['title']} {d['text']}", id=d["id"]))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()
        return path

    def version(self):
        from importlib.metadata import version

        return version("tantivy")

    def _query(self, q):
        return self.index.parse_query_lenient(q, ["body"])[0]

    def search(self, q, k):
        return self.searcher.search(self._query(q), limit=k).hits  # (score, DocAddress); ids not fetched

    def batch(self, qs, k, threads):
        if threads == 1:
            return [self.search(q, k) for q in qs]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            return list(ex.map(lambda q: self.search(q, k), qs, chunksize=64))

    def run(self, qs, k):
        run = {}
        for qid, q in qs:
            hits = self.searcher.search(self._query(q), limit=k).hits
            run[qid] = {self.searcher.doc(a)["id"][0]: s for s, a in hits}
        return run


class Bm25sEngine:
    name = "bm25s"

    def _tok(self, texts):
        import bm25s

        toks = bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False)
        # bm25s rejects a query without tokens; an unknown token gives the same empty result
        return [t if t else ["\u2400"] for t in toks]

    def build(self, docs, workdir):
        import bm25s
        import Stemmer

        self.stemmer = Stemmer.Stemmer("english")
        self.ids = [d["id"] for d in docs]
        self.model = bm25s.BM25(method="lucene", k1=0.9, b=0.4, backend="numba")
        corpus_tokens = bm25s.tokenize([f"{d['title']} {d['text']}" for d in docs], stopwords="en",
                                       stemmer=self.stemmer, show_progress=False)
        self.model.index(corpus_tokens, show_progress=False)
        path = workdir / "bm25s"
        self.model.save(str(path))
        return path

    def version(self):
        import bm25s

        return bm25s.__version__

    def search(self, q, k):
        docs, _ = self.model.retrieve(self._tok([q]), k=k, show_progress=False, n_threads=1)
        return docs[0]

    def batch(self, qs, k, threads):
        return self.model.retrieve(self._tok(qs), k=k, show_progress=False, n_threads=threads)

    def run(self, qs, k):
        docs, scores = self.model.retrieve(self._tok([q for _, q in qs]), k=k, show_progress=False, n_threads=2)
        return {qid: {self.ids[d]: float(s) for d, s in zip(docs[i], scores[i])} for i, (qid, _) in enumerate(qs)}


class RankBm25Engine:
    name = "rank_bm25"

    def build(self, docs, workdir):
        import bm25s
        import Stemmer
        from rank_bm25 import BM25Okapi

        self.stemmer = Stemmer.Stemmer("english")
        self.bm25s = bm25s
        self.ids = [d["id"] for d in docs]
        toks = bm25s.tokenize([f"{d['title']} {d['text']}" for d in docs], stopwords="en", stemmer=self.stemmer,
                              show_progress=False, return_ids=False)
        self.model = BM25Okapi(toks, k1=0.9, b=0.4)
        return None

    def version(self):
        from importlib.metadata import version

        return version("rank-bm25")

    def _scores(self, q):
        toks = self.bm25s.tokenize([q], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False)[0]
        return self.model.get_scores(toks)

    def search(self, q, k):
        import numpy as np

        s = self._scores(q)
        top = np.argpartition(-s, min(k, len(s) - 1))[:k]
        return top[np.argsort(-s[top])]

    def batch(self, qs, k, threads):
        return [self.search(q, k) for q in qs]

    def run(self, qs, k):
        import numpy as np

        run = {}
        for qid, q in qs:
            s = self._scores(q)
            top = np.argsort(-s)[:k]
            run[qid] = {self.ids[i]: float(s[i]) for i in top}
        return run


ENGINE_CLASSES = {e.name: e for e in (IrforgeEngine, PisaEngine, TantivyEngine, Bm25sEngine, RankBm25Engine)}


def worker(engine_name: str, corpus: str, n_queries: int, out_path: str) -> None:
    docs, queries, qrels = load_corpus(corpus, n_queries)
    texts = [q for _, q in queries]
    eng = ENGINE_CLASSES[engine_name]()
    res = {"engine": engine_name, "version": eng.version(), "corpus": corpus, "docs": len(docs), "queries": len(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        path = eng.build(docs, Path(tmp))
        res["build_s"] = time.perf_counter() - t0
        res["build_rss_mb"] = peak_rss_mb() - before
        res["index_mb"] = dir_mb(path) if path is not None else None
        for q in texts[:WARMUP]:
            eng.search(q, 10)
        for k in (10, 1000):
            lat = []
            for q in texts:
                s = time.perf_counter()
                eng.search(q, k)
                lat.append((time.perf_counter() - s) * 1e3)
            res[f"p50_ms_top{k}"] = statistics.median(lat)
            res[f"p99_ms_top{k}"] = sorted(lat)[min(len(lat) - 1, int(0.99 * len(lat)))]
        for threads in (1, 2):
            reps = max(1, 2000 // len(texts))
            t0 = time.perf_counter()
            for _ in range(reps):
                eng.batch(texts, 10, threads)
            res[f"qps_{threads}t"] = reps * len(texts) / (time.perf_counter() - t0)
        if qrels is not None:
            from irforge.metrics import evaluate

            res["ndcg@10"] = evaluate(eng.run(queries, 1000), qrels, ["ndcg@10"])["ndcg@10"]
    Path(out_path).write_text(json.dumps(res))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    # IRFORGE_GIT first: a copy of the tree on a GPU machine may carry a stale .git (bench/gpu_prepare.py)
    sha = os.environ.get("IRFORGE_GIT", "")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            pass
    sha = sha or "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem, 1), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "git": sha,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if v < 100 else f"{v:,.0f}"
    return str(v)


def report(results: list[dict], meta: dict, command: str) -> str:
    lines = ["## BM25 engines (bench/bench_bm25.py)", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['mem_gib']} GiB; {meta['os']}; Python {meta['python']}.",
             f"Date: {meta['date']}; irforge git {meta['git']}. Command: `{command}`.", "",
             "Ratios are the peer's figure divided by irforge's (for times and sizes, above 1 means irforge is "
             "smaller/faster; for QPS, below 1 means irforge is faster). All engines measured in the same run.", ""]
    by_corpus: dict[str, list[dict]] = {}
    for r in results:
        by_corpus.setdefault(r["corpus"], []).append(r)
    for corpus, rows in by_corpus.items():
        base = next((r for r in rows if r["engine"] == "irforge"), None)
        lines += [f"### {corpus}: {rows[0]['docs']:,} documents, {rows[0]['queries']:,} queries", "",
                  "| engine | version | build s | build RSS MB | index MB | p50 ms top-10 | p99 ms top-10 | "
                  "p50 ms top-1000 | p99 ms top-1000 | QPS 1 thread | QPS 2 threads | nDCG@10 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['engine']} | failed: {r['error'][:120]} |" + " |" * 10)
                continue
            lines.append("| " + " | ".join([r["engine"], r["version"], fmt(r["build_s"], 2), fmt(r["build_rss_mb"], 0),
                                             fmt(r["index_mb"], 1), fmt(r["p50_ms_top10"]), fmt(r["p99_ms_top10"]),
                                             fmt(r["p50_ms_top1000"]), fmt(r["p99_ms_top1000"]), fmt(r["qps_1t"]),
                                             fmt(r["qps_2t"]), fmt(r.get("ndcg@10"), 4)]) + " |")
        if base is not None and "error" not in base:
            lines += ["", f"Ratios to irforge on {corpus} (peer / irforge):", "",
                      "| engine | build time | index size | p50 top-10 | p50 top-1000 | QPS 1 thread |", "|---|---|---|---|---|---|"]
            for r in rows:
                if r is base or "error" in r:
                    continue
                def ratio(key):
                    return "-" if r.get(key) is None or not base.get(key) else f"{r[key] / base[key]:.2f}"
                lines.append(f"| {r['engine']} | {ratio('build_s')} | {ratio('index_mb')} | {ratio('p50_ms_top10')} | "
                             f"{ratio('p50_ms_top1000')} | {ratio('qps_1t')} |")
        lines.append("")
    return "\n".join(lines)


def write_section(path: Path, section: str, marker: str = "## BM25 engines") -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="+", default=CORPORA, choices=CORPORA)
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--queries", type=int, default=1000, help="wiki100k queries (default 1000)")
    ap.add_argument("--write", help="RESULTS.md to update")
    ap.add_argument("--json", help="also dump raw results here")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.queries, args.worker[2])
        return
    results = []
    for corpus in args.corpora:
        for engine in args.engines:
            if engine == "rank_bm25" and corpus != "scifact":
                continue
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                print(f"[{corpus}] {engine} ...", file=sys.stderr, flush=True)
                p = subprocess.run([sys.executable, __file__, "--queries", str(args.queries), "--worker", engine, corpus,
                                    f.name], capture_output=True, text=True)
                if p.returncode != 0:
                    err = (p.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"  failed: {err}", file=sys.stderr)
                    results.append({"engine": engine, "corpus": corpus, "error": err, "docs": 0, "queries": 0})
                    continue
                r = json.loads(Path(f.name).read_text())
                print(f"  {json.dumps(r)}", file=sys.stderr)
                results.append(r)
    command = "python bench/bench_bm25.py " + " ".join(sys.argv[1:])
    text = report(results, machine(), command.strip())
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    if args.write:
        write_section(Path(args.write), text)


if __name__ == "__main__":
    main()
