"""Plain numpy BM25, written from the formulas (Kamphuis et al. 2020; Lucene 9 BM25Similarity), to check
the C++ engine. Deliberately simple: dense term-frequency matrix, float64 except where Lucene rounds."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np


def lucene_encode(length: int) -> int:
    """Lucene SmallFloat.intToByte4."""
    if length < 24:
        return length
    i = length - 24
    bits = i.bit_length()
    if bits < 4:
        enc = i
    else:
        shift = bits - 4
        enc = ((i >> shift) & 0x07) | ((shift + 1) << 3)
    return 24 + enc


def lucene_decode(byte: int) -> int:
    if byte < 24:
        return byte
    i = byte - 24
    bits, shift = i & 0x07, (i >> 3) - 1
    return 24 + (bits if shift == -1 else (bits | 0x08) << shift)


def bm25_scores(docs: list[list[str]], query: list[str], method: str, k1: float, b: float, delta: float) -> np.ndarray:
    """Score of every document for a query given as analysed terms (repeats count as query term frequency).
    Documents holding no query term get NaN (they are not matches)."""
    n_docs = len(docs)
    lens = np.array([len(d) for d in docs], dtype=np.float64)
    N = float((lens > 0).sum())
    avgdl = float(np.float32(lens.sum() / N)) if N else 1.0
    qtf = Counter(query)
    scores = np.zeros(n_docs)
    matched = np.zeros(n_docs, dtype=bool)
    counters = [Counter(d) for d in docs]
    with np.errstate(divide="ignore", invalid="ignore"):  # k1 = 0 gives 0/0 where tf = 0, masked below
        for term, qf in qtf.items():
            _add_term(scores, matched, counters, lens, N, avgdl, term, qf, method, k1, b, delta)
    scores[~matched] = np.nan
    return scores


def _add_term(scores, matched, counters, lens, N, avgdl, term, qf, method, k1, b, delta):
    tf = np.array([c.get(term, 0) for c in counters], dtype=np.float64)
    df = float((tf > 0).sum())
    if df == 0:
        return
    has = tf > 0
    matched |= has
    if method == "lucene":
        idf = math.log(1 + (N - df + 0.5) / (df + 0.5))
        qlen = np.array([lucene_decode(lucene_encode(int(x))) for x in lens], dtype=np.float64)
        part = tf / (tf + k1 * (1 - b + b * qlen / avgdl))
    else:
        K = k1 * (1 - b + b * lens / avgdl)
        if method == "robertson":
            idf = math.log((N - df + 0.5) / (df + 0.5))
            part = (k1 + 1) * tf / (tf + K)
        elif method == "atire":
            idf = math.log(N / df)
            part = (k1 + 1) * tf / (tf + K)
        elif method == "bm25l":
            idf = math.log((N + 1) / (df + 0.5))
            c = tf / (1 - b + b * lens / avgdl)
            part = (k1 + 1) * (c + delta) / (k1 + c + delta)
        elif method == "bm25+":
            idf = math.log((N + 1) / df)
            part = (k1 + 1) * tf / (K + tf) + delta
        else:
            raise ValueError(method)
    scores += np.where(has, qf * idf * part, 0.0)
