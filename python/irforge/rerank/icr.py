"""ICR: in-context reranking by attention (Chen et al. 2024, "Attention in Large Language Models Yields Efficient
Zero-Shot Re-Rankers").

Prompt: BOS + chat prefix + " Here are some paragraphs:" + for each document SEP + "[i] document" + SEP + late
instruction + SEP + "Query:" + " query" + chat suffix, SEP = "\\n\\n". By default the documents are placed in
reverse first-stage order, so that the first-stage top document sits next to the query (as in ICR).

Score: the query span (late instruction to the end) attends over the whole causal prefix; per context token, the
softmax attention of the span's tokens, averaged over them and summed over all layers and heads, is its mass
s_t. The same prefix, run once, serves the real query and the content-free query "N/A" through its KV cache:
c_t = s_t - s^NA_t; with threshold mean(c) - 2 std(c) over the documents' tokens, a document's score is the
sum of its c_t above the threshold. The mass is gathered in the forward pass (irforge.rerank.attention).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .attention import cache_kwarg, capture_mass, use_capture_attention
from .prompts import CHAT_TAGS, BatchMixin, Prompt, chat_family, check_k, check_query_docs, encode, truncate

__all__ = ["ICRReranker", "RerankResult"]

SEP = "\n\n"
INSTRUCTION = " Here are some paragraphs:"
LATE_INSTRUCTION = "Please find information that is relevant to the following query in the paragraphs above."


@dataclass
class RerankResult:
    """``indices`` into the documents given, best first; ``scores`` aligned with them; ``truncated``: indices of
    documents cut to the token budget."""

    indices: np.ndarray
    scores: np.ndarray
    truncated: list[int]


def _rank(scores: np.ndarray, k: int) -> np.ndarray:
    """Best first; NaN ranks last; ties by input position."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), -key))[:k]


class ICRReranker(BatchMixin):
    """Zero-shot reranking with any Hugging Face causal LM's attention.

    Parameters
    ----------
    model, tokenizer : a transformers causal LM and its tokenizer (batch size 1 per prompt).
    max_doc_tokens : token budget per document; longer documents are cut, and the result says which.
    reverse_order : put the first-stage top document last, next to the query (ICR's default).
    calibrate : subtract the "N/A" query's attention (ICR's calibration); without it s_t is used directly.
    chat : chat tags ("chatml", "llama3", "mistral", "none"); guessed from the tokenizer when None.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_doc_tokens: int = 300, reverse_order: bool = True,
                 calibrate: bool = True, chat: Optional[str] = None, progress: bool = False) -> None:
        if not isinstance(max_doc_tokens, int) or max_doc_tokens <= 0:
            raise ValueError(f"max_doc_tokens must be a positive int, got {max_doc_tokens!r}")
        chat = chat or chat_family(tokenizer)
        if chat not in CHAT_TAGS:
            raise ValueError(f"unknown chat tags {chat!r}; choose from {sorted(CHAT_TAGS)}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_doc_tokens, self.reverse_order, self.calibrate = max_doc_tokens, reverse_order, calibrate
        self.chat, self.progress = chat, progress
        self._cache_arg = cache_kwarg(model)

    # ---- prompt -----------------------------------------------------------------------------------
    def build_prompt(self, docs: Sequence[str]) -> tuple[Prompt, list[int]]:
        """The shared prefix (everything before the query span) and the order in which documents appear."""
        tok = self.tokenizer
        p = Prompt()
        prefix_tag = CHAT_TAGS[self.chat][0]
        if tok.bos_token_id is not None and not (tok.bos_token and prefix_tag.startswith(tok.bos_token)):
            p.add([tok.bos_token_id])  # (ChatML models whose BOS is <|im_start|> get it from the chat tag)
        p.add(encode(tok, prefix_tag + INSTRUCTION))
        order = list(range(len(docs)))[::-1] if self.reverse_order else list(range(len(docs)))
        spans: dict[int, tuple[int, int]] = {}
        for pos, i in enumerate(order):
            p.add(encode(tok, SEP))
            body, cut = truncate(tok, docs[i], self.max_doc_tokens)
            if cut:
                p.truncated.append(i)
            spans[i] = p.add(encode(tok, f"[{pos + 1}] ") + body)
        p.add(encode(tok, SEP))
        p.doc_spans = [spans[i] for i in range(len(docs))]
        p.truncated.sort()
        return p, order

    def query_ids(self, query: str) -> list[int]:
        return encode(self.tokenizer, LATE_INSTRUCTION + SEP + "Query:" + " " + query + CHAT_TAGS[self.chat][1])

    # ---- scoring ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def token_mass(self, prompt: Prompt, queries: Sequence[str]) -> list[np.ndarray]:
        """For each query, the attention mass of its span on every prefix token (the prefix runs once)."""
        from transformers import DynamicCache

        dev = next(self.model.parameters()).device
        ctx = torch.tensor([prompt.ids], device=dev)
        cache = DynamicCache()
        with use_capture_attention(self.model):
            self.model(ctx, **{self._cache_arg: cache}, use_cache=True)
            out = []
            for q in queries:
                ids = torch.tensor([self.query_ids(q)], device=dev)
                with capture_mass() as cap:
                    self.model(ids, **{self._cache_arg: cache}, use_cache=True)
                cache.crop(-len(ids[0]))  # back to the shared prefix (a negative count works in all versions)
                out.append(cap.mass[: len(prompt.ids)].cpu().numpy())
        return out

    @staticmethod
    def doc_scores(prompt: Prompt, s: np.ndarray, s_na: Optional[np.ndarray]) -> np.ndarray:
        """ICR's calibrated document scores from per-token masses."""
        c = s - s_na if s_na is not None else s.copy()
        doc_tokens = np.concatenate([np.arange(a, b) for a, b in prompt.doc_spans]) if prompt.doc_spans else np.zeros(0, int)
        if s_na is not None and len(doc_tokens):
            vals = c[doc_tokens]
            thr = vals.mean() - 2.0 * vals.std()
            c = np.where(c > thr, c, 0.0)
        return np.array([c[a:b].sum() for a, b in prompt.doc_spans], dtype=np.float64)

    def score(self, query: str, docs: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """ICR scores of ``docs`` (in the order given) for ``query``, and the indices of truncated documents."""
        docs = check_query_docs(query, docs)
        if not docs:
            return np.zeros(0), []
        prompt, _ = self.build_prompt(docs)
        masses = self.token_mass(prompt, [query, "N/A"] if self.calibrate else [query])
        scores = self.doc_scores(prompt, masses[0], masses[1] if self.calibrate else None)
        if prompt.truncated:
            warnings.warn(f"ICR: {len(prompt.truncated)} of {len(docs)} documents cut to {self.max_doc_tokens} tokens",
                          stacklevel=2)
        return scores, prompt.truncated

    def rerank(self, query: str, docs: Sequence[str], k: Optional[int] = None) -> RerankResult:
        """Documents ranked by ICR score, best first (at most ``k``)."""
        check_k(k)
        scores, truncated = self.score(query, docs)
        k = len(scores) if k is None else k
        idx = _rank(scores, k)
        return RerankResult(idx, scores[idx], truncated)


def icr_token_mass_eager(model: Any, tokenizer_ids: list[int], query_ids: list[int]) -> np.ndarray:
    """Reference: the same per-token mass from an eager forward pass with output_attentions (the model must use
    attn_implementation="eager"). O(layers * heads * query * prefix) memory."""
    dev = next(model.parameters()).device
    ids = torch.tensor([tokenizer_ids + query_ids], device=dev)
    with torch.inference_mode():
        out = model(ids, output_attentions=True)
    n_ctx, n_q = len(tokenizer_ids), len(query_ids)
    total = None
    for a in out.attentions:  # [1, H, T, T]
        m = a[0, :, n_ctx:, :n_ctx].double().sum(0).mean(0)  # heads summed, rows averaged
        total = m if total is None else total + m
    return total.cpu().numpy()
