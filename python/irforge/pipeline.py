"""Retrieve, then rerank: a first-stage retriever's top ``depth`` documents reordered by an LLM reranker."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np

from .bm25 import BM25Index, Hits

__all__ = ["RetrieveRerank"]


class RetrieveRerank:
    """``retriever.search(query, k=depth)`` then ``reranker.rerank(query, texts, k)``.

    Parameters
    ----------
    retriever : a BM25Index (anything with ``search(query, k) -> Hits``).
    reranker : an ICRReranker or BlockRankReranker (anything with ``rerank(query, texts, k)``).
    texts : document text by id (a mapping, or a function of the id).
    depth : how many first-stage hits to rerank.
    """

    def __init__(self, retriever: BM25Index, reranker: Any, texts: Union[Mapping[str, str], Callable[[str], str]],
                 depth: int = 20) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.retriever, self.reranker, self.depth = retriever, reranker, depth
        self._text = texts.__getitem__ if isinstance(texts, Mapping) else texts

    def search(self, query: str, k: int = 10) -> Hits:
        """The reranked top ``k`` (scores are the reranker's); below the reranked depth nothing is returned."""
        first = self.retriever.search(query, k=self.depth)
        if len(first) == 0:
            return first
        res = self.reranker.rerank(query, [self._text(str(i)) for i in first.ids], k=min(k, len(first)))
        idx = np.asarray(res.indices, dtype=np.int64)
        return Hits(first.ids[idx], np.asarray(res.scores, dtype=np.float32), first.docnos[idx])
