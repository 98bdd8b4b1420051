"""Prompt layouts for in-context reranking, built token span by token span so that every document's tokens are
known exactly. Chat tags follow the model family (ChatML for Qwen/SmolLM2, Llama-3 headers, Mistral [INST]), or
the tokenizer's own chat template for other families."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from .._io import check_int

CHAT_TAGS = {
    "chatml": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mistral": ("[INST] ", " [/INST]"),
    "none": ("", ""),
}


def chat_family(tokenizer: Any) -> str:
    """Guess the chat tags from the tokenizer's chat template: a known family by its markers; "template" for a
    template of another family (Gemma, Phi-3, ...) that renders one user message; else "none"."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = str(template)
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    return "template" if template and template_tags(tokenizer) is not None else "none"


_MARK = "irforge-user-message-7f3a"


def template_tags(tokenizer: Any) -> "tuple[str, str] | None":
    """(head, tail): the text the tokenizer's own chat template puts before and after one user message, with
    the generation prompt; None when it has no template or the template does not render such a message."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template may reject a lone user message; jinja and transformers raise many types
        return None
    if not isinstance(text, str) or text.count(_MARK) != 1:
        return None
    head, tail = text.split(_MARK)
    return head, tail


def chat_tags(tokenizer: Any, chat: "str | None") -> "tuple[str, tuple[str, str]]":
    """A reranker's ``chat`` argument (guessed by :func:`chat_family` when None) and its (head, tail) tags
    around the user message: a family of CHAT_TAGS, or "template" (the tokenizer's own chat template)."""
    chat = chat or chat_family(tokenizer)
    if chat == "template":
        tags = template_tags(tokenizer)
        if tags is None:
            raise ValueError("chat='template' needs a tokenizer whose chat template renders one user message")
        return chat, tags
    if chat not in CHAT_TAGS:
        raise ValueError(f"unknown chat tags {chat!r}; choose from {sorted(CHAT_TAGS) + ['template']}")
    return chat, CHAT_TAGS[chat]


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


def encode(tokenizer: Any, text: str, plain: bool = False) -> list[int]:
    """Token ids of ``text``, no BOS/EOS added. Template text (chat tags) is read with its special tokens;
    ``plain`` text (documents, queries: what users and corpora supply) is not: a document that holds
    "<|im_end|>" or "</s>" gets those characters' ordinary tokens, never the control token that would end a
    turn or the sequence inside the prompt."""
    return encode_many(tokenizer, [text], plain)[0]


def encode_many(tokenizer: Any, texts: list[str], plain: bool = False) -> list[list[int]]:
    """``encode`` of each text, in one tokenizer call."""
    if not texts:
        return []
    opts = {"split_special_tokens": True} if plain else {}
    return [list(x) for x in tokenizer(texts, add_special_tokens=False, **opts)["input_ids"]]


# truncate_many tokenises a character prefix of each text holding this many tokens past the budget: the tokens
# a cut can change lie at its end (within the last word for tokenizers that split words first)
_MARGIN = 16
_CHARS_PER_TOKEN = 6  # the first prefix's length per token; English BPE averages about 4
_LOCAL_MODELS = ("BPE", "WordPiece", "WordLevel")  # where a cut changes only the tokens next to it


def truncate_many(tokenizer: Any, texts: list[str], budget: int) -> list[tuple[list[int], bool]]:
    """Each (plain: see :func:`encode`) text's first ``budget`` tokens and whether it has more, equal to those
    of the whole text's tokenisation. With a fast tokenizer whose model is BPE, WordPiece or WordLevel, only a
    prefix is tokenised: (budget + 16) x 6 characters, doubled until it holds more than budget + 16 tokens or is
    the whole text, one tokenizer call per round for all texts; the 16 tokens past the budget absorb what the cut
    changes (tested against whole-text tokenisation with byte-level BPE, BPE without pre-tokenisation and
    word-level models, on SciFact and on runs of one character). A 5,000-token document cut to 300 tokens then
    costs about 300 tokens' work. Unigram models (a segmentation over the whole text: a long run of one
    character segments differently when cut) and slow tokenizers tokenise whole texts, in one call."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(model).__name__ not in _LOCAL_MODELS:
        return [(ids[:budget], len(ids) > budget) for ids in encode_many(tokenizer, texts, plain=True)]
    out: list = [None] * len(texts)
    todo = list(range(len(texts)))
    chars = (budget + _MARGIN) * _CHARS_PER_TOKEN
    while todo:
        pieces = [texts[i][:chars] for i in todo]
        later = []
        for i, piece, ids in zip(todo, pieces, encode_many(tokenizer, pieces, plain=True)):
            if len(piece) == len(texts[i]) or len(ids) > budget + _MARGIN:
                out[i] = (ids[:budget], len(ids) > budget)
            else:
                later.append(i)
        todo, chars = later, chars * 2
    return out


def check_query_docs(query: Any, docs: Any) -> list:
    """TypeError unless ``query`` is a str and ``docs`` a sequence of str (a single str is not: it would rank
    its characters); returns the documents as a list."""
    if not isinstance(query, str):
        raise TypeError(f"query must be str, got {type(query).__name__}")
    if isinstance(docs, (str, bytes)):
        raise TypeError("docs must be a sequence of documents, not a single string")
    docs = list(docs)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} must be str, got {type(d).__name__}")
    return docs


def check_batch(queries: Any, docs: Any) -> tuple[list[str], list[list[str]]]:
    """The arguments of ``rerank_batch``: as many document lists as queries, each checked by check_query_docs."""
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a sequence of queries, not a single string")
    queries, docs = list(queries), list(docs)
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries but {len(docs)} document lists")
    return queries, [check_query_docs(q, d) for q, d in zip(queries, docs)]


DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_device_dtype(device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """(torch.device or None, torch.dtype or None) from a device (a ``torch.device`` or its name: "cpu", "cuda",
    "cuda:1") and a dtype (torch.float32, bfloat16 or float16, or its name: "float32", "bfloat16", "float16";
    "fp32", "bf16", "fp16"); None stays None. Raises TypeError or ValueError naming the problem."""
    import torch

    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"unknown device {device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA device")
    if dtype is not None:
        if isinstance(dtype, str):
            if dtype.lower() not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(set(DTYPES.values()))}")
            dtype = getattr(torch, DTYPES[dtype.lower()])
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or its name, got {dtype!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype {dtype} is not supported by the attention kernels; use float32, bfloat16 or float16")
    return device, dtype


def place_model(model: Any, device: Any = None, dtype: Any = None) -> Any:
    """Moves and casts ``model`` in place (``nn.Module.to``) when ``device`` or ``dtype`` is given (see
    :func:`check_device_dtype`); None keeps the model's own. Returns the model."""
    device, dtype = check_device_dtype(device, dtype)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def check_batch_tokens(batch_tokens: Any, model: Any) -> int:
    """A reranker's ``batch_tokens``: a non-negative int, or None for 16,384 on a GPU and 0 (one prompt per forward
    pass) on the CPU."""
    if batch_tokens is None:
        return 16384 if next(model.parameters()).device.type == "cuda" else 0
    return check_int("batch_tokens", batch_tokens, 0)


class PositionCheck:
    """The model's position range (``max_position_embeddings``, or GPT-2's ``n_positions``) against the
    position ids a reranker is about to use. Past it, a model with learned position embeddings would index
    outside its table (an opaque IndexError on the CPU, a device-side assert on a GPU): ValueError instead. A
    rotary model runs on, at positions it was not trained on: one warning per reranker."""

    def __init__(self, model: Any, who: str) -> None:
        cfg = model.config
        self.limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.rotary = any("rotary" in type(m).__name__.lower() for m in model.modules())
        self.who, self.warned = who, False

    def __call__(self, last: int) -> None:
        """``last``: the largest position id of the coming forward pass."""
        if self.limit is None or last < self.limit:
            return
        msg = f"{self.who}: position id {last} is past the model's {self.limit} positions"
        if not self.rotary:
            raise ValueError(msg + " (learned position embeddings); use fewer or shorter documents")
        if not self.warned:
            self.warned = True
            warnings.warn(msg + "; rotary positions beyond its trained range may degrade the scores", stacklevel=3)


def batches(items: list, lengths: list[int], budget: int, padded: bool) -> list[list]:
    """``items`` cut into consecutive batches that cost at most ``budget`` tokens (an item over it goes alone): the
    sum of their lengths when packed, the count times the longest when padded."""
    out: list[list] = []
    cur: list = []
    total = longest = 0
    for item, n in zip(items, lengths):
        cost = (len(cur) + 1) * max(longest, n) if padded else total + n
        if cur and cost > budget:
            out.append(cur)
            cur, total, longest = [], 0, 0
        cur.append(item)
        total, longest = total + n, max(longest, n)
    if cur:
        out.append(cur)
    return out


def warn_truncated(name: str, truncated: list[list[int]], n_docs: list[int], budget: int) -> None:
    """One warning for all the documents of a call that were cut to the token budget."""
    cut = sum(map(len, truncated))
    if cut:
        warnings.warn(f"{name}: {cut} of {sum(n_docs)} documents cut to {budget} tokens", stacklevel=3)


def check_k(k: Any) -> Optional[int]:
    """``k`` of rerank / rerank_batch: None (all documents) or a positive int (numpy's integers too)."""
    return None if k is None else check_int("k", k, 1)


def check_model_tokenizer(model: Any, tokenizer: Any) -> None:
    """TypeError unless ``model`` is a torch module with a transformers config and ``tokenizer`` is callable (a
    transformers tokenizer), so that a wrong argument fails at construction, named, not at the first query."""
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers causal LM (a torch.nn.Module with a config), got "
                        f"{type(model).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, desc: str = "rerank") -> Any:
    """A tqdm progress bar when enabled and tqdm is installed, else one whose update and close do nothing."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc)
    return _NoBar()
