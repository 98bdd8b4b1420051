"""irforge: fast retrieval engines for Python, with native cores.

The BM25 engine: :class:`BM25Index` (build, search, search_batch, save, load), the Lucene-compatible
:class:`Analyzer`, evaluation in :mod:`irforge.metrics` and test collections in :mod:`irforge.datasets`.
The FM-index: :class:`FMIndex`, with SEAL-style retrieval in :mod:`irforge.seal` (and, with torch and
transformers, constrained decoding in :mod:`irforge.seal_decoding`). With torch: the kernels in
:mod:`irforge.kernels` and the LLM rerankers in :mod:`irforge.rerank`; :mod:`irforge.pipeline` chains them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import datasets, metrics
from .analysis import LUCENE_STOPWORDS, Analyzer
from .bm25 import ALGORITHMS, METHODS, BatchHits, BM25Index, Hit, Hits
from .fmindex import FMIndex, SuffixRange

__all__ = [
    "ALGORITHMS",
    "Analyzer",
    "BatchHits",
    "BM25Index",
    "FMIndex",
    "Hit",
    "Hits",
    "LUCENE_STOPWORDS",
    "METHODS",
    "SuffixRange",
    "datasets",
    "metrics",
    "__version__",
]
