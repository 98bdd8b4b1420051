from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from irforge import LUCENE_STOPWORDS, Analyzer

from .conftest import scifact_dir


@pytest.fixture(scope="module")
def plain():
    return Analyzer(stemmer=None, stopwords=None)


def stdlib_words() -> set[str]:
    import collections
    import json
    import os

    words: set[str] = set()
    for mod in (os, json, collections, inspect, re):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                words.update(re.findall(r"[a-z]+", doc.lower()))
    return words


def test_porter_matches_nltk_martin_extensions():
    """Lucene's PorterStemmer is Porter's C reference (with its 'bli' and 'logi' departures); NLTK's
    MARTIN_EXTENSIONS mode implements the same, independently."""
    nltk_porter = pytest.importorskip("nltk.stem.porter")
    ref = nltk_porter.PorterStemmer(mode=nltk_porter.PorterStemmer.MARTIN_EXTENSIONS)
    words = stdlib_words()
    d = scifact_dir()
    if d is not None:
        words |= set(re.findall(r"[a-z]+", (d / "corpus.jsonl").read_text(encoding="utf-8")[:3_000_000].lower()))
    stem = Analyzer(stemmer="porter", stopwords=None)
    diffs = [(w, stem(w), ref.stem(w)) for w in sorted(words) if stem(w) != [ref.stem(w)]]
    assert len(words) > 2000
    assert diffs == []


@pytest.mark.parametrize(
    "word,stem",
    [("caresses", "caress"), ("ponies", "poni"), ("agreed", "agre"), ("hopping", "hop"), ("filing", "file"),
     ("happy", "happi"), ("relational", "relat"), ("generalizations", "gener"), ("sensibiliti", "sensibl"),
     ("conformabli", "conform"), ("analogi", "analog"), ("at", "at"), ("is", "is")],
)
def test_porter_known_stems(word, stem):
    assert Analyzer(stopwords=None)(word) == [stem]


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("Hello, World!", ["hello", "world"]),
        ("U.S.A. and e.g. 3.5 1,000,000 v2 covid-19", ["u.s.a", "and", "e.g", "3.5", "1,000,000", "v2", "covid", "19"]),
        ("don't  John's O'Neil’s", ["don't", "john", "o'neil"]),
        ("snake_case __init__ a__b", ["snake_case", "__init__", "a__b"]),
        ("end. start:stop 12:30", ["end", "start:stop", "12", "30"]),
        ("中文字 ひらがな カタカナ", ["中", "文", "字", "ひ", "ら", "が", "な", "カタカナ"]),
        ("Café NAÏVE Ǆemal İstanbul ΣΟΦΊΑ", ["café", "naïve", "ǆemal", "istanbul", "σοφία"]),
        ("cafe\u0301 soft\u00adhyphen", ["cafe\u0301", "soft\u00adhyphen"]),
        ("   \t\n", []),
        ("", []),
        ("😀 ++ -- ...", []),
    ],
)
def test_segmentation(plain, text, tokens):
    assert plain(text) == tokens


def test_stopwords_are_lucenes():
    assert len(LUCENE_STOPWORDS) == 33 and "the" in LUCENE_STOPWORDS and "not" in LUCENE_STOPWORDS
    assert Analyzer()("The cat is not on the mat") == ["cat", "mat"]
    assert Analyzer(stopwords=["cat"])("The cat is on the mat") == ["the", "is", "on", "the", "mat"]
    assert Analyzer(stopwords=None, stemmer=None, lowercase=False)("The Cats") == ["The", "Cats"]


def test_long_tokens_are_split_like_lucene():
    a = Analyzer(stemmer=None, stopwords=None)
    assert a("x" * 600) == ["x" * 255, "x" * 255, "x" * 90]
    assert Analyzer(stemmer=None, stopwords=None, max_token_length=4)("abcdefghij") == ["abcd", "efgh", "ij"]


def test_bytes_and_bad_utf8(plain):
    assert plain("naïve".encode()) == ["naïve"]
    with pytest.raises(ValueError, match="UTF-8"):
        plain(b"abc \xff\xfe def")
    with pytest.raises(ValueError, match="UTF-8"):
        plain(b"\xe2\x82")  # truncated sequence
    with pytest.raises(ValueError):
        plain("lone \ud800 surrogate")
    with pytest.raises(TypeError):
        plain(42)  # type: ignore[arg-type]


def test_bad_options():
    with pytest.raises(ValueError, match="stemmer"):
        Analyzer(stemmer="snowball")
    with pytest.raises(ValueError, match="stopword"):
        Analyzer(stopwords="french")
    with pytest.raises(TypeError):
        Analyzer(stopwords=[1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Analyzer(max_token_length=0)
    with pytest.raises(ValueError, match="max_token_length"):
        Analyzer(max_token_length=True)
    with pytest.raises(TypeError, match="lowercase"):
        Analyzer(lowercase="no")  # would count as true
    assert Analyzer(lowercase=np.bool_(False), max_token_length=np.int64(4))("ABCDEF") == ["ABCD", "EF"]


def test_analyze_many_matches_analyze():
    a = Analyzer()
    texts = ["The quick brown foxes", "jumped over", "", "lazy dogs' kennels"]
    assert a.analyze_many(texts) == [a(t) for t in texts]
