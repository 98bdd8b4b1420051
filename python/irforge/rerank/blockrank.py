"""BlockRank ("Scalable In-context Ranking with Generative Models", 2025), zero-shot on Llama, Mistral or Qwen-style
causal LMs, on irforge's block-sparse attention kernel.

Prompt: an instruction that includes the query; each document its own segment "ID: i | CONTENT: text | END ID: i";
a final query segment ending in "Final Answer: [". Positions: instruction 0..L0-1, every document restarting at L0,
the query segment at a large offset (``query_offset``, BlockRank uses 8192 or 16384). Attention follows BlockRank's
layout (documents see the instruction and themselves; the query sees everything) through
irforge.kernels.block_sparse_attention, installed as a transformers attention function. The forward pass stops
after a middle layer (default: the layer at 5/8 of the depth; BlockRank: 20 of 32), where
S(q, d) = softmax over document tokens only, from the last two query tokens, averaged over heads, summed over
each document's tokens. The auxiliary contrastive loss (InfoNCE over S(q, d), temperature 0.05) is exposed for
fine-tuning (:meth:`BlockRankReranker.loss`).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import threading
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from transformers import AttentionInterface

from .._io import check_flag, check_int
from ..kernels import DOCUMENT, SegmentLayout, attention_mass, block_sparse_attention
from ..kernels._checks import check_backend
from .attention import check_attention_kwargs
from .icr import RerankResult
from .prompts import (PositionCheck, _progress, batches, chat_tags, check_batch, check_batch_tokens,
                      check_k, check_model_tokenizer, check_query_docs, encode, encode_many, place_model,
                      truncate_many, warn_truncated)

__all__ = ["BlockRankReranker", "BLOCKRANK_ATTENTION", "blockrank_scores_eager"]

BLOCKRANK_ATTENTION = "irforge_blockrank"
_state = threading.local()


class _StopForward(Exception):
    """Raised by the attention function after the scoring layer: the remaining layers never run."""


def _blockrank_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: Optional[torch.Tensor], **kwargs: Any):
    ctx = getattr(_state, "ctx", None)
    if ctx is None:
        raise RuntimeError("the BlockRank attention function runs only inside BlockRankReranker")
    if query.shape[0] != 1:
        raise ValueError("BlockRank packs its prompts into one sequence (batch size 1)")
    check_attention_kwargs(kwargs, "BlockRank's block-sparse attention")
    window = kwargs.get("sliding_window")
    if window is not None and ctx["longest"] > window and not ctx["warned"]:
        ctx["warned"] = True  # once per forward pass
        warnings.warn(f"BlockRank: this model's layers have a sliding window of {window} tokens, shorter than a "
                      "prompt; BlockRank's layout replaces the window (documents attend to the instruction and "
                      "themselves, the query segment to its whole prompt)", stacklevel=2)  # one text: shown once
    layout: SegmentLayout = ctx["layout"]
    scaling = float(kwargs.get("scaling") or module.scaling)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    backend = ctx["backend"]
    out, _ = block_sparse_attention(q, k, v, layout, scale=scaling, backend=backend)
    if module.layer_idx == ctx["layer"]:
        rows = ctx["rows"].to(q.device)  # (no-ops unless the model is split over devices)
        seg = attention_mass(q[rows], rows, k, layout, weights=ctx["weights"].to(q.device),
                             mode="documents", scale=scaling, reduce="segment", sum_heads=True, backend=backend)
        ctx["scores"] = seg[ctx["doc_segments"].to(q.device)] / q.shape[1]  # averaged over heads
        raise _StopForward()
    return out[None], None


def _no_mask(*args: Any, **kwargs: Any):  # the layout, not a T x T mask, says who attends to whom
    return None


AttentionInterface.register(BLOCKRANK_ATTENTION, _blockrank_attention)
try:
    from transformers.masking_utils import AttentionMaskInterface

    AttentionMaskInterface.register(BLOCKRANK_ATTENTION, _no_mask)
except ImportError:
    pass


class BlockRankReranker:
    """BlockRank scoring with any Hugging Face Llama, Mistral or Qwen-style causal LM. BlockRank's layout replaces
    the model's causal mask and any sliding window (a warning says so when a prompt is longer than the window);
    models whose attention soft-caps its logits or adds sink logits raise ValueError. BlockRank is meant for
    models fine-tuned on its layout (:meth:`loss`): zero-shot, SmolLM2-135M ranks SciFact near chance, and 169
    steps of the loss on other queries raise held-out nDCG@10 from 0.23 to 0.61 (bench/RESULTS.md).

    Parameters
    ----------
    layer : the layer whose attention scores documents (default: int(5/8 * depth)); later layers do not run.
    query_offset : position id of the query segment's first token (default 8192). Past the model's position
        range (``max_position_embeddings``) a rotary model warns once; one with learned positions raises.
    max_doc_tokens : token budget per document; longer documents are cut, and the result says which.
    chat : chat tags ("chatml", "llama3", "mistral", "none", or "template": the tokenizer's own chat template
        around the instruction and query); guessed from the tokenizer's template when None.
    backend : attention backend ("auto": Triton on CUDA, PyTorch on the CPU and wherever autograd needs a
        gradient, as in fine-tuning with :meth:`loss`; "triton" raises there: its kernels are forward only).
    batch_tokens : :meth:`rerank_batch` packs consecutive prompts into one forward pass (the block-sparse layout
        keeps them apart) while their total length stays within this many tokens; 0 runs one prompt at a time.
        None (default): 16,384 on a GPU, 0 on the CPU (where packing measured 1.2x slower: bench/RESULTS.md).
    device, dtype : when given, the model is moved and cast to them in place ("cuda", torch.bfloat16, ...);
        None keeps its own.
    """

    INSTRUCTION = ("You will be given a query and a list of documents, each between 'ID: i | CONTENT:' and "
                   "'| END ID: i'. Find the document that best answers the query.\nQuery: {query}\n")

    def __init__(self, model: Any, tokenizer: Any, *, layer: Optional[int] = None, query_offset: int = 8192,
                 max_doc_tokens: int = 300, chat: Optional[str] = None, backend: str = "auto",
                 progress: bool = False, batch_tokens: Optional[int] = None, device: Any = None,
                 dtype: Any = None) -> None:
        check_model_tokenizer(model, tokenizer)
        depth = model.config.num_hidden_layers
        self.layer = int(depth * 5 / 8) if layer is None else check_int("layer", layer, 0)
        if not self.layer < depth:
            raise ValueError(f"layer must lie in [0, {depth}), got {layer}")
        max_doc_tokens = check_int("max_doc_tokens", max_doc_tokens, 1)
        query_offset = check_int("query_offset", query_offset, 0)
        check_backend(backend)
        chat, self._tags = chat_tags(tokenizer, chat)
        self.model, self.tokenizer = place_model(model, device, dtype), tokenizer
        self.query_offset, self.max_doc_tokens, self.chat, self.backend = query_offset, max_doc_tokens, chat, backend
        self.progress = check_flag("progress", progress)
        self.batch_tokens = check_batch_tokens(batch_tokens, model)
        self._positions = PositionCheck(model, "BlockRank")
        self._body = getattr(model, "base_model", model)  # the transformer without its LM head

    def build(self, query: str, docs: Sequence[str]):
        """(input ids [1, T], position ids [1, T], layout, document segment indices, query rows, truncated)."""
        ids, pos, lens, truncated = self._encode(query, docs)
        ids_t, pos_t, layout, doc_segments, rows, _ = self._pack([(ids, pos, lens)])
        return ids_t, pos_t, layout, doc_segments[0], rows, truncated

    def _pack(self, prompts):
        """Prompts (ids, positions, (instruction, [documents], query) lengths) packed into one sequence:
        (input ids [1, T], position ids [1, T], layout, per prompt its document segment indices, the scoring
        rows (each prompt's last two query tokens), their weights (1 / rows of their prompt))."""
        dev = next(self.model.parameters()).device
        ids, pos, rows, weights, doc_segments = [], [], [], [], []
        seg = 0
        for p_ids, p_pos, (inst, lens, qlen) in prompts:
            end = len(ids) + len(p_ids)
            r = list(range(end - min(2, qlen), end))
            rows += r
            weights += [1.0 / len(r)] * len(r)
            doc_segments.append(torch.arange(seg + 1, seg + 1 + len(lens), device=dev))
            seg += len(lens) + 2
            ids += p_ids
            pos += p_pos
        layout = SegmentLayout.from_lengths([lens for _, _, lens in prompts])
        return (torch.tensor([ids], device=dev), torch.tensor([pos], device=dev), layout, doc_segments,
                torch.tensor(rows, device=dev), torch.tensor(weights, dtype=torch.float32))

    def _encode(self, query: str, docs: Sequence[str]):
        """(token ids, position ids, (instruction, [document], query) lengths, truncated documents)."""
        tok = self.tokenizer
        head, tail = self._tags
        inst = encode(tok, head) + encode(tok, self.INSTRUCTION.format(query=query), plain=True)  # query: plain
        if tok.bos_token_id is not None and not (tok.bos_token and head.startswith(tok.bos_token)):
            inst = [tok.bos_token_id] + inst
        ids, pos, lens, truncated = list(inst), list(range(len(inst))), [], []
        marks = encode_many(tok, [m for i in range(len(docs)) for m in (f"ID: {i + 1} | CONTENT: ",
                                                                         f" | END ID: {i + 1}\n")])
        for i, (body, cut) in enumerate(truncate_many(tok, list(docs), self.max_doc_tokens)):
            if cut:
                truncated.append(i)
            seg = marks[2 * i] + body + marks[2 * i + 1]
            ids += seg
            pos += list(range(len(inst), len(inst) + len(seg)))
            lens.append(len(seg))
        qseg = encode(tok, f"Query: {query}", plain=True) + encode(tok, tail + "Final Answer: [")
        ids += qseg
        pos += list(range(self.query_offset, self.query_offset + len(qseg)))
        return ids, pos, (len(inst), lens, len(qseg)), truncated

    @contextlib.contextmanager
    def _active(self, ctx):
        prev_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(BLOCKRANK_ATTENTION)
        prev_ctx = getattr(_state, "ctx", None)
        _state.ctx = ctx
        try:
            yield
        finally:
            _state.ctx = prev_ctx
            self.model.set_attn_implementation(prev_impl)

    def scores(self, query: str, docs: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """S(q, d) for each document (in the order given), differentiable when gradients are enabled. Then, with
        a model whose weights require gradients (transformers' default), backend "auto" runs the PyTorch paths,
        not the Triton kernels: on an H100 with a Mistral-7B-shaped model about 4x slower than :meth:`rerank`,
        which scores under ``torch.inference_mode()``. Call this inside ``torch.inference_mode()`` (or
        ``torch.no_grad()``) when no gradient is wanted."""
        docs = check_query_docs(query, docs)
        encoded = self._encode(query, docs)
        (s,) = self._run([encoded[:3]])
        warn_truncated("BlockRank", [encoded[3]], [len(docs)], self.max_doc_tokens)
        return s, encoded[3]

    def _run(self, prompts) -> list[torch.Tensor]:
        """One forward pass over packed prompts; S(q, d) per prompt."""
        self._positions(max(max(p_pos) for _, p_pos, _ in prompts))  # before the pass
        ids, pos, layout, doc_segments, rows, weights = self._pack(prompts)
        ctx = {"layout": layout, "layer": self.layer, "rows": rows, "weights": weights,
               "doc_segments": torch.cat(doc_segments), "backend": self.backend, "scores": None,
               "longest": max(len(p[0]) for p in prompts), "warned": False}
        with self._active(ctx):
            try:
                self._body(input_ids=ids, position_ids=pos, use_cache=False)
            except _StopForward:
                pass
        if ctx["scores"] is None:
            raise RuntimeError(f"layer {self.layer} never ran")
        return list(torch.split(ctx["scores"], [len(d) for d in doc_segments]))

    def rerank_batch(self, queries: Any, docs: Any, k: Any = None) -> list[RerankResult]:
        """``rerank`` for each (query, documents) pair, prompts packed into forward passes of at most
        ``batch_tokens`` tokens (a longer prompt runs alone); the scores equal one-prompt-at-a-time scoring."""
        k = check_k(k)
        queries, docs = check_batch(queries, docs)
        out: list[Optional[RerankResult]] = [None] * len(queries)
        todo = []
        for i, (q, d) in enumerate(zip(queries, docs)):
            if not d:
                out[i] = RerankResult.ranked(np.zeros(0), k, [])
            else:
                todo.append((i, self._encode(q, d)))
        packs = batches(todo, [len(enc[0]) for _, enc in todo], self.batch_tokens, padded=False)
        bar = _progress(self.progress, len(todo), type(self).__name__)
        for pack in packs:
            with torch.inference_mode():
                got = self._run([enc[:3] for _, enc in pack])
            for (i, enc), s in zip(pack, got):
                out[i] = RerankResult.ranked(s.double().cpu().numpy(), k, enc[3])
            bar.update(len(pack))
        bar.close()
        warn_truncated("BlockRank", [enc[3] for _, enc in todo], [len(docs[i]) for i, _ in todo], self.max_doc_tokens)
        return out  # type: ignore[return-value]

    def rerank(self, query: str, docs: Sequence[str], k: Optional[int] = None) -> RerankResult:
        k = check_k(k)
        docs = check_query_docs(query, docs)
        if not docs:
            return RerankResult.ranked(np.zeros(0), k, [])
        with torch.inference_mode():
            s, truncated = self.scores(query, docs)
        return RerankResult.ranked(s.double().cpu().numpy(), k, truncated)

    def loss(self, query: str, docs: Sequence[str], positive: int, temperature: float = 0.05) -> torch.Tensor:
        """BlockRank's auxiliary contrastive loss: InfoNCE over S(q, d) / temperature with document ``positive``
        as the target. Differentiable with backends "auto" and "torch" (both run the PyTorch paths here)."""
        if isinstance(positive, bool) or not isinstance(positive, numbers.Integral):
            raise TypeError(f"positive must be an int (a document's index), got {type(positive).__name__}")
        if not 0 <= positive < len(docs):
            raise IndexError(f"positive {positive} out of range for {len(docs)} documents")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
        s, _ = self.scores(query, docs)
        logits = (s / temperature)[None]
        return torch.nn.functional.cross_entropy(logits, torch.tensor([positive], device=logits.device))


def blockrank_scores_eager(model: Any, reranker: BlockRankReranker, query: str, docs: Sequence[str]) -> torch.Tensor:
    """Reference S(q, d): the masked dense computation. ``model`` (same weights, attn_implementation="eager")
    runs the whole prompt with an additive float [T, T] mask built from the layout and the same position ids;
    the last two query rows' probabilities at the scoring layer, renormalised over document keys (which equals
    the softmax over document keys only), averaged over rows and heads, summed per document. O(layers * heads *
    T^2) memory."""
    ids, pos, layout, _, rows, _ = reranker.build(query, docs)
    allowed = layout.dense_mask(device=ids.device)
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=ids.device)
    mask = mask.masked_fill(~allowed, torch.finfo(torch.float32).min)  # additive: a boolean 4D mask leaks mass
    with torch.inference_mode():
        out = getattr(model, "base_model", model)(input_ids=ids, position_ids=pos, attention_mask=mask[None, None],
                                                  output_attentions=True)
    p = out.attentions[reranker.layer][0].double()  # [H, T, T]
    doc = torch.as_tensor(layout.key_kinds() == DOCUMENT, device=p.device)
    pr = p[:, rows][:, :, doc]
    pr = pr / pr.sum(-1, keepdim=True)
    per_key = torch.zeros(p.shape[-1], dtype=torch.float64, device=p.device)
    per_key[doc] = pr.mean(1).mean(0)
    seg = torch.as_tensor(layout.segment_ids(), device=p.device)
    return torch.zeros(len(layout.kinds), dtype=torch.float64, device=p.device).index_add_(0, seg, per_key)[1:1 + len(docs)]
