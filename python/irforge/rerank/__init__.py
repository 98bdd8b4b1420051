"""LLM rerankers on Hugging Face transformers (needs the ``rerank`` extra: torch, transformers; Triton on GPUs).

- :class:`ICRReranker`: attention-based zero-shot reranking (ICR), with "N/A" calibration.
"""
from .icr import ICRReranker, RerankResult

__all__ = ["ICRReranker", "RerankResult"]
