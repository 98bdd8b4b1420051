"""FM-index over token-id sequences (or UTF-8 strings), in C++: count, locate, document frequencies,
extract and exact next-token distributions, for n-gram retrieval and constrained decoding."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from . import _core
from ._io import atomic_save, check_threads, existing_file

__all__ = ["FMIndex", "MAX_TOKEN_ID", "SuffixRange"]

#: Largest token id the index stores (ids are kept as 32-bit values after a shift of 2).
MAX_TOKEN_ID = 2**32 - 3

PathLike = Union[str, "os.PathLike[str]"]
Tokens = Union[Sequence[int], np.ndarray, str, bytes]


class SuffixRange(NamedTuple):
    """Rows ``[sp, ep)`` of the suffix array whose suffixes start with a pattern; ``ep - sp`` is its count."""

    sp: int
    ep: int

    @property
    def count(self) -> int:
        return self.ep - self.sp

    def __bool__(self) -> bool:
        return self.ep > self.sp


def _as_tokens(x: Any, what: str, byte_mode: Optional[bool]) -> np.ndarray:
    """Validate one document or pattern and return it as int64 ids."""
    if isinstance(x, str):
        if byte_mode is False:
            raise TypeError(f"{what} is a str, but this index holds token ids")
        return np.frombuffer(x.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    if isinstance(x, (bytes, bytearray, memoryview)):
        if byte_mode is False:
            raise TypeError(f"{what} is bytes, but this index holds token ids")
        return np.frombuffer(bytes(x), dtype=np.uint8).astype(np.int64)
    if byte_mode is True:
        raise TypeError(f"{what} must be str or bytes for an index built from strings")
    if isinstance(x, (list, tuple)) and all(type(t) is int for t in x):  # fast path: plain Python ints
        if x and min(x) < 0:
            raise ValueError(f"{what} holds a negative token id ({min(x)})")
        if x and max(x) > MAX_TOKEN_ID:
            raise ValueError(f"{what} holds token id {max(x)}, above the largest supported id {MAX_TOKEN_ID}")
        return np.array(x, dtype=np.int64)
    if isinstance(x, np.ndarray):
        if x.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {x.shape}")
        if x.dtype.kind not in "iu" and x.size:
            raise TypeError(f"{what} has dtype {x.dtype}; token ids must be integers")
        arr = x.astype(np.int64, copy=False) if x.dtype != np.uint64 else x
    else:
        try:
            seq = list(x)
        except TypeError:
            raise TypeError(f"{what} must be a sequence of int token ids, got {type(x).__name__}") from None
        for i, t in enumerate(seq):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"{what}: token {i} must be an int, got {type(t).__name__}")
        arr = np.array(seq, dtype=np.int64) if seq else np.zeros(0, dtype=np.int64)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"{what} holds a negative token id ({lo})")
        if hi > MAX_TOKEN_ID:
            raise ValueError(f"{what} holds token id {hi}, above the largest supported id {MAX_TOKEN_ID}")
    return arr.astype(np.int64, copy=False)


def _doc_tokens(x: Any, what: str, byte_mode: bool) -> np.ndarray:
    """A document's ids, validated without widening arrays of a small unsigned dtype."""
    if isinstance(x, np.ndarray) and not byte_mode and x.ndim == 1 and x.dtype in (np.uint8, np.uint16, np.uint32):
        if x.size and int(x.max()) > MAX_TOKEN_ID:
            raise ValueError(f"{what} holds token id {int(x.max())}, above the largest supported id {MAX_TOKEN_ID}")
        return x
    return _as_tokens(x, what, byte_mode)


def _pattern(p: Any, byte_mode: bool):
    """A validated pattern: the list itself when it is a plain list of ints (the binding converts it), else an
    int64 array."""
    if type(p) is list and p and not byte_mode and all(type(t) is int for t in p):
        if min(p) < 0:
            raise ValueError(f"pattern holds a negative token id ({min(p)})")
        if max(p) > MAX_TOKEN_ID:
            raise ValueError(f"pattern holds token id {max(p)}, above the largest supported id {MAX_TOKEN_ID}")
        return p
    arr = _as_tokens(p, "pattern", byte_mode)
    if arr.size == 0:
        raise ValueError("pattern is empty")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _flatten(patterns: Iterable[Any], byte_mode: bool, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(patterns, (str, bytes)):
        raise TypeError("expected a sequence of patterns, not a single pattern")
    if not byte_mode:  # equal-length patterns: validate and flatten in one vectorised step
        try:
            grid = np.asarray(patterns)
        except (ValueError, TypeError):
            grid = None
        if grid is not None and grid.ndim == 2 and grid.dtype.kind in "iu" and (grid.shape[1] > 0 or allow_empty):
            flat = _as_tokens(grid.ravel(), "patterns", False)
            offsets = np.arange(grid.shape[0] + 1, dtype=np.int64) * grid.shape[1]
            return np.ascontiguousarray(flat, dtype=np.int64), offsets
    arrs = []
    for i, p in enumerate(patterns):
        a = _as_tokens(p, f"pattern {i}", byte_mode)
        if a.size == 0 and not allow_empty:
            raise ValueError(f"pattern {i} is empty")
        arrs.append(a)
    offsets = np.zeros(len(arrs) + 1, dtype=np.int64)
    if arrs:
        offsets[1:] = np.cumsum([a.size for a in arrs])
    flat = np.concatenate(arrs).astype(np.int64) if arrs else np.zeros(0, dtype=np.int64)
    return flat, offsets


class FMIndex:
    """A compressed full-text index over documents of token ids (or of UTF-8 bytes, from strings).

    Counting and next-token queries never look at the text: they run on the Burrows-Wheeler transform in a
    wavelet matrix. The index is built over the reversed documents, so a pattern's suffix range can be
    extended one token at a time (:meth:`extend`), the way a decoder produces tokens.

    Examples
    --------
    >>> fm = FMIndex.build([[5, 6, 7, 2], [6, 7, 8, 2], [5, 6, 2]])
    >>> fm.count([6])
    3
    >>> fm.next_tokens([6])
    (array([2, 7]), array([1, 2]))
    """

    def __init__(self, core: Any, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use FMIndex.build(...) or FMIndex.load(...)")
        self._core = core
        self._byte_mode = bool(core.byte_mode)

    @classmethod
    def build(cls, docs: Iterable[Tokens], *, sample_rate: int = 8, next_cache: Optional[int] = None) -> "FMIndex":
        """Index documents: sequences or 1-D arrays of non-negative integer token ids (up to
        :data:`MAX_TOKEN_ID`), or strings (indexed as their UTF-8 bytes), all of one kind.

        ``sample_rate``: one suffix-array sample per that many text positions. Locating an occurrence walks
        (sample_rate - 1) / 2 steps on average; each sample costs about log2(n / sample_rate) bits plus one
        bit per token for the sampled-row marks. The default, 8, keeps a 50k-token BPE corpus under 2 bytes
        per token; 32 saves about a quarter of a byte per token and locates four times slower.

        ``next_cache``: bytes for precomputed :meth:`next_tokens` distributions of the most frequent 2-token
        prefixes, most frequent first (None: 2.5% of the rest of the index; 0: none). Enumerating a prefix's
        continuations costs 50-150 ns each, and the most frequent prefixes have thousands; a stored
        continuation costs about 3 ns. Results are the same with or without it.
        """
        if isinstance(docs, (str, bytes, np.ndarray)) and not (isinstance(docs, np.ndarray) and docs.ndim == 2):
            raise TypeError("docs must be an iterable of documents, not a single document")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not 1 <= sample_rate <= 2**20:
            raise ValueError(f"sample_rate must be an int in [1, 2**20], got {sample_rate!r}")
        if next_cache is not None and (isinstance(next_cache, bool) or not isinstance(next_cache, (int, np.integer))
                                       or not 0 <= next_cache < 2**62):
            raise ValueError(f"next_cache must be None or a non-negative int of bytes, got {next_cache!r}")
        items = list(docs)
        if not items:
            raise ValueError("cannot build an FM-index over an empty corpus")
        byte_mode = isinstance(items[0], (str, bytes, bytearray))
        # The engine reads each document in place: uint16 arrays when every id allows it, else uint32.
        # Documents are narrowed one at a time, so no int64 copy of the corpus is ever held.
        arrs = []
        for i, d in enumerate(items):
            a = _doc_tokens(d, f"document {i}", byte_mode)
            if a.dtype not in (np.uint16, np.uint32) or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=np.uint16 if a.size == 0 or int(a.max()) < 2**16 else np.uint32)
            arrs.append(a)
        if any(a.dtype == np.uint32 for a in arrs):  # one dtype for all: widen the uint16 ones
            arrs = [a if a.dtype == np.uint32 else a.astype(np.uint32) for a in arrs]
        budget = -1 if next_cache is None else int(next_cache)  # -1: the engine's default, 2.5% of the index
        return cls(_core.FMIndex.build(arrs, int(sample_rate), byte_mode, budget), _TOKEN)

    @classmethod
    def load(cls, path: PathLike, *, mmap: bool = True, verify: bool = True) -> "FMIndex":
        """Open an index written by :meth:`save`; magic, version, sizes and (with ``verify``) checksums are
        checked first. A damaged file raises ValueError. Files of formats 2 and 3 (earlier irforge versions)
        load too; :meth:`save` writes the current format, 4. ``mmap=True`` maps the file (pages shared between
        processes); ``mmap=False`` reads it into memory, on transparent huge pages where Linux allows them.
        Queries ran at the same speed either way on a 25 MB index (bench/RESULTS.md)."""
        return cls(_core.FMIndex.load(existing_file(path), bool(mmap), bool(verify)), _TOKEN)

    def save(self, path: PathLike) -> None:
        """Write atomically: a temporary file in the same directory, fsynced, renamed over ``path``."""
        atomic_save(path, self._core.save)

    # ---- queries ---------------------------------------------------------------------------------
    def range(self, pattern: Tokens) -> SuffixRange:
        """The suffix-array range of ``pattern`` (empty when it does not occur)."""
        return SuffixRange(*self._core.range(_pattern(pattern, self._byte_mode)))

    def full_range(self) -> SuffixRange:
        """The range of the empty pattern: every suffix."""
        return SuffixRange(0, int(self._core.n))

    def extend(self, r: SuffixRange, token: int) -> SuffixRange:
        """The range of pattern + [token] from the range of pattern, in one backward-search step."""
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise TypeError(f"token must be an int, got {type(token).__name__}")
        if token < 0:
            raise ValueError(f"token id {token} is negative")
        sp, ep = r
        return SuffixRange(*self._core.extend(int(sp), int(ep), int(token)))

    def count(self, pattern: Tokens) -> int:
        """Occurrences of ``pattern`` in the corpus (never across a document boundary)."""
        if type(pattern) is list and not self._byte_mode:
            n = self._core.count_ids(pattern)  # validated in the engine; None: not plain ints, see below
            if n is not None:
                return n
        return self.range(pattern).count

    def count_batch(self, patterns: Iterable[Tokens], *, threads: Optional[int] = None) -> np.ndarray:
        """Counts of many patterns, on ``threads`` threads without the GIL. A 2-D integer array (or a list of
        equal-length lists) of patterns is validated in one vectorised step."""
        flat, offsets = _flatten(patterns, self._byte_mode)
        return self._core.count_batch(flat, offsets, check_threads(threads))

    def locate(self, pattern: Tokens, limit: Optional[int] = None) -> np.ndarray:
        """Occurrences as an array of ``(document, offset)`` rows, sorted. With ``limit``, at most that many
        (which ones is unspecified)."""
        lim = self._limit(limit)
        docs, offs = self._core.locate(_pattern(pattern, self._byte_mode), lim)
        return np.stack([docs.astype(np.int64), offs.astype(np.int64)], axis=1) if len(docs) else np.zeros((0, 2), np.int64)

    def doc_frequencies(self, pattern: Tokens, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Documents holding ``pattern`` (increasing) and the number of occurrences in each."""
        return self.doc_frequencies_batch([pattern], limit=limit, threads=1)[0]

    def doc_frequencies_batch(
        self, patterns: Iterable[Tokens], *, limit: Optional[int] = None, threads: Optional[int] = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        flat, offsets = _flatten(patterns, self._byte_mode)
        out = self._core.doc_frequencies_batch(flat, offsets, self._limit(limit), check_threads(threads))
        return [(d.astype(np.int64), c.astype(np.int64)) for d, c in out]

    def next_tokens(self, prefix: Union[Tokens, SuffixRange]) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct token that follows ``prefix`` somewhere in the corpus, with how often (exact),
        in increasing token order. ``prefix`` may also be a :class:`SuffixRange`; an empty prefix gives the
        unigram distribution."""
        if isinstance(prefix, SuffixRange):
            sp, ep = prefix
        elif len(prefix) == 0:
            sp, ep = self.full_range()
        else:  # one call: search and enumerate
            if type(prefix) is list and not self._byte_mode:
                out = self._core.next_tokens_ids(prefix)  # None: not plain ints, take the general path
                if out is not None:
                    return out
            return self._core.next_tokens(_pattern(prefix, self._byte_mode))
        return self._core.next_tokens_range(int(sp), int(ep))

    def next_tokens_batch(self, prefixes: Iterable[Tokens], *, threads: Optional[int] = None) -> list[tuple[np.ndarray, np.ndarray]]:
        flat, offsets = _flatten(prefixes, self._byte_mode, allow_empty=True)
        return self._core.next_tokens_batch(flat, offsets, check_threads(threads))

    def extract(self, doc: int) -> Union[np.ndarray, str]:
        """The tokens of document ``doc`` (a str for indexes built from strings)."""
        if isinstance(doc, bool) or not isinstance(doc, (int, np.integer)):
            raise TypeError(f"doc must be an int, got {type(doc).__name__}")
        if not 0 <= doc < self.n_docs:
            raise IndexError(f"document {doc} out of range [0, {self.n_docs})")
        toks = self._core.extract(int(doc))
        if self._byte_mode:
            return toks.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return toks.astype(np.int64)

    @staticmethod
    def _limit(limit: Optional[int]) -> int:
        if limit is None:
            return 2**63 - 1
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        return int(limit)

    # ---- properties ------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return int(self._core.n_docs)

    @property
    def n_tokens(self) -> int:
        return int(self._core.n_tokens)

    def __len__(self) -> int:
        return self.n_docs

    @property
    def alphabet_size(self) -> int:
        """Number of distinct token ids."""
        return int(self._core.sigma)

    @property
    def size_bytes(self) -> int:
        """Bytes of the index structures (what :meth:`save` writes, less headers and padding)."""
        return int(self._core.size_bytes)

    @property
    def next_cache_ranges(self) -> int:
        """Number of prefixes whose next-token distributions are stored (see :meth:`build`)."""
        return int(self._core.next_cache_ranges)

    def doc_lengths(self) -> np.ndarray:
        return self._core.doc_lengths().astype(np.int64)

    def __repr__(self) -> str:
        kind = "bytes" if self._byte_mode else "token ids"
        return f"FMIndex(n_docs={self.n_docs}, n_tokens={self.n_tokens}, alphabet={self.alphabet_size}, {kind})"


_TOKEN = object()
