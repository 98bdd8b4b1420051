"""Prompt layouts for in-context reranking, built token span by token span so that every document's tokens are
known exactly. Chat tags follow the model family (ChatML for Qwen/SmolLM2, Llama-3 headers, Mistral [INST])."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHAT_TAGS = {
    "chatml": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mistral": ("[INST] ", " [/INST]"),
    "none": ("", ""),
}


def chat_family(tokenizer: Any) -> str:
    """Guess the chat tags from the tokenizer's chat template."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = str(template)
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    return "none"


@dataclass
class Prompt:
    """Token ids of a prompt, with the span of each document (in the order given) and where the query part starts."""

    ids: list[int] = field(default_factory=list)
    doc_spans: list[tuple[int, int]] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)  # documents cut to the token budget

    def add(self, ids: list[int]) -> tuple[int, int]:
        start = len(self.ids)
        self.ids.extend(ids)
        return start, len(self.ids)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate(tokenizer: Any, text: str, budget: int) -> tuple[list[int], bool]:
    ids = encode(tokenizer, text)
    return (ids[:budget], True) if len(ids) > budget else (ids, False)


def check_query_docs(query: Any, docs: Any) -> list:
    """TypeError unless ``query`` is a str and ``docs`` a sequence of str; returns the documents as a list."""
    if not isinstance(query, str):
        raise TypeError(f"query must be str, got {type(query).__name__}")
    docs = list(docs)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} must be str, got {type(d).__name__}")
    return docs


class BatchMixin:
    """``rerank_batch`` for rerankers with ``rerank(query, docs, k)``: one prompt per query, in order, with a
    progress bar when ``self.progress`` is set (tqdm, if installed)."""

    progress = False

    def rerank_batch(self, queries: Any, docs: Any, k: Any = None) -> list:
        queries, docs = list(queries), list(docs)
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} document lists")
        bar = _progress(self.progress, len(queries), type(self).__name__)
        out = []
        for q, d in zip(queries, docs):
            out.append(self.rerank(q, d, k))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out


def check_k(k: Any) -> None:
    """``k`` of rerank / rerank_batch: None (all documents) or a positive int."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
        raise ValueError(f"k must be a positive int, got {k!r}")


def _progress(enabled: bool, total: int, desc: str = "rerank") -> Any:
    """A tqdm progress bar when enabled and tqdm is installed, else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc)
