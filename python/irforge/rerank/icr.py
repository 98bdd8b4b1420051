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

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .._io import check_flag, check_int
from .attention import cache_kwarg, capture_mass, use_capture_attention
from .prompts import (PositionCheck, Prompt, _progress, batches, chat_tags, check_batch, check_batch_tokens,
                      check_k, check_model_tokenizer, check_query_docs, encode, encode_many, place_model,
                      truncate_many, warn_truncated)

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

    @classmethod
    def ranked(cls, scores: np.ndarray, k: Optional[int], truncated: list[int]) -> "RerankResult":
        """The documents ranked by ``scores`` (float64, in input order), at most ``k`` (None: all)."""
        idx = _rank(scores, len(scores) if k is None else k)
        return cls(idx, scores[idx], truncated)


def _rank(scores: np.ndarray, k: int) -> np.ndarray:
    """Best first; NaN ranks last; ties by input position."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), -key))[:k]


class ICRReranker:
    """Zero-shot reranking with any Hugging Face causal LM's attention. Layers with a sliding window (Mistral,
    Qwen2 or Gemma configurations that set one) contribute the mass within their window, as their attention
    does; models whose attention soft-caps its logits or adds sink logits raise ValueError. A prompt past the
    model's position range (``max_position_embeddings``) warns once for a rotary model and raises ValueError
    for one with learned positions.

    Parameters
    ----------
    model, tokenizer : a transformers causal LM and its tokenizer.
    max_doc_tokens : token budget per document; longer documents are cut, and the result says which.
    reverse_order : put the first-stage top document last, next to the query (ICR's default).
    calibrate : subtract the "N/A" query's attention (ICR's calibration); without it s_t is used directly.
    chat : chat tags ("chatml", "llama3", "mistral", "none", or "template": the tokenizer's own chat template
        around the user message); guessed from the tokenizer's template when None.
    progress : a progress bar (tqdm, if installed) over :meth:`rerank_batch`.
    batch_tokens : :meth:`rerank_batch` runs prompts of similar length together, left-padded, while the batch
        holds at most this many tokens, padding included; 0 runs one prompt at a time. None (default): 16,384 on
        a GPU, 0 on the CPU (where batching measured 1.25x slower: bench/RESULTS.md).
    device, dtype : when given, the model is moved and cast to them in place ("cuda", torch.bfloat16, ...);
        None keeps its own.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_doc_tokens: int = 300, reverse_order: bool = True,
                 calibrate: bool = True, chat: Optional[str] = None, progress: bool = False,
                 batch_tokens: Optional[int] = None, device: Any = None, dtype: Any = None) -> None:
        check_model_tokenizer(model, tokenizer)
        max_doc_tokens = check_int("max_doc_tokens", max_doc_tokens, 1)
        chat, self._tags = chat_tags(tokenizer, chat)
        self.model, self.tokenizer = place_model(model, device, dtype).eval(), tokenizer
        self.max_doc_tokens = max_doc_tokens
        self.reverse_order = check_flag("reverse_order", reverse_order)
        self.calibrate = check_flag("calibrate", calibrate)
        self.chat, self.progress = chat, check_flag("progress", progress)
        self.batch_tokens = check_batch_tokens(batch_tokens, model)
        self._positions = PositionCheck(model, "ICR")
        self._body = getattr(model, "base_model", model)  # the transformer without its LM head: no logits needed
        self._cache_arg = cache_kwarg(self._body)

    # ---- prompt -----------------------------------------------------------------------------------
    def build_prompt(self, docs: Sequence[str]) -> tuple[Prompt, list[int]]:
        """The shared prefix (everything before the query span) and the order in which documents appear."""
        tok = self.tokenizer
        p = Prompt()
        prefix_tag = self._tags[0]
        if tok.bos_token_id is not None and not (tok.bos_token and prefix_tag.startswith(tok.bos_token)):
            p.add([tok.bos_token_id])  # (ChatML models whose BOS is <|im_start|> get it from the chat tag)
        p.add(encode(tok, prefix_tag + INSTRUCTION))
        order = list(range(len(docs)))[::-1] if self.reverse_order else list(range(len(docs)))
        spans: dict[int, tuple[int, int]] = {}
        sep, *labels = encode_many(tok, [SEP] + [f"[{pos + 1}] " for pos in range(len(order))])
        bodies = truncate_many(tok, [docs[i] for i in order], self.max_doc_tokens)
        for i, label, (body, cut) in zip(order, labels, bodies):
            p.add(sep)
            if cut:
                p.truncated.append(i)
            spans[i] = p.add(label + body)
        p.add(sep)
        p.doc_spans = [spans[i] for i in range(len(docs))]
        p.truncated.sort()
        return p, order

    def query_ids(self, query: str) -> list[int]:
        return (encode(self.tokenizer, LATE_INSTRUCTION + SEP + "Query:" + " " + query, plain=True)
                + encode(self.tokenizer, self._tags[1]))  # the query is plain text; the chat tag is not

    # ---- scoring ----------------------------------------------------------------------------------
    def token_mass(self, prompt: Prompt, queries: Sequence[str]) -> list[np.ndarray]:
        """For each query, the attention mass of its span on every prefix token (the prefix runs once)."""
        return self.token_masses([prompt], [list(queries)])[0]

    @torch.inference_mode()
    def token_masses(self, prompts: Sequence[Prompt], queries: Sequence[Sequence[str]]) -> list[list[np.ndarray]]:
        """``token_mass`` for several prompts in one batch: out[b][j] is the mass of query ``queries[b][j]`` on
        the tokens of ``prompts[b]``. The prefixes run once, left-padded to a common length; then every query of
        every prompt runs in one pass, right-padded, on the prefixes' KV cache repeated once per query (so
        the "N/A" round costs no pass of its own: a model's short passes are bound by per-layer host work on a
        GPU, not by its arithmetic)."""
        from transformers import DynamicCache

        if len(prompts) != len(queries) or len({len(q) for q in queries}) > 1:
            raise ValueError("token_masses needs one list of queries per prompt, all of the same length")
        if not prompts or not queries[0]:
            return [[] for _ in prompts]
        dev = next(self.model.parameters()).device
        n_rounds = len(queries[0])
        lens = [len(p.ids) for p in prompts]
        width = max(lens)
        pads = [width - n for n in lens]
        q_ids = [self.query_ids(q) for qs in queries for q in qs]  # row b * n_rounds + j: query j of prompt b
        q_len = max(map(len, q_ids))
        self._positions(width - 1 + q_len)  # before any pass
        ids, mask = self._padded([p.ids for p in prompts], pads)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        with use_capture_attention(self.model):
            self._body(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                       **{self._cache_arg: cache}, use_cache=True)
            if n_rounds > 1:
                cache.batch_repeat_interleave(n_rounds)
            q_t, q_mask = self._padded(q_ids, [0] * len(q_ids), q_len)
            row_pads = [p for p in pads for _ in range(n_rounds)]
            q_pos = torch.tensor(lens).repeat_interleave(n_rounds)[:, None] + torch.arange(q_len)[None]
            q_attn = torch.cat([mask.repeat_interleave(n_rounds, 0), q_mask], 1)  # prefix keys, then query keys
            with capture_mass([(pad, len(x)) for pad, x in zip(row_pads, q_ids)]) as cap:
                self._body(q_t.to(dev), attention_mask=q_attn.to(dev), position_ids=q_pos.to(dev),
                           **{self._cache_arg: cache}, use_cache=True)
        masses = cap.host_masses()  # row b * n_rounds + j: query j of prompt b
        return [[masses[b * n_rounds + j][:lens[b]] for j in range(n_rounds)] for b in range(len(prompts))]

    def _padded(self, seqs: list[list[int]], left: list[int], width: Optional[int] = None):
        """Token ids [B, width] with ``left[b]`` pad tokens before sequence b and the rest after; its 0/1 mask."""
        width = max(p + len(x) for p, x in zip(left, seqs)) if width is None else width
        tok = self.tokenizer
        pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, (p, x) in enumerate(zip(left, seqs)):
            ids[b, p: p + len(x)] = torch.tensor(x, dtype=torch.long)
            mask[b, p: p + len(x)] = 1
        return ids, mask

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

    def _rounds(self, query: str) -> list[str]:
        return [query, "N/A"] if self.calibrate else [query]

    def _scores_from(self, prompt: Prompt, masses: list[np.ndarray]) -> np.ndarray:
        return self.doc_scores(prompt, masses[0], masses[1] if self.calibrate else None)

    def score(self, query: str, docs: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """ICR scores of ``docs`` (in the order given) for ``query``, and the indices of truncated documents."""
        docs = check_query_docs(query, docs)
        if not docs:
            return np.zeros(0), []
        prompt, _ = self.build_prompt(docs)
        scores = self._scores_from(prompt, self.token_mass(prompt, self._rounds(query)))
        warn_truncated("ICR", [prompt.truncated], [len(docs)], self.max_doc_tokens)
        return scores, prompt.truncated

    def rerank(self, query: str, docs: Sequence[str], k: Optional[int] = None) -> RerankResult:
        """Documents ranked by ICR score, best first (at most ``k``)."""
        k = check_k(k)
        scores, truncated = self.score(query, docs)
        return RerankResult.ranked(scores, k, truncated)

    def rerank_batch(self, queries: Any, docs: Any, k: Any = None) -> list[RerankResult]:
        """``rerank`` for each (query, documents) pair. Prompts of similar length run together, left-padded, in
        batches of at most ``batch_tokens`` padded tokens (a longer prompt runs alone); the scores equal
        one-prompt-at-a-time scoring up to float rounding."""
        k = check_k(k)
        queries, docs = check_batch(queries, docs)
        out: list[Optional[RerankResult]] = [None] * len(queries)
        prompts: dict[int, Prompt] = {}
        for i, d in enumerate(docs):
            if d:
                prompts[i] = self.build_prompt(d)[0]
            else:
                out[i] = RerankResult.ranked(np.zeros(0), k, [])
        order = sorted(prompts, key=lambda i: len(prompts[i].ids))
        bar = _progress(self.progress, len(order), type(self).__name__)
        for batch in batches(order, [len(prompts[i].ids) for i in order], self.batch_tokens, padded=True):
            masses = self.token_masses([prompts[i] for i in batch], [self._rounds(queries[i]) for i in batch])
            for i, m in zip(batch, masses):
                out[i] = RerankResult.ranked(self._scores_from(prompts[i], m), k, prompts[i].truncated)
            bar.update(len(batch))
        bar.close()
        warn_truncated("ICR", [prompts[i].truncated for i in order], [len(docs[i]) for i in order],
                       self.max_doc_tokens)
        return out  # type: ignore[return-value]


def icr_token_mass_eager(model: Any, tokenizer_ids: list[int], query_ids: list[int]) -> np.ndarray:
    """Reference: the same per-token mass from an eager forward pass with output_attentions (the model must use
    attn_implementation="eager"). O(layers * heads * query * prefix) memory."""
    dev = next(model.parameters()).device
    ids = torch.tensor([tokenizer_ids + query_ids], device=dev)
    with torch.inference_mode():
        out = model(ids, output_attentions=True)
    n_ctx = len(tokenizer_ids)
    total = None
    for a in out.attentions:  # [1, H, T, T]
        m = a[0, :, n_ctx:, :n_ctx].double().sum(0).mean(0)  # heads summed, rows averaged
        total = m if total is None else total + m
    return total.cpu().numpy()
