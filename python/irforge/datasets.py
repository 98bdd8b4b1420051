"""Datasets: BEIR directories, JSONL corpora, and a corpus built from the Python standard library.

Data are found through the ``IRFORGE_DATA`` environment variable, else ``../shared/data`` when that
directory exists. Nothing here downloads unless asked to (:func:`download_beir`).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .metrics import read_qrels

__all__ = ["BeirDataset", "load_beir", "iter_jsonl", "read_queries", "data_root", "find_beir", "download_beir",
           "stdlib_corpus", "BEIR_URL"]

PathLike = Union[str, "os.PathLike[str]"]
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass
class BeirDataset:
    """A test collection: documents, queries and relevance judgements.

    ``corpus`` holds records ``{"id", "title", "text"}``; ``queries`` maps query id to text; ``qrels`` maps
    query id to ``{doc id: relevance}``.
    """

    name: str
    corpus: list[dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def test_queries(self) -> dict[str, str]:
        """The queries that have judgements, in qrels order."""
        return {q: self.queries[q] for q in self.qrels if q in self.queries}


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: PathLike) -> Iterator[dict]:
    """Records of a JSON-lines file (``.gz`` read transparently); a bad line raises ValueError with its number."""
    p = Path(path)
    with _open_text(p) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{p}:{n}: expected a JSON object")
            yield rec


def read_queries(path: PathLike) -> dict[str, str]:
    """Queries of a JSON-lines file (records with ``_id`` or ``id`` and ``text``; ``.gz`` read transparently) as
    ``{query id: text}``. A record without an id, or an id given twice, raises ValueError with its line."""
    queries: dict[str, str] = {}
    for n, rec in enumerate(iter_jsonl(path), 1):
        qid = rec.get("_id", rec.get("id"))
        if qid is None:  # would otherwise become the query "None"
            raise ValueError(f"{path}: query record {n} has no _id")
        if str(qid) in queries:
            raise ValueError(f"{path}: query id {qid!r} appears twice (record {n})")
        queries[str(qid)] = rec.get("text") or ""
    return queries


def _first_existing(d: Path, names: list[str]) -> Optional[Path]:
    for n in names:
        if (d / n).exists():
            return d / n
    return None


def load_beir(path: PathLike, split: str = "test") -> BeirDataset:
    """Load a BEIR dataset directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``; ``.gz`` accepted)."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"no BEIR dataset directory at {d}")
    corpus_path = _first_existing(d, ["corpus.jsonl", "corpus.jsonl.gz"])
    if corpus_path is None:
        raise FileNotFoundError(f"{d} has no corpus.jsonl")
    corpus = []
    for rec in iter_jsonl(corpus_path):
        did = rec.get("_id", rec.get("id"))
        if did is None:
            raise ValueError(f"{corpus_path}: a document has no _id")
        corpus.append({"id": str(did), "title": rec.get("title") or "", "text": rec.get("text") or ""})
    qpath = _first_existing(d, ["queries.jsonl", "queries.jsonl.gz"])
    queries = read_queries(qpath) if qpath is not None else {}
    qrels = {}
    qrels_path = _first_existing(d / "qrels", [f"{split}.tsv", f"{split}.tsv.gz"])
    if qrels_path is not None:
        qrels = read_qrels(qrels_path)
    return BeirDataset(d.name, corpus, queries, qrels)


def data_root() -> Optional[Path]:
    """``$IRFORGE_DATA`` if set, else ``../shared/data`` if it exists, else None."""
    env = os.environ.get("IRFORGE_DATA")
    if env:
        return Path(env)
    default = Path("..") / "shared" / "data"
    return default if default.is_dir() else None


def find_beir(name: str) -> Optional[Path]:
    """The directory of BEIR dataset ``name`` under the data root or the download cache, if present."""
    candidates = []
    root = data_root()
    if root is not None:
        candidates += [root / "beir" / name, root / name]
    candidates.append(_cache_dir() / "beir" / name)
    for c in candidates:
        if (c / "corpus.jsonl").exists() or (c / "corpus.jsonl.gz").exists():
            return c
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("IRFORGE_CACHE", Path.home() / ".cache" / "irforge"))


def download_beir(name: str, timeout: float = 20.0) -> Path:
    """Download BEIR dataset ``name`` from the public BEIR distribution into the cache; OSError if unreachable."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"bad dataset name {name!r}")
    dest = _cache_dir() / "beir"
    dest.mkdir(parents=True, exist_ok=True)
    url = BEIR_URL.format(name=name)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        with urllib.request.urlopen(url, timeout=timeout) as r, open(zpath, "wb") as f:
            shutil.copyfileobj(r, f)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        src = Path(tmp) / name
        if not (src / "corpus.jsonl").exists():
            raise OSError(f"downloaded archive for {name} has no corpus.jsonl")
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(src, target)
    return dest / name


def stdlib_corpus(max_docs: int = 20000) -> BeirDataset:
    """A known-item test collection built on the spot from the docstrings of Python's standard library.

    Each documented module, class or function becomes a document (title: its dotted name; text: its
    docstring). Queries are the first sentence of a docstring with the object's own name removed, and the
    one relevant document is the object it came from. Always available, no network needed.
    """
    import importlib
    import inspect
    import pkgutil
    import sys
    import warnings

    skip = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "venv", "__")
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(skip) and not n.startswith("_")) if hasattr(sys, "stdlib_module_names") \
        else sorted(m.name for m in pkgutil.iter_modules() if not m.name.startswith(skip))
    corpus: list[dict[str, str]] = []
    seen_docs: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in names:
            try:
                mod = importlib.import_module(modname)
            except Exception:  # modules missing on this platform
                continue
            objs = [(modname, mod)]
            for attr, obj in sorted(vars(mod).items()):
                if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                    continue
                if getattr(obj, "__module__", modname) != modname:
                    continue
                objs.append((f"{modname}.{attr}", obj))
                if inspect.isclass(obj):
                    for mname, meth in sorted(vars(obj).items()):
                        if not mname.startswith("_") and inspect.isroutine(meth):
                            objs.append((f"{modname}.{attr}.{mname}", meth))
            for qual, obj in objs:
                doc = inspect.getdoc(obj)
                if not doc or len(doc) < 40 or doc in seen_docs:
                    continue
                seen_docs.add(doc)
                corpus.append({"id": qual, "title": qual.replace(".", " ").replace("_", " "), "text": doc})
                if len(corpus) >= max_docs:
                    break
            if len(corpus) >= max_docs:
                break
    queries, qrels = {}, {}
    for rec in corpus[::7]:  # every seventh object becomes a query
        first = rec["text"].split("\n\n")[0].split(". ")[0]
        words = [w for w in first.split() if w.lower().strip("().,:'\"`") not in rec["id"].lower().split(".")]
        if len(words) < 4:
            continue
        qid = f"q{len(queries)}"
        queries[qid] = " ".join(words)
        qrels[qid] = {rec["id"]: 1}
    return BeirDataset("python-stdlib-docstrings", corpus, queries, qrels)
