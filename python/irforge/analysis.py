"""Text analysis: the C++ analyzer that reproduces Lucene's English analyzer (as Pyserini uses it)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Union

from . import _core
from ._io import check_flag, check_int

__all__ = ["Analyzer", "LUCENE_STOPWORDS", "resolve_stopwords"]

#: Lucene's ``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`` (33 words).
LUCENE_STOPWORDS: tuple[str, ...] = tuple(_core.lucene_english_stopwords())

StopwordsArg = Union[str, Iterable[str], None]


def resolve_stopwords(stopwords: StopwordsArg) -> Optional[list[str]]:
    """Turn the ``stopwords`` argument into a list (``None`` or empty: no stopwords)."""
    if stopwords is None:
        return None
    if isinstance(stopwords, str):
        if stopwords in ("lucene", "english", "en"):
            return list(LUCENE_STOPWORDS)
        raise ValueError(f"unknown stopword list {stopwords!r}; choose 'lucene', None, or pass a list of words")
    words = list(stopwords)
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"stopwords must be str, got {type(w).__name__}")
    return words


def check_max_token_length(n: object) -> int:
    """``max_token_length`` as an int from 1 to 2**31 - 1 (the engine's range); ValueError otherwise."""
    n = check_int("max_token_length", n, 1)
    if n >= 2**31:
        raise ValueError(f"max_token_length must be below 2**31, got {n}")
    return n


def resolve_stemmer(stemmer: Optional[str]) -> bool:
    if stemmer is None:
        return False
    if stemmer == "porter":
        return True
    raise ValueError(f"unknown stemmer {stemmer!r}; choose 'porter' or None")


class Analyzer:
    """Lucene-compatible English analysis: Unicode word segmentation (UAX #29), possessive removal,
    lowercasing, stopword removal and Porter stemming, all in C++.

    Parameters
    ----------
    stemmer : "porter" or None
    stopwords : "lucene" (Lucene's 33 English stopwords), None, or an iterable of words
    lowercase : bool
    max_token_length : int
        Tokens longer than this many code points are split, as Lucene's StandardTokenizer does.

    Examples
    --------
    >>> Analyzer()("The runners' 3.5 km runs")
    ['runner', '3.5', 'km', 'run']
    """

    def __init__(
        self,
        stemmer: Optional[str] = "porter",
        stopwords: StopwordsArg = "lucene",
        lowercase: bool = True,
        max_token_length: int = 255,
    ) -> None:
        max_token_length = check_max_token_length(max_token_length)
        self.stemmer = stemmer
        self.stopwords = resolve_stopwords(stopwords)
        self.lowercase = check_flag("lowercase", lowercase)
        self.max_token_length = max_token_length
        self._impl = _core.Analyzer(
            lowercase=self.lowercase,
            stem=resolve_stemmer(stemmer),
            stopwords=self.stopwords,
            possessive=True,
            max_token_length=max_token_length,
        )

    def __call__(self, text: Union[str, bytes]) -> list[str]:
        """Terms of ``text`` (str, or bytes holding UTF-8)."""
        return self._impl.analyze(text)

    analyze = __call__

    def analyze_many(self, texts: Iterable[Union[str, bytes]]) -> list[list[str]]:
        """Terms of each text, analysed without the GIL."""
        return self._impl.analyze_many(list(texts))

    def __repr__(self) -> str:
        sw = "None" if not self.stopwords else f"<{len(self.stopwords)} words>"
        return f"Analyzer(stemmer={self.stemmer!r}, stopwords={sw}, lowercase={self.lowercase})"
