"""BM25 inverted index over a C++ core: build, search, batch search, save and load."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from . import _core
from ._io import atomic_save, check_flag, check_threads, existing_file
from .analysis import Analyzer, StopwordsArg, check_max_token_length, resolve_stemmer, resolve_stopwords

__all__ = ["BM25Index", "Hit", "Hits", "BatchHits", "METHODS", "ALGORITHMS"]

#: BM25 variants, named as in Kamphuis et al. (ECIR 2020).
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
#: Query processing algorithms; all return exactly the same top-k. ``auto`` picks per query: exhaustive
#: scoring for short posting lists, MaxScore for long multi-term queries, block-max WAND for one long list.
ALGORITHMS = ("auto", "bmw", "maxscore", "exhaustive")
_DEFAULT_DELTA = {"bm25l": 0.5, "bm25+": 1.0}

PathLike = Union[str, "os.PathLike[str]"]
Query = Union[str, bytes, Sequence[str], Sequence[int], np.ndarray]


class Hit(NamedTuple):
    """One search result."""

    id: str  #: external document id
    score: float
    docno: int  #: internal document number (position in the corpus given to build)


class Hits(Sequence[Hit]):
    """Ranked results of one query: best first, ties broken by lower document number.

    Attributes
    ----------
    ids : numpy.ndarray of object (str), shape (n,)
    scores : numpy.ndarray of float32, shape (n,)
    docnos : numpy.ndarray of int64, shape (n,)
    """

    __slots__ = ("ids", "scores", "docnos")

    def __init__(self, ids: np.ndarray, scores: np.ndarray, docnos: np.ndarray) -> None:
        self.ids = ids
        self.scores = scores
        self.docnos = docnos

    def __len__(self) -> int:
        return len(self.docnos)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Hits(self.ids[i], self.scores[i], self.docnos[i])
        return Hit(str(self.ids[i]), float(self.scores[i]), int(self.docnos[i]))

    def __iter__(self) -> Iterator[Hit]:
        for i in range(len(self.docnos)):
            yield Hit(str(self.ids[i]), float(self.scores[i]), int(self.docnos[i]))

    def to_dict(self) -> dict[str, float]:
        """``{doc id: score}``, the shape of a run for :func:`irforge.metrics.evaluate`."""
        return {str(d): float(s) for d, s in zip(self.ids, self.scores)}

    def __repr__(self) -> str:
        head = ", ".join(f"({h.id!r}, {h.score:.4f})" for h in list(self)[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"Hits([{head}{more}], n={len(self)})"


class BatchHits(NamedTuple):
    """Results of many queries as arrays shaped ``(n_queries, min(k, n_docs))``.

    Rows with fewer hits are padded: ``docnos`` with -1, ``scores`` with ``-inf``, ``ids`` with None.
    ``counts[i]`` is the number of real hits of query ``i``.
    """

    ids: np.ndarray
    scores: np.ndarray
    docnos: np.ndarray
    counts: np.ndarray

    def row(self, i: int) -> Hits:
        n = int(self.counts[i])
        return Hits(self.ids[i, :n], self.scores[i, :n], self.docnos[i, :n])

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """A run ``{query id: {doc id: score}}`` for evaluation or :func:`irforge.metrics.write_trec_run`."""
        if len(query_ids) != len(self.counts):
            raise ValueError(f"got {len(query_ids)} query ids for {len(self.counts)} result rows")
        return {str(q): self.row(i).to_dict() for i, q in enumerate(query_ids)}


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return int(k)


def _allowed_docnos(allowed: Any) -> np.ndarray:
    """Document numbers to restrict a search to, as a sorted array without repeats."""
    arr = np.asarray(allowed)
    if arr.ndim != 1:
        raise ValueError(f"allowed must be a 1-D sequence of document numbers, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"allowed must hold integer document numbers, got dtype {arr.dtype}")
    return np.unique(arr.astype(np.int64, copy=False))


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS and algorithm != "block_max_wand":
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(ALGORITHMS)}")
    return algorithm


def _check_scoring(method: str, k1: float, b: float, delta: Optional[float]) -> float:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    for name, v in (("k1", k1), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not (np.isfinite(k1) and k1 >= 0):
        raise ValueError(f"k1 must be a finite number >= 0, got {k1}")
    if not (0 <= b <= 1):
        raise ValueError(f"b must lie in [0, 1], got {b}")
    d = _DEFAULT_DELTA.get(method, 0.0) if delta is None else float(delta)
    if not (np.isfinite(d) and d >= 0):
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    return d


_ID_KEYS = ("id", "_id", "docid", "doc_id")


def _record_id(rec: Mapping[str, Any], i: int) -> str:
    for key in _ID_KEYS:
        if key in rec:
            v = rec[key]
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise TypeError(f"document {i}: id must be str or int, got {type(v).__name__}")
            return str(v)
    raise ValueError(f"document {i} is a record without an id field (one of {', '.join(_ID_KEYS)})")


def _record_text(rec: Mapping[str, Any], i: int, fields: Sequence[str]) -> str:
    parts = []
    for f in fields:
        v = rec.get(f)
        if v is None:
            continue
        if not isinstance(v, str):
            raise TypeError(f"document {i}: field {f!r} must be str, got {type(v).__name__}")
        if v:
            parts.append(v)
    if not any(f in rec for f in fields):
        raise ValueError(f"document {i} has none of the fields {list(fields)}")
    return " ".join(parts)


def _classify(item: Any) -> str:
    if isinstance(item, (str, bytes)):
        return "text"
    if isinstance(item, Mapping):
        return "record"
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "iu":
            return "ids"
        raise TypeError(f"token id arrays must have an integer dtype, got {item.dtype}")
    if isinstance(item, (list, tuple)):
        if len(item) == 0:
            return "empty"
        if isinstance(item[0], str):
            return "tokens"
        if isinstance(item[0], (int, np.integer)) and not isinstance(item[0], bool):
            return "ids"
    raise TypeError(
        f"documents must be str, bytes, records (mappings with text fields), lists of str tokens or of int "
        f"token ids; got {type(item).__name__}"
    )


def _prepare_corpus(
    corpus: Iterable[Any], ids: Optional[Iterable[Any]], fields: Sequence[str]
) -> tuple[list[Any], Optional[list[str]], str]:
    if isinstance(corpus, (str, bytes, Mapping)):
        raise TypeError("corpus must be an iterable of documents, not a single document")
    docs = list(corpus)
    if not docs:
        raise ValueError("cannot build an index over an empty corpus")
    kinds = {_classify(d) for d in docs[:1]}
    kind = next(iter(kinds))
    if kind == "empty":  # find the first non-empty list to know whether it holds tokens or ids
        kind = next((k for k in map(_classify, docs) if k != "empty"), "tokens")
    id_list = None
    if kind == "record":
        texts = []
        id_list = []
        for i, rec in enumerate(docs):
            if not isinstance(rec, Mapping):
                raise TypeError(f"document {i} is a {type(rec).__name__}, but document 0 is a record")
            id_list.append(_record_id(rec, i))
            texts.append(_record_text(rec, i, fields))
        docs = texts
        kind = "text"
        if ids is not None:
            raise ValueError("records carry their own ids; do not pass ids as well")
    elif ids is not None:
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be an iterable of ids, not a single string")
        id_list = []
        for i, v in enumerate(ids):
            if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"id {i} must be str or int, got {type(v).__name__}")
            id_list.append(str(v))
        if len(id_list) != len(docs):
            raise ValueError(f"got {len(id_list)} ids for {len(docs)} documents")
    if kind == "text":
        for i, d in enumerate(docs):
            if not isinstance(d, (str, bytes)):
                raise TypeError(f"document {i} must be str or bytes like document 0, got {type(d).__name__}")
    return docs, id_list, kind


class BM25Index:
    """A BM25 inverted index with Lucene-grade effectiveness and a C++ core.

    Build one with :meth:`build` or open a saved one with :meth:`load`; never call the constructor.

    Examples
    --------
    >>> index = BM25Index.build(["a cat sat", "dogs chase cats", "a dog"], ids=["d1", "d2", "d3"])
    >>> [h.id for h in index.search("cat", k=2)]
    ['d1', 'd2']
    """

    def __init__(self, core: Any, _token: object = None) -> None:
        if _token is not _BUILD_TOKEN:
            raise TypeError("use BM25Index.build(...) or BM25Index.load(...)")
        self._core = core
        self._ids: Optional[np.ndarray] = None
        self._ids_lock = threading.Lock()

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        corpus: Iterable[Any],
        *,
        ids: Optional[Iterable[Any]] = None,
        method: str = "lucene",
        k1: float = 0.9,
        b: float = 0.4,
        delta: Optional[float] = None,
        stemmer: Optional[str] = "porter",
        stopwords: StopwordsArg = "lucene",
        lowercase: bool = True,
        max_token_length: int = 255,
        fields: Sequence[str] = ("title", "text"),
        threads: Optional[int] = None,
    ) -> "BM25Index":
        """Index a corpus.

        Parameters
        ----------
        corpus : iterable
            Documents, all of one kind: ``str`` (or UTF-8 ``bytes``), analysed by the built-in analyzer;
            records (mappings) with an id (``id``, ``_id``, ``docid`` or ``doc_id``) and text ``fields``
            joined with a space (BEIR's ``title`` and ``text`` by default, like Pyserini's flat index);
            lists of ``str`` tokens from your own tokenizer (used unchanged); or lists/arrays of
            non-negative integer token ids.
        ids : iterable of str or int, optional
            External document ids (default: ``"0"``, ``"1"``, ...). Must be unique.
        method : {"lucene", "robertson", "atire", "bm25l", "bm25+"}
            BM25 variant (Kamphuis et al., 2020). ``lucene`` reproduces Lucene 9's BM25Similarity exactly,
            including its one-byte document-length encoding.
        k1, b : float
            BM25 parameters (defaults 0.9 and 0.4, as in Pyserini's BEIR runs).
        delta : float, optional
            Lower bound of term-frequency normalisation for ``bm25l`` (default 0.5) and ``bm25+`` (1.0).
        stemmer, stopwords, lowercase, max_token_length
            Analysis of text documents (see :class:`irforge.Analyzer`); stored with the index and applied
            to queries.
        threads : int, optional
            Build threads (default: all cores).
        """
        delta_v = _check_scoring(method, k1, b, delta)
        n_threads = check_threads(threads)
        stem = resolve_stemmer(stemmer)
        stop = resolve_stopwords(stopwords)
        max_token_length = check_max_token_length(max_token_length)
        lowercase = check_flag("lowercase", lowercase)
        if isinstance(fields, str):
            fields = (fields,)
        docs, id_list, kind = _prepare_corpus(corpus, ids, fields)
        core = _core.Index.build(
            docs, id_list, kind, lowercase, stem, stop, True, max_token_length, method, float(k1), float(b),
            delta_v, n_threads,
        )
        return cls(core, _BUILD_TOKEN)

    @classmethod
    def load(cls, path: PathLike, *, mmap: bool = True, verify: bool = True) -> "BM25Index":
        """Open an index written by :meth:`save`.

        The file's magic bytes, format version, sizes and structure are always checked; with ``verify``
        (default) every section's checksum is checked too, which reads the whole file once. A truncated
        or corrupted file raises ``ValueError``; a missing or unreadable one ``OSError``.
        """
        return cls(_core.Index.load(existing_file(path), bool(mmap), bool(verify)), _BUILD_TOKEN)

    def save(self, path: PathLike) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same directory is written,
        fsynced and renamed over ``path``, so a crash never leaves a partial index under that name."""
        atomic_save(path, self._core.save)

    def with_scoring(
        self,
        method: Optional[str] = None,
        *,
        k1: Optional[float] = None,
        b: Optional[float] = None,
        delta: Optional[float] = None,
        threads: Optional[int] = None,
    ) -> "BM25Index":
        """The same index scored with another BM25 variant or parameters (shares the postings; only the
        block-max bounds are recomputed, one pass over the postings)."""
        cur = self.params
        m = cur["method"] if method is None else method
        k1v = cur["k1"] if k1 is None else k1
        bv = cur["b"] if b is None else b
        if delta is None and m == cur["method"]:
            delta = cur["delta"]
        d = _check_scoring(m, k1v, bv, delta)
        return BM25Index(self._core.rescored(m, float(k1v), float(bv), d, check_threads(threads)), _BUILD_TOKEN)

    # ---- search ----------------------------------------------------------------------------------
    def search(self, query: Query, k: int = 10, *, algorithm: str = "auto",
               allowed: Optional[Sequence[int] | np.ndarray] = None) -> Hits:
        """Top ``k`` documents for ``query``.

        ``query`` is a string for text indexes (or a list of str: terms already analysed, used unchanged), a
        list of str tokens for token indexes, a list or array of int ids for id indexes. An empty query, or one whose terms are all stopwords or unknown, returns
        no hits. Fewer than ``k`` hits come back when fewer documents contain a query term.
        ``allowed``: document numbers (``Hits.docnos``) the hits must come from, for example the documents
        holding an exact phrase; the hits and scores equal those of an unrestricted search with the other
        documents removed, and only allowed documents are scored (``algorithm`` is then not used).
        The algorithms (``auto``, ``bmw``: block-max WAND, ``maxscore``, ``exhaustive``) return identical
        results; ``auto`` (default) picks the fastest for the query's posting lists.
        """
        k = _check_k(k)
        _check_algorithm(algorithm)
        if allowed is not None:
            docnos, scores = self._core.search_filtered(query, k, _allowed_docnos(allowed))
        else:
            docnos, scores = self._core.search(query, k, algorithm)
        return Hits(self._ids_of(docnos), scores, docnos)

    def search_batch(
        self,
        queries: Iterable[Query],
        k: int = 10,
        *,
        threads: Optional[int] = None,
        algorithm: str = "auto",
    ) -> BatchHits:
        """Top ``k`` for each query, on ``threads`` threads (default: all cores) with the GIL released.

        Returns :class:`BatchHits` of arrays shaped ``(n_queries, min(k, n_docs))``.
        """
        k = _check_k(k)
        _check_algorithm(algorithm)
        n_threads = check_threads(threads)
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of queries, not a single string")
        qs = list(queries)
        docnos, scores, counts = self._core.search_batch(qs, k, algorithm, n_threads)
        ids = np.full(docnos.shape, None, dtype=object)
        mask = docnos >= 0
        ids[mask] = self._ids_of(docnos[mask])
        return BatchHits(ids, scores, docnos, counts)

    # ---- introspection ---------------------------------------------------------------------------
    def _ids_of(self, docnos: np.ndarray) -> np.ndarray:
        if self._ids is None:
            with self._ids_lock:
                if self._ids is None:
                    stored = self._core.doc_ids()
                    n = self._core.n_docs
                    self._ids = np.array(stored if stored is not None else [str(i) for i in range(n)], dtype=object)
        return self._ids[docnos]

    @property
    def doc_ids(self) -> np.ndarray:
        """External ids of all documents, by document number."""
        return self._ids_of(np.arange(self._core.n_docs))

    def __len__(self) -> int:
        return int(self._core.n_docs)

    @property
    def n_docs(self) -> int:
        return int(self._core.n_docs)

    @property
    def vocab_size(self) -> int:
        return int(self._core.n_terms)

    @property
    def params(self) -> dict[str, Any]:
        """Scoring: ``method``, ``k1``, ``b``, ``delta``."""
        p = dict(self._core.params)
        for key in ("k1", "b", "delta"):  # stored as float32: show the shortest decimal that round-trips
            p[key] = float(str(np.float32(p[key])))
        return p

    @property
    def input_mode(self) -> str:
        """``"text"``, ``"tokens"`` or ``"ids"``: what documents and queries are."""
        return str(self._core.mode)

    @property
    def analyzer(self) -> Analyzer:
        """The analyzer applied to text documents and queries."""
        c = self._core.analyzer_config
        return Analyzer(
            stemmer="porter" if c["stem"] else None,
            stopwords=c["stopwords"] or None,
            lowercase=c["lowercase"],
            max_token_length=c["max_token_length"],
        )

    @property
    def avgdl(self) -> float:
        """Average document length in terms, over documents with at least one term."""
        return float(self._core.avgdl)

    def doc_lengths(self) -> np.ndarray:
        """Number of indexed terms per document (after analysis)."""
        return self._core.doc_lengths()

    def vocabulary(self) -> list[str]:
        """All indexed terms (for id indexes, the ids as decimal strings)."""
        return self._core.terms()

    def document_frequency(self, term: str) -> int:
        """Number of documents holding the (already analysed) ``term``."""
        return int(self._core.document_frequency(term))

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """Document numbers and term frequencies of an (already analysed) term, in document order."""
        return self._core.postings(term)

    def query_terms(self, query: Query) -> list[tuple[str, int]]:
        """The indexed terms of ``query`` with their counts, in order of first occurrence."""
        return self._core.query_terms(query)

    def __repr__(self) -> str:
        p = self.params
        return (
            f"BM25Index(n_docs={self.n_docs}, vocab_size={self.vocab_size}, method={p['method']!r}, "
            f"k1={p['k1']:g}, b={p['b']:g}, input={self.input_mode!r})"
        )


_BUILD_TOKEN = object()
