"""Retrieve, then rerank: a first-stage retriever's top ``depth`` documents reordered by an LLM reranker."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import numpy as np

from ._io import check_int
from .bm25 import BM25Index, Hits, _check_k

__all__ = ["RetrieveRerank"]


class RetrieveRerank:
    """``retriever.search(query, k=depth)`` then ``reranker.rerank(query, texts, k)``.

    Parameters
    ----------
    retriever : a BM25Index (anything with ``search(query, k) -> Hits``; ``search_batch`` is used when it has one).
    reranker : an ICRReranker or BlockRankReranker (anything with ``rerank(query, texts, k)``; ``rerank_batch``
        is used by :meth:`search_batch` when it has one).
    texts : document text by id (a mapping, or a function of the id).
    depth : how many first-stage hits to rerank.
    """

    def __init__(self, retriever: BM25Index, reranker: Any, texts: Union[Mapping[str, str], Callable[[str], str]],
                 depth: int = 20) -> None:
        depth = check_int("depth", depth, 1)
        if not callable(getattr(retriever, "search", None)):
            raise TypeError(f"retriever must have a search(query, k) method, got {type(retriever).__name__}")
        if not callable(getattr(reranker, "rerank", None)):
            raise TypeError(f"reranker must have a rerank(query, texts, k) method, got {type(reranker).__name__}")
        if not (isinstance(texts, Mapping) or callable(texts)):
            raise TypeError(f"texts must be a mapping or a function of a document id, got {type(texts).__name__}")
        self.retriever, self.reranker, self.depth = retriever, reranker, depth
        self._text = texts.__getitem__ if isinstance(texts, Mapping) else texts

    def search(self, query: str, k: int = 10) -> Hits:
        """The reranked top ``k`` (scores are the reranker's); below the reranked depth nothing is returned."""
        k = _check_k(k)
        first = self.retriever.search(query, k=self.depth)
        if len(first) == 0:
            return first
        return _reordered(first, self.reranker.rerank(query, self._texts(first), k=min(k, len(first))))

    def search_batch(self, queries: Iterable[str], k: int = 10, *, threads: Optional[int] = None) -> list[Hits]:
        """:meth:`search` for each query: the first stage in one ``search_batch`` call (on ``threads`` threads),
        the reranking in one ``rerank_batch`` call (which batches prompts on a GPU). The results equal
        :meth:`search`'s, query by query, up to the reranker's float rounding in batches."""
        k = _check_k(k)
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of queries, not a single string")
        queries = list(queries)
        if hasattr(self.retriever, "search_batch"):
            batch = self.retriever.search_batch(queries, k=self.depth, threads=threads)
            firsts = [batch.row(i) for i in range(len(queries))]
        else:
            firsts = [self.retriever.search(q, k=self.depth) for q in queries]
        texts = [self._texts(f) for f in firsts]
        if hasattr(self.reranker, "rerank_batch"):
            results = self.reranker.rerank_batch(queries, texts, k=k)
        else:
            results = [self.reranker.rerank(q, t, k=k) if t else None for q, t in zip(queries, texts)]
        return [_reordered(f, r) if len(f) else f for f, r in zip(firsts, results)]

    def _texts(self, hits: Hits) -> list[str]:
        out = []
        for doc_id in hits.ids:
            try:
                text = self._text(str(doc_id))
            except KeyError:
                raise KeyError(f"no text for document id {str(doc_id)!r}, a first-stage hit") from None
            if not isinstance(text, str):
                raise TypeError(f"the text of document {str(doc_id)!r} must be a str, got {type(text).__name__}")
            out.append(text)
        return out


def _reordered(first: Hits, res: Any) -> Hits:
    """The first-stage hits in the reranker's order, with its scores."""
    idx = np.asarray(res.indices, dtype=np.int64)
    return Hits(first.ids[idx], np.asarray(res.scores, dtype=np.float32), first.docnos[idx])
