"""Prompt layout for in-context ranking: packed prompts, each an instruction segment, any number of document
segments and a final query segment, given by segment boundaries (cu_seqlens style), never by a dense mask.

Attention rules (BlockRank's layout):
  instruction tokens   attend causally among themselves;
  document tokens      attend to the whole instruction of their prompt and causally within their document;
  query tokens         attend causally to everything before them in their prompt.
So every row attends at most two contiguous key ranges: an unmasked "prefix" range (the instruction, for
document rows) and a causal range [start, row] (own segment for instruction and document rows, the whole
prompt so far for query rows).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SegmentLayout", "INSTRUCTION", "DOCUMENT", "QUERY"]

INSTRUCTION, DOCUMENT, QUERY = 0, 1, 2


@dataclass(frozen=True, eq=False)
class SegmentLayout:
    """Segments of packed prompts.

    cu_seqlens : int64 [S + 1], increasing from 0 to T: segment s covers tokens [cu_seqlens[s], cu_seqlens[s+1]).
    kinds      : int64 [S], per segment INSTRUCTION (0), DOCUMENT (1) or QUERY (2); each prompt is one instruction
                 segment, zero or more document segments, one query segment. Any segment may be empty.
    Both are kept as read-only copies: the kernels keep tables built from a layout (:meth:`memo`), which an edit
    in place would leave describing another layout (on a GPU, tiles past the tensors' ends). Build a new layout
    instead; ``torch.tensor(layout.cu_seqlens)`` copies them into a tensor (``torch.as_tensor`` would share the
    read-only memory, and PyTorch warns about that once). Layouts of equal arrays are equal and hash alike; a
    copy or a pickle carries the arrays only, not the kept tables (which may hold GPU tensors).
    """

    cu_seqlens: np.ndarray
    kinds: np.ndarray

    def __post_init__(self) -> None:
        given = {name: np.asarray(getattr(self, name)) for name in ("cu_seqlens", "kinds")}
        for name, a in given.items():
            if a.dtype.kind not in "iu" and a.size:  # a cast would truncate 1.5 to 1 without a word
                raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
        cu = given["cu_seqlens"].astype(np.int64)
        kinds = given["kinds"].astype(np.int64)
        if cu.ndim != 1 or kinds.ndim != 1 or len(cu) != len(kinds) + 1:
            raise ValueError(f"cu_seqlens must have one more entry than kinds, got {cu.shape} and {kinds.shape}")
        if len(kinds) == 0:
            raise ValueError("a layout needs at least one prompt (instruction and query segments)")
        if cu[0] != 0 or np.any(np.diff(cu) < 0):
            raise ValueError("cu_seqlens must start at 0 and never decrease")
        expect_instruction = True
        for s, k in enumerate(kinds.tolist()):
            if k not in (INSTRUCTION, DOCUMENT, QUERY):
                raise ValueError(f"segment {s} has kind {k}; kinds are 0 (instruction), 1 (document), 2 (query)")
            if expect_instruction != (k == INSTRUCTION):
                raise ValueError(f"segment {s}: each prompt is an instruction, documents, then a query")
            expect_instruction = k == QUERY
        if not expect_instruction:
            raise ValueError("the last prompt has no query segment")
        for a in (cu, kinds):  # copies of what was given; read-only, since the kernels keep tables built from them
            a.setflags(write=False)
        object.__setattr__(self, "cu_seqlens", cu)
        object.__setattr__(self, "kinds", kinds)

    @classmethod
    def from_lengths(cls, prompts: Sequence[tuple[int, Sequence[int], int]]) -> "SegmentLayout":
        """From (instruction length, [document lengths], query length) per prompt."""
        lens, kinds = [], []
        for n, prompt in enumerate(prompts):
            if (not isinstance(prompt, Sequence) or isinstance(prompt, str) or len(prompt) != 3
                    or not isinstance(prompt[1], (Sequence, np.ndarray)) or isinstance(prompt[1], str)):
                raise TypeError(f"prompt {n} must be (instruction length, [document lengths], query length), got "
                                f"{prompt!r}")
            inst, docs, query = prompt
            lens += [inst, *docs, query]
            kinds += [INSTRUCTION] + [DOCUMENT] * len(docs) + [QUERY]
        for x in lens:
            if not isinstance(x, numbers.Integral) or isinstance(x, bool):
                raise TypeError(f"segment lengths must be ints, got {x!r}")
        if any(x < 0 for x in lens):
            raise ValueError("segment lengths must be non-negative")
        if sum(lens) >= 2**62:  # int64 offsets
            raise ValueError(f"the segments hold {sum(lens)} tokens, beyond the 2**62 that int64 offsets allow")
        return cls(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), np.asarray(kinds, dtype=np.int64))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentLayout):
            return NotImplemented
        return np.array_equal(self.cu_seqlens, other.cu_seqlens) and np.array_equal(self.kinds, other.kinds)

    def __hash__(self) -> int:
        return hash((self.cu_seqlens.tobytes(), self.kinds.tobytes()))

    def __reduce__(self):
        """Copies and pickles rebuild the layout from its arrays (checked again, read-only again), without the
        tables the kernels keep on it."""
        return type(self), (self.cu_seqlens, self.kinds)

    @property
    def total_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    def memo(self, key, build):
        """``build()``, computed once per layout and key (device tables the kernels reuse on every call: a model
        calls the kernels once per layer with the same layout)."""
        cache = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def _segment_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per segment: start, end, start of its prompt, end of its prompt's instruction, start of its prompt's
        query."""
        a, b = self.cu_seqlens[:-1], self.cu_seqlens[1:]
        inst = np.flatnonzero(self.kinds == INSTRUCTION)
        prompt = np.cumsum(self.kinds == INSTRUCTION) - 1
        return a, b, a[inst][prompt], b[inst][prompt], a[self.kinds == QUERY][prompt]

    def segments(self):
        """(start, end, kind, prompt start, instruction end) per segment."""
        a, b, p0, i1, _ = self._segment_arrays()
        return zip(a.tolist(), b.tolist(), self.kinds.tolist(), p0.tolist(), i1.tolist())

    def _segment_ranges(self) -> np.ndarray:
        """Per segment: [prefix start, prefix end, causal start], int64 [S, 3]."""
        a, _, p0, i1, _ = self._segment_arrays()
        doc = self.kinds == DOCUMENT
        return np.stack([np.where(doc, p0, 0), np.where(doc, i1, 0), np.where(self.kinds == QUERY, p0, a)], 1)

    def row_ranges(self) -> np.ndarray:
        """Per token: [prefix start, prefix end, causal start], int64 [T, 3]; the row attends
        [prefix start, prefix end) and [causal start, row]."""
        return self._segment_ranges()[self.segment_ids()]

    def document_ranges(self) -> np.ndarray:
        """Per segment: its prompt's documents as one token range [start, end), int64 [S, 2]. They lie back to
        back between the prompt's instruction and its query."""
        _, _, _, i1, q0 = self._segment_arrays()
        return np.stack([i1, q0], 1)

    def prompt_starts(self) -> np.ndarray:
        """Per token: the first token of its prompt, int64 [T]."""
        return self._segment_arrays()[2][self.segment_ids()]

    def tiles(self, block_m: int) -> np.ndarray:
        """Query tiles that never straddle a segment: int32 [n_tiles, 5] of
        (row start, row end, prefix start, prefix end, causal start)."""
        if isinstance(block_m, bool) or not isinstance(block_m, numbers.Integral) or block_m < 1:
            raise ValueError(f"block_m must be a positive int, got {block_m!r}")
        a, b = self.cu_seqlens[:-1], self.cu_seqlens[1:]
        per_seg = -(-(b - a) // block_m)
        seg = np.repeat(np.arange(len(a)), per_seg)
        j = np.arange(len(seg)) - np.repeat(np.cumsum(per_seg) - per_seg, per_seg)
        start = a[seg] + j * block_m
        return np.column_stack([start, np.minimum(start + block_m, b[seg]), self._segment_ranges()[seg]]).astype(
            np.int32).reshape(-1, 5)

    def allowed_pairs(self) -> int:
        """Number of (query, key) pairs the layout allows."""
        r = self.row_ranges()
        t = np.arange(self.total_tokens)
        return int(((r[:, 1] - r[:, 0]) + (t - r[:, 2] + 1)).sum())

    def dense_mask(self, device=None) -> torch.Tensor:
        """Boolean [T, T] mask (True = allowed), for references and tests only: O(T^2) memory."""
        T = self.total_tokens
        r = torch.as_tensor(self.row_ranges(), device=device)
        j = torch.arange(T, device=device)[None, :]
        i = torch.arange(T, device=device)[:, None]
        return ((j >= r[:, :1]) & (j < r[:, 1:2])) | ((j >= r[:, 2:3]) & (j <= i))

    def key_kinds(self) -> np.ndarray:
        """Segment kind of every token, int64 [T]."""
        return self.kinds[self.segment_ids()]

    def segment_ids(self) -> np.ndarray:
        """Segment index of every token, int64 [T]."""
        return np.repeat(np.arange(len(self.kinds)), np.diff(self.cu_seqlens))
