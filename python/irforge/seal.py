"""SEAL-style retrieval on the FM-index ("Autoregressive Search Engines: Generating Substrings as Document
Identifiers", Bevilacqua et al., 2022) and an exact-phrase filter for BM25. Constrained decoding with Hugging Face
models (FMIndexLogitsProcessor, SEALRetriever) is in :mod:`irforge.seal_decoding` (needs torch, transformers).

N-gram weights follow SEAL: with P(n) = (F(n) + smoothing) / (T + smoothing), F(n) the n-gram's corpus count and
T the corpus length in tokens, and P(n|q) the n-gram's probability given the query,

    w(n, q) = max(0, log[P(n|q) (1 - P(n))] - log[P(n) (1 - P(n|q))]) ** alpha.

A document's score aggregates the weights of the query n-grams it holds, taken greedily by weight over
non-overlapping occurrences, each scaled by SEAL's repetition coefficient 1 - beta + beta * (share of the
n-gram's tokens not already covered by higher-weighted n-grams). Defaults are SEAL's: alpha 2.0, beta 0.8,
smoothing 5.0, n-grams with more than 1,500 occurrences used for final scoring but not to find candidates,
1,500 candidates fully scored.
"""
from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np

from ._io import check_int
from .analysis import Analyzer
from .bm25 import BM25Index, Hits
from .fmindex import FMIndex

__all__ = ["NGramIndex", "NGramRetriever", "PhraseSearcher", "ngram_weight", "seal_aggregate", "parse_phrases"]


def ngram_weight(log_p_given_q: float, count: int, n_tokens: int, alpha: float = 2.0, smoothing: float = 5.0) -> float:
    """SEAL's weight of an n-gram with log P(n|q) = ``log_p_given_q`` and corpus count ``count``."""
    if count <= 0 or not math.isfinite(log_p_given_q) or log_p_given_q >= 0.0:
        return 0.0
    log_pn = math.log((count + smoothing) / (n_tokens + smoothing))
    if log_pn >= 0.0:
        return 0.0
    sco = (log_p_given_q + math.log1p(-math.exp(log_pn))) - (log_pn + math.log1p(-math.exp(log_p_given_q)))
    return max(sco, 0.0) ** alpha


def check_seal_options(alpha: Any, beta: Any, smoothing: Any, **counts: Any) -> None:
    """ValueError unless alpha > 0, 0 <= beta <= 1 and smoothing >= 0 are finite numbers and each of ``counts``
    (max_hits, beam, ...) is a positive int."""
    for name, v in (("alpha", alpha), ("beta", beta), ("smoothing", smoothing)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    for name, v in counts.items():
        check_int(name, v, 1)
    if not (alpha > 0 and 0 <= beta <= 1 and smoothing >= 0):
        raise ValueError(f"need alpha > 0, 0 <= beta <= 1 and smoothing >= 0, got {alpha}, {beta}, {smoothing}")


def _repetition(tokens: tuple, weight: float, covered: set, beta: float) -> float:
    if not covered:
        return weight
    toks = set(tokens)
    return (1.0 - beta + beta * len(toks - covered) / len(toks)) * weight


def _greedy_score(matches: dict[tuple, list[tuple[int, int]]], weights: dict[tuple, float], beta: float) -> float:
    """Greedy by weight over non-overlapping occurrences; each distinct n-gram counts once."""
    taken = np.zeros(0, dtype=bool)
    covered: set = set()
    score = 0.0
    for ngram in sorted(matches, key=lambda g: (-weights[g], g)):
        for start, end in sorted(matches[ngram]):
            if end > len(taken):
                taken = np.concatenate([taken, np.zeros(end - len(taken), dtype=bool)])
            if not taken[start:end].any():
                taken[start:end] = True
                score += _repetition(ngram, weights[ngram], covered, beta)
                covered |= set(ngram)
                break
    return score


def seal_aggregate(fm: FMIndex, weights: dict[tuple, float], *, beta: float = 0.8, max_hits: int = 1500,
                   n_docs_complete_score: int = 1500) -> dict[int, float]:
    """Document scores from weighted n-grams (token-id tuples), SEAL's two stages: candidates from the n-grams
    with at most ``max_hits`` occurrences, then the best ``n_docs_complete_score`` candidates scored with all
    n-grams matched against their tokens."""
    weights = {g: w for g, w in weights.items() if w > 0.0 and len(g) > 0}
    if not weights:
        return {}
    counts = dict(zip(weights, fm.count_batch(list(weights), threads=1).tolist()))
    rare = [g for g in weights if 0 < counts[g] <= max_hits]
    first: dict[int, dict[tuple, list[tuple[int, int]]]] = {}
    for g in rare:
        for doc, off in fm.locate(g).tolist():
            first.setdefault(doc, {}).setdefault(g, []).append((off, off + len(g)))
    stage1 = {d: _greedy_score(m, weights, beta) for d, m in first.items()}
    chosen = sorted(stage1, key=lambda d: (-stage1[d], d))[:n_docs_complete_score]
    by_first: dict[Any, list[tuple]] = {}
    for g in weights:
        if counts[g] > 0:
            by_first.setdefault(g[0], []).append(g)
    scores = {}
    for d in chosen:
        toks = fm.extract(d).tolist()
        matches: dict[tuple, list[tuple[int, int]]] = {}
        for i, t in enumerate(toks):
            for g in by_first.get(t, ()):
                if tuple(toks[i:i + len(g)]) == g:
                    matches.setdefault(g, []).append((i, i + len(g)))
        scores[d] = _greedy_score(matches, weights, beta)
    return scores


class NGramIndex:
    """An FM-index over analysed terms of a corpus (term ids from a vocabulary), for n-gram retrieval and
    exact phrases. Documents are analysed like :class:`irforge.BM25Index` text (title and text joined)."""

    def __init__(self, fm: FMIndex, vocab: dict[str, int], analyzer: Analyzer, doc_ids: Sequence[str]) -> None:
        self.fm = fm
        self.vocab = vocab
        self.analyzer = analyzer
        self.doc_ids = np.asarray(list(doc_ids), dtype=object)

    @classmethod
    def build(cls, corpus: Iterable[Any], *, analyzer: Optional[Analyzer] = None,
              fields: Sequence[str] = ("title", "text"), sample_rate: int = 8) -> "NGramIndex":
        """``corpus``: strings, or records with an id and text fields (as for BM25Index.build)."""
        from .bm25 import _prepare_corpus

        docs, ids, kind = _prepare_corpus(corpus, None, fields)
        if kind != "text":
            raise TypeError("NGramIndex takes text documents or records")
        analyzer = analyzer or Analyzer()
        vocab: dict[str, int] = {}
        term_docs = [[vocab.setdefault(t, len(vocab)) for t in terms] for terms in analyzer.analyze_many(docs)]
        fm = FMIndex.build([np.asarray(t, dtype=np.int64) for t in term_docs], sample_rate=sample_rate)
        return cls(fm, vocab, analyzer, ids if ids is not None else [str(i) for i in range(len(docs))])

    def term_ids(self, text: str) -> list[int]:
        """Analysed terms of ``text`` as ids; terms absent from the corpus get -1."""
        return [self.vocab.get(t, -1) for t in self.analyzer(text)]

    def phrase_docs(self, phrase: str) -> np.ndarray:
        """Document numbers holding the analysed terms of ``phrase`` contiguously (stopwords removed, as in the
        index); empty if any term never occurs."""
        ids = self.term_ids(phrase)
        if not ids:
            return np.zeros(0, dtype=np.int64)
        if min(ids) < 0:
            return np.zeros(0, dtype=np.int64)
        return self.fm.doc_frequencies(ids)[0]


class NGramRetriever:
    """SEAL n-gram retrieval. :meth:`search` is the model-free mode: the query's own word n-grams (lengths 1
    to ``max_n``) with P(n|q) = (occurrences of n among the query's n-grams of its length) / (their number + 1).
    :meth:`search_keys` scores n-grams that a language model produced with their log-probabilities."""

    def __init__(self, index: NGramIndex, *, alpha: float = 2.0, beta: float = 0.8, smoothing: float = 5.0,
                 max_hits: int = 1500, n_docs_complete_score: int = 1500, max_n: int = 3) -> None:
        check_seal_options(alpha, beta, smoothing, max_hits=max_hits, n_docs_complete_score=n_docs_complete_score,
                           max_n=max_n)
        self.index = index
        self.alpha, self.beta, self.smoothing = alpha, beta, smoothing
        self.max_hits, self.n_docs_complete_score, self.max_n = max_hits, n_docs_complete_score, max_n

    def query_keys(self, query: str) -> list[tuple[tuple, float]]:
        """(n-gram of term ids, log P(n|q)) for the query's n-grams that occur in the corpus."""
        ids = self.index.term_ids(query)
        keys = []
        for n in range(1, min(self.max_n, len(ids)) + 1):
            grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
            total = sum(grams.values())
            for g, c in grams.items():
                if min(g) >= 0:
                    keys.append((g, math.log(c / (total + 1))))
        return keys

    def search_keys(self, keys: Sequence[tuple[Sequence[int], float]], k: int = 10) -> Hits:
        """Rank documents from (n-gram, log P(n|q)) pairs; the n-grams are token ids of this index."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        fm = self.index.fm
        weights: dict[tuple, float] = {}
        grams = [tuple(int(t) for t in g) for g, _ in keys]
        counts = fm.count_batch(grams, threads=1).tolist() if grams else []
        for g, (_, lp), c in zip(grams, keys, counts):
            w = ngram_weight(float(lp), c, fm.n_tokens, self.alpha, self.smoothing)
            weights[g] = max(weights.get(g, 0.0), w)
        scores = seal_aggregate(fm, weights, beta=self.beta, max_hits=self.max_hits,
                                n_docs_complete_score=self.n_docs_complete_score)
        ranked = sorted(scores, key=lambda d: (-scores[d], d))[:k]
        docnos = np.asarray(ranked, dtype=np.int64)
        return Hits(self.index.doc_ids[docnos] if len(docnos) else np.zeros(0, dtype=object),
                    np.asarray([scores[d] for d in ranked], dtype=np.float32), docnos)

    def search(self, query: str, k: int = 10) -> Hits:
        """Model-free SEAL: rank documents by the query's own n-grams."""
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        return self.search_keys(self.query_keys(query), k=k)


_PHRASE_RE = re.compile(r'"([^"]*)"')


def parse_phrases(query: str) -> tuple[list[str], str]:
    """The quoted phrases of ``query`` and the query with its quotes removed. An odd quote is an error."""
    if query.count('"') % 2:
        raise ValueError(f"unbalanced quotes in query {query!r}")
    phrases = [p.strip() for p in _PHRASE_RE.findall(query) if p.strip()]
    return phrases, query.replace('"', " ")


class PhraseSearcher:
    """BM25 ranking constrained by exact phrases: a query with "quoted phrases" returns only documents that
    contain every phrase (found with the FM-index over the same analysed terms), ranked by BM25 over the
    whole query. Queries without quotes are plain BM25. Only the documents holding every phrase are scored
    (:meth:`irforge.BM25Index.search` with ``allowed``)."""

    def __init__(self, bm25: BM25Index, ngrams: NGramIndex) -> None:
        if bm25.n_docs != ngrams.fm.n_docs:
            raise ValueError(f"the BM25 index has {bm25.n_docs} documents, the n-gram index {ngrams.fm.n_docs}")
        self.bm25, self.ngrams = bm25, ngrams

    def search(self, query: str, k: int = 10) -> Hits:
        """BM25's top ``k`` for ``query`` among the documents holding each of its quoted phrases."""
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        phrases, text = parse_phrases(query)
        if not phrases:
            return self.bm25.search(text, k=k)
        allowed = None
        for p in phrases:
            docs = self.ngrams.phrase_docs(p)
            allowed = docs if allowed is None else np.intersect1d(allowed, docs)
            if len(allowed) == 0:
                return self.bm25.search("", k=k)
        return self.bm25.search(text, k=k, allowed=allowed)
