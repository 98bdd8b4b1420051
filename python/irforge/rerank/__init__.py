"""LLM rerankers on Hugging Face transformers (needs the ``rerank`` extra: torch, transformers; Triton on GPUs).

- :class:`ICRReranker`: attention-based zero-shot reranking (ICR), with "N/A" calibration.
- :class:`BlockRankReranker`: BlockRank's block-sparse prompt, scored at a middle layer, with its InfoNCE loss.
"""
from .blockrank import BlockRankReranker
from .icr import ICRReranker, RerankResult

__all__ = ["BlockRankReranker", "ICRReranker", "RerankResult"]
