"""Constrained decoding on the FM-index for Hugging Face ``generate``, and SEAL retrieval with a language model.
Needs the ``rerank`` extra (torch, transformers)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from transformers import LogitsProcessor

from .bm25 import Hits, _check_k
from .fmindex import FMIndex, SuffixRange
from .seal import check_seal_options, ngram_weight, seal_aggregate

__all__ = ["FMIndexLogitsProcessor", "SEALRetriever"]


class FMIndexLogitsProcessor(LogitsProcessor):
    """Keeps every beam inside the corpus: after the generated tokens n, only tokens t such that n + [t] occurs
    in some document keep their score; the others get -inf.

    Each beam's suffix range is carried from step to step: the range of a generated prefix is stored, and the
    next step extends it by one token (one backward-search step) instead of searching the prefix again.

    Parameters
    ----------
    fm : FMIndex over the model's token ids of the corpus documents.
    prompt_length : tokens of ``input_ids`` before the generated part (decoder-only models: the prompt length;
        encoder-decoder models: the decoder start tokens, usually 1).
    eos_token_id : allowed when a prefix has no continuation (it ends a document), so that no beam is left
        without a finite score; also allowed everywhere when ``allow_eos_anywhere`` (an n-gram may stop at any
        length, as SEAL's keys do).
    """

    def __init__(self, fm: FMIndex, prompt_length: int, eos_token_id: Optional[int] = None,
                 allow_eos_anywhere: bool = True) -> None:
        if not isinstance(fm, FMIndex):
            raise TypeError(f"fm must be an irforge.FMIndex, got {type(fm).__name__}")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"prompt_length must be a non-negative int, got {prompt_length!r}")
        self.fm = fm
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.allow_eos_anywhere = allow_eos_anywhere
        self._ranges: dict[tuple, SuffixRange] = {(): fm.full_range()}
        self.extend_calls = 0  # backward-search steps taken (one per new prefix)

    def range_of(self, prefix: Sequence[int]) -> SuffixRange:
        """The suffix range of a generated prefix, from the cache (extending the parent's range if new)."""
        key = tuple(int(t) for t in prefix)
        r = self._ranges.get(key)
        if r is None:
            parent = self.range_of(key[:-1])
            r = self.fm.extend(parent, key[-1]) if parent else SuffixRange(0, 0)
            self.extend_calls += 1
            self._ranges[key] = r
        return r

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        mask = torch.full_like(scores, float("-inf"))
        gen = input_ids[:, self.prompt_length:].tolist()
        for row, prefix in enumerate(gen):
            if self.eos_token_id is not None and self.eos_token_id in prefix:
                mask[row, self.eos_token_id] = 0.0  # finished beam: keep it alive on EOS
                continue
            r = self.range_of(prefix)
            toks = self.fm.next_tokens(r)[0] if r else np.zeros(0, dtype=np.int64)
            toks = toks[toks < vocab]
            if len(toks):
                mask[row, torch.from_numpy(toks)] = 0.0
            if self.eos_token_id is not None and (self.allow_eos_anywhere and prefix or not len(toks)):
                mask[row, self.eos_token_id] = 0.0
            elif not len(toks):
                mask[row] = 0.0  # nothing would be finite: leave this row unconstrained rather than NaN
        return scores + mask


class SEALRetriever:
    """SEAL with any Hugging Face causal or seq2seq LM: constrained beam search generates n-grams that occur in
    the corpus, their log-probabilities give P(n|q), and documents are scored with SEAL's weights and
    aggregation. Defaults are SEAL's (beam 15, key length 10, alpha 2.0, beta 0.8, smoothing 5.0)."""

    def __init__(self, model: Any, tokenizer: Any, fm: FMIndex, doc_ids: Optional[Sequence[str]] = None, *,
                 beam: int = 15, key_length: int = 10, alpha: float = 2.0, beta: float = 0.8, smoothing: float = 5.0,
                 prompt: str = "Query: {query}\nA relevant passage:", device: Optional[str] = None) -> None:
        if not isinstance(fm, FMIndex):
            raise TypeError(f"fm must be an irforge.FMIndex, got {type(fm).__name__}")
        check_seal_options(alpha, beta, smoothing, beam=beam, key_length=key_length)
        if not isinstance(prompt, str) or "{query}" not in prompt:
            raise ValueError(f"prompt must be a str holding '{{query}}', got {prompt!r}")
        self.model, self.tokenizer, self.fm = model, tokenizer, fm
        self.doc_ids = np.asarray(list(doc_ids) if doc_ids is not None else [str(i) for i in range(fm.n_docs)], dtype=object)
        if len(self.doc_ids) != fm.n_docs:  # document numbers would name the wrong documents, or none
            raise ValueError(f"got {len(self.doc_ids)} doc_ids for an FM-index of {fm.n_docs} documents")
        self.beam, self.key_length, self.alpha, self.beta, self.smoothing = beam, key_length, alpha, beta, smoothing
        self.prompt = prompt
        self.device = device or next(model.parameters()).device
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))

    @classmethod
    def build(cls, corpus: Iterable[str], model: Any, tokenizer: Any, doc_ids: Optional[Sequence[str]] = None,
              **kwargs: Any) -> "SEALRetriever":
        texts = list(corpus)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        fm = FMIndex.build([np.asarray(x, dtype=np.int64) for x in ids])
        return cls(model, tokenizer, fm, doc_ids, **kwargs)

    @torch.inference_mode()
    def generate_keys(self, query: str) -> list[tuple[tuple, float]]:
        """(n-gram token ids, log P(n|q)) from constrained beam search."""
        enc = self.tokenizer(self.prompt.format(query=query), return_tensors="pt").to(self.device)
        eos = self.tokenizer.eos_token_id
        plen = 1 if self.is_encoder_decoder else enc["input_ids"].shape[1]
        proc = FMIndexLogitsProcessor(self.fm, prompt_length=plen, eos_token_id=eos)
        out = self.model.generate(**enc, num_beams=self.beam, num_return_sequences=self.beam,
                                  max_new_tokens=self.key_length, do_sample=False, length_penalty=0.0,
                                  early_stopping=True, logits_processor=[proc], output_scores=True,
                                  return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id or eos)
        keys: dict[tuple, float] = {}
        for seq, score in zip(out.sequences[:, plen:].tolist(), out.sequences_scores.tolist()):
            toks = tuple(t for t in seq if t != eos and t != self.tokenizer.pad_token_id)
            if toks:
                keys[toks] = max(keys.get(toks, float("-inf")), float(score))
        return list(keys.items())

    def search(self, query: str, k: int = 10) -> Hits:
        """The top ``k`` documents for ``query``, from the n-grams that constrained beam search generates."""
        k = _check_k(k)
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        keys = self.generate_keys(query)
        grams = [g for g, _ in keys]
        counts = self.fm.count_batch(grams, threads=1).tolist() if grams else []
        weights = {g: ngram_weight(lp, c, self.fm.n_tokens, self.alpha, self.smoothing) for (g, lp), c in zip(keys, counts)}
        scores = seal_aggregate(self.fm, weights, beta=self.beta)
        ranked = sorted(scores, key=lambda d: (-scores[d], d))[:k]
        docnos = np.asarray(ranked, dtype=np.int64)
        return Hits(self.doc_ids[docnos] if len(docnos) else np.zeros(0, dtype=object),
                    np.asarray([scores[d] for d in ranked], dtype=np.float32), docnos)
