"""Bad input gets a clear exception or a documented empty result; damaged index files never load."""
from __future__ import annotations

import numpy as np
import pytest

from irforge import BM25Index


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(["alpha beta gamma", "beta delta", "gamma gamma epsilon"], ids=["a", "b", "c"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    docs = [{"id": f"d{i}", "text": f"term{i % 13} shared words here {i}"} for i in range(700)]
    path = tmp_path_factory.mktemp("idx") / "good.irf"
    BM25Index.build(docs).save(path)
    return path


# ---- building -----------------------------------------------------------------------------------
@pytest.mark.parametrize("corpus", [[], iter([]), ()])
def test_empty_corpus(corpus):
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build(corpus)


def test_corpus_of_only_empty_documents_gives_no_hits():
    index = BM25Index.build(["", "the of and", "   "])
    assert len(index) == 3 and index.vocab_size == 0
    assert len(index.search("anything", k=3)) == 0


@pytest.mark.parametrize("corpus,match", [
    (["ok", 3], "document 1"),
    (["ok", None], "document 1"),
    ([3.5], "got float"),
    ("a single string", "not a single document"),
    ([["tok", 5]], "token 1"),
    ([[1, 2], ["a"]], "document 1"),
    ([np.array([1.5, 2.0])], "integer dtype"),
    ([{"id": "x", "text": 5}], "must be str"),
    ([{"id": "x", "body": "no text field"}], "none of the fields"),
    ([{"text": "no id"}], "without an id"),
    ([{"id": "x", "text": "fine"}, "not a record"], "document 1"),
])
def test_bad_documents(corpus, match):
    with pytest.raises((TypeError, ValueError), match=match):
        BM25Index.build(corpus)


def test_negative_token_ids():
    with pytest.raises(ValueError, match="negative"):
        BM25Index.build([[1, 2], [3, -4]])


def test_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate document id 'x' at positions 0 and 2"):
        BM25Index.build(["a", "b", "c"], ids=["x", "y", "x"])
    with pytest.raises(ValueError, match="duplicate document id"):
        BM25Index.build([{"id": "1", "text": "a"}, {"_id": 1, "text": "b"}])


def test_ids_count_must_match():
    with pytest.raises(ValueError, match="2 ids for 3 documents"):
        BM25Index.build(["a", "b", "c"], ids=["x", "y"])
    with pytest.raises(ValueError, match="own ids"):
        BM25Index.build([{"id": "1", "text": "a"}], ids=["z"])


def test_invalid_utf8_document():
    with pytest.raises(ValueError, match=r"document 1: invalid UTF-8 at byte 5"):
        BM25Index.build([b"fine", b"bad \xc3\x28 bytes"])
    with pytest.raises(ValueError, match="document 0"):
        BM25Index.build(["lone \udc80 surrogate"])


def test_very_long_tokens_are_split_not_dropped():
    index = BM25Index.build(["x" * 10_000 + " short"], stemmer=None)
    assert index.vocabulary().count("x" * 255) == 1
    assert index.doc_lengths()[0] == 40 + 1  # 10,000 / 255 -> 39 full pieces and one of 55, plus "short"
    assert index.search("x" * 255, k=1)[0].id == "0"


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"method": "bm26"}, ValueError, "unknown method"),
    ({"k1": -1.0}, ValueError, "k1"),
    ({"k1": float("nan")}, ValueError, "k1"),
    ({"b": 1.5}, ValueError, "b must"),
    ({"k1": "0.9"}, TypeError, "k1"),
    ({"delta": -1.0, "method": "bm25+"}, ValueError, "delta"),
    ({"stemmer": "lancaster"}, ValueError, "stemmer"),
    ({"threads": 0}, ValueError, "threads"),
    ({"max_token_length": 0}, ValueError, "max_token_length"),
    ({"max_token_length": True}, ValueError, "max_token_length"),
    ({"max_token_length": 2**40}, ValueError, "max_token_length"),
    ({"lowercase": "no"}, TypeError, "lowercase"),  # a non-empty string would count as true
    ({"ids": "s"}, TypeError, "single string"),  # one id per character
])
def test_bad_build_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BM25Index.build(["some text"], **kwargs)


# ---- searching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k,exc", [(0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError), ("10", TypeError)])
def test_bad_k(index, k, exc):
    with pytest.raises(exc, match="k must"):
        index.search("beta", k=k)
    with pytest.raises(exc, match="k must"):
        index.search_batch(["beta"], k=k)


def test_bad_queries(index):
    with pytest.raises(TypeError, match="query 0 must be str"):
        index.search(42, k=3)
    with pytest.raises(TypeError, match="query 1 must be str"):
        index.search_batch(["ok", None], k=3)
    with pytest.raises(TypeError, match="not a single string"):
        index.search_batch("beta", k=3)
    with pytest.raises(ValueError, match="UTF-8"):
        index.search(b"\xff\xfe", k=3)
    with pytest.raises(ValueError, match="unknown algorithm"):
        index.search("beta", algorithm="wand")
    with pytest.raises(ValueError, match="threads"):
        index.search_batch(["beta"], threads=-1)


def test_bad_queries_for_id_index():
    index = BM25Index.build([[1, 2, 3], [2, 3]])
    with pytest.raises(TypeError):
        index.search("2 3", k=2)
    with pytest.raises(TypeError, match="integer"):
        index.search_batch([np.array([2.0, 3.0])], k=2)
    with pytest.raises(ValueError, match="negative"):
        index.search([-1], k=2)
    # Fractions and bools are no token ids, on every path (the cast would have searched id 2 for 2.5).
    for bad in ([2.5], [True], np.array([2.5])):
        with pytest.raises(TypeError, match="int|integer"):
            index.search(bad, k=2)
        with pytest.raises(TypeError, match="int|integer"):
            index.search(bad, k=2, allowed=[0])
        with pytest.raises(TypeError, match="int|integer"):
            index.query_terms(bad)
        with pytest.raises(TypeError, match="int|integer"):
            index.search_batch([[2], bad], k=2)
    assert index.search([np.int64(2), 3], k=2).ids.tolist() == index.search([2, 3], k=2).ids.tolist()
    assert len(index.search([], k=2)) == 0
    assert len(index.search([99], k=2)) == 0


def test_empty_batch(index):
    batch = index.search_batch([], k=2)
    assert batch.docnos.shape == (0, 2) and batch.counts.shape == (0,)
    assert index.search_batch([], k=4).docnos.shape == (0, 3)  # no wider than the corpus's 3 documents


def test_constructor_is_not_public():
    with pytest.raises(TypeError, match="BM25Index.build"):
        BM25Index(None)


# ---- files --------------------------------------------------------------------------------------
def test_load_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "nope.irf")
    with pytest.raises(IsADirectoryError):
        BM25Index.load(tmp_path)
    empty = tmp_path / "empty.irf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="too small"):
        BM25Index.load(empty)
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(ValueError, match="magic"):
        BM25Index.load(other)


def test_save_into_missing_directory(index, tmp_path):
    with pytest.raises(FileNotFoundError):
        index.save(tmp_path / "no" / "such" / "dir" / "x.irf")


def test_failed_save_leaves_nothing_behind(index, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()  # a directory where the index should go: the rename fails, even for root
    (target / "keep.txt").write_text("user data")
    with pytest.raises(OSError):
        index.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (target / "keep.txt").read_text() == "user data"


def test_truncated_files_never_load(saved, tmp_path):
    data = saved.read_bytes()
    for cut in sorted({1, 7, 8, 23, 24, 100, len(data) // 3, len(data) // 2, len(data) - 65, len(data) - 1}):
        p = tmp_path / f"cut{cut}.irf"
        p.write_bytes(data[:cut])
        for mmap in (True, False):
            with pytest.raises(ValueError):
                BM25Index.load(p, mmap=mmap)
    longer = tmp_path / "longer.irf"
    longer.write_bytes(data + b"\0" * 64)
    with pytest.raises(ValueError, match="header says"):
        BM25Index.load(longer)


def test_flipped_bytes_never_load(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    rng = np.random.default_rng(7)
    positions = sorted(set(rng.integers(0, len(data), size=150).tolist()) | {0, 9, 13, 17, 30, 200})
    p = tmp_path / "flip.irf"
    undetected = []
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(flipped))
        try:
            BM25Index.load(p)
        except ValueError:
            continue
        # Padding between sections carries no data; a flip there must leave results unchanged.
        undetected.append(pos)
    good = BM25Index.load(saved)
    for pos in undetected:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        p.write_bytes(bytes(flipped))
        ix = BM25Index.load(p)
        for q in ("term3 words", "shared", "term12 here 5"):
            assert ix.search(q, k=20).ids.tolist() == good.search(q, k=20).ids.tolist()
    assert len(undetected) < len(positions) // 4


def test_corruption_found_without_checksums_is_an_error_not_a_crash(saved, tmp_path):
    """With verify=False the postings are still checked block by block as they are decoded."""
    data = bytearray(saved.read_bytes())
    good = BM25Index.load(saved)
    p = tmp_path / "post.irf"
    rng = np.random.default_rng(3)
    start = len(data) // 2
    for _ in range(40):
        bad = bytearray(data)
        for pos in rng.integers(start, len(data), size=8):
            bad[int(pos)] = int(rng.integers(0, 256))
        p.write_bytes(bytes(bad))
        try:
            ix = BM25Index.load(p, verify=False)
            for q in ("term3 words", "shared here", "term12"):
                ix.search(q, k=10)
        except ValueError:
            pass
    assert good.search("shared", k=3).ids.tolist() == ["d0", "d1", "d2"]
