from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irforge import FMIndex, SuffixRange, _core

def _available_isas():
    out = []
    for name in ("scalar", "avx2", "avx512"):
        try:
            out.append(_core.fm_set_isa(name))
        except ValueError:  # the CPU lacks it
            pass
    _core.fm_set_isa("auto")
    return out


ISAS = _available_isas()


@pytest.fixture(scope="module", autouse=True, params=ISAS)
def isa(request):
    """Every test here runs with the portable query kernels and with each vectorised set the CPU has."""
    assert _core.fm_set_isa(request.param) == request.param
    yield request.param
    _core.fm_set_isa("auto")


def naive_occurrences(docs, pattern):
    m = len(pattern)
    return sorted((d, i) for d, doc in enumerate(docs) for i in range(len(doc) - m + 1) if list(doc[i:i + m]) == list(pattern))


def naive_next(docs, prefix):
    m = len(prefix)
    c = Counter(doc[i + m] for doc in docs for i in range(len(doc) - m) if list(doc[i:i + m]) == list(prefix))
    return sorted(c.items())


def check_pattern(fm, docs, p):
    occ = naive_occurrences(docs, p)
    assert fm.count(p) == len(occ)
    assert [tuple(x) for x in fm.locate(p).tolist()] == occ
    d, c = fm.doc_frequencies(p)
    assert list(zip(d.tolist(), c.tolist())) == sorted(Counter(x for x, _ in occ).items())
    t, c = fm.next_tokens(p)
    assert list(zip(t.tolist(), c.tolist())) == naive_next(docs, p)


docs_strategy = st.lists(st.lists(st.integers(0, 6), max_size=25), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=docs_strategy, patterns=st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=4), min_size=1, max_size=6),
       sample_rate=st.sampled_from([1, 2, 3, 32]), next_cache=st.sampled_from([None, 0, 10**6]))
def test_operations_equal_naive_scan(docs, patterns, sample_rate, next_cache):
    fm = FMIndex.build(docs, sample_rate=sample_rate, next_cache=next_cache)
    assert fm.n_docs == len(docs) and fm.n_tokens == sum(map(len, docs))
    for p in patterns:
        check_pattern(fm, docs, p)
    for doc in docs:  # every 2-token prefix of the corpus: with next_cache 10**6, each that occurs twice is cached
        for i in range(len(doc) - 1):
            t, c = fm.next_tokens(doc[i:i + 2])
            assert list(zip(t.tolist(), c.tolist())) == naive_next(docs, doc[i:i + 2])
    for d, doc in enumerate(docs):
        assert fm.extract(d).tolist() == doc
    assert fm.count_batch(patterns).tolist() == [len(naive_occurrences(docs, p)) for p in patterns]
    t, c = fm.next_tokens([])
    assert list(zip(t.tolist(), c.tolist())) == sorted(Counter(x for doc in docs for x in doc).items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_docs=st.integers(1, 400), vocab=st.sampled_from([2, 5, 300, 70000, 2**32 - 3]))
def test_larger_random_corpora(seed, n_docs, vocab):
    """Alphabets on both sides of the 16-bit symbol path, ids up to the largest supported."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, vocab, size=min(vocab, 50), dtype=np.int64) if vocab > 50 else np.arange(vocab)
    docs = [pool[rng.integers(0, len(pool), size=rng.integers(0, 60))].tolist() for _ in range(n_docs)]
    fm = FMIndex.build(docs, sample_rate=int(rng.choice([1, 4, 32])))
    for _ in range(10):
        d = int(rng.integers(0, n_docs))
        if len(docs[d]) >= 1:
            i = int(rng.integers(0, len(docs[d])))
            p = docs[d][i:i + int(rng.integers(1, 5))]
            check_pattern(fm, docs, p)
        check_pattern(fm, docs, [int(x) for x in rng.choice(pool, size=2)])
    for d in rng.integers(0, n_docs, size=5):
        assert fm.extract(int(d)).tolist() == docs[int(d)]


def test_seal_off_by_one_case():
    """SEAL's range code counts [6] four times here and offers 8 after [6]."""
    fm = FMIndex.build([[5, 6, 7, 2], [6, 7, 8, 2], [5, 6, 2]])
    assert fm.count([6]) == 3
    assert fm.next_tokens([6])[0].tolist() == [2, 7]
    assert fm.next_tokens([6])[1].tolist() == [1, 2]
    assert fm.count([2, 6]) == 0 and fm.count([2, 5]) == 0  # never across documents
    assert fm.next_tokens([8, 2])[0].tolist() == []  # end of a document: no continuation
    assert fm.count([9]) == 0 and fm.next_tokens([9])[0].tolist() == []


def test_extend_carries_the_range():
    docs = [[1, 2, 3, 1, 2, 4], [2, 3, 5], [1, 2, 3]]
    fm = FMIndex.build(docs)
    r = fm.full_range()
    assert r.count == fm.n_tokens + fm.n_docs + 1
    for i, tok in enumerate([1, 2, 3]):
        r = fm.extend(r, tok)
        assert r == fm.range([1, 2, 3][: i + 1])
    assert r.count == 2
    assert fm.next_tokens(r)[0].tolist() == [1]
    assert not fm.extend(r, 7)
    assert isinstance(r, SuffixRange) and r.count == 2


def test_strings_as_utf8_bytes():
    docs = ["banana bandana", "abracadabra", "naïve café", ""]
    fm = FMIndex.build(docs)
    assert fm.count("an") == 4
    assert fm.locate("ana").tolist() == [[0, 1], [0, 3], [0, 11]]
    assert fm.count("é") == 1 and fm.count("ï") == 1
    assert [fm.extract(i) for i in range(4)] == docs
    t, c = fm.next_tokens("ab")
    assert t.tolist() == [ord("r")] and c.tolist() == [2]
    with pytest.raises(TypeError):
        fm.count([97, 98])


def test_real_text(scifact):
    """Whitespace tokens of SciFact abstracts, checked against a scan for sampled n-grams."""
    vocab: dict[str, int] = {}
    docs = [[vocab.setdefault(w, len(vocab)) for w in (d["title"] + " " + d["text"]).lower().split()] for d in scifact.corpus[:800]]
    fm = FMIndex.build(docs)
    rng = np.random.default_rng(0)
    for _ in range(60):
        d = int(rng.integers(0, len(docs)))
        if len(docs[d]) < 4:
            continue
        i = int(rng.integers(0, len(docs[d]) - 3))
        check_pattern(fm, docs, docs[d][i:i + int(rng.integers(1, 4))])
    for d in range(0, 800, 97):
        assert fm.extract(d).tolist() == docs[d]


def test_save_load(tmp_path):
    docs = [[1, 2, 3, 2, 3], [3, 2, 1], [], [7]]
    fm = FMIndex.build(docs, sample_rate=2)
    fm.save(tmp_path / "fm.irx")
    assert [p.name for p in tmp_path.iterdir()] == ["fm.irx"]
    for mmap in (True, False):
        g = FMIndex.load(tmp_path / "fm.irx", mmap=mmap)
        for p in ([2, 3], [3], [1, 2, 3], [7]):
            assert g.count(p) == fm.count(p)
            assert g.locate(p).tolist() == fm.locate(p).tolist()
            assert [x.tolist() for x in g.next_tokens(p)] == [x.tolist() for x in fm.next_tokens(p)]
        assert [g.extract(d).tolist() for d in range(4)] == docs


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("docs,exc,match", [
    ([], ValueError, "empty corpus"),
    ([[1, -2]], ValueError, "negative"),
    ([[1, 2**32 - 2]], ValueError, "above the largest"),
    ([np.array([1.5, 2.0])], TypeError, "dtype"),
    ([[1, "a"]], TypeError, "token 1"),
    ([[1, 2], "text"], TypeError, "str"),
    (["text", [1, 2]], TypeError, "str or bytes"),
    ("just a string", TypeError, "not a single document"),
    ([[1, 2], 5], TypeError, "sequence of int"),
    ([np.zeros((2, 2), dtype=np.int64)], ValueError, "1-D"),
])
def test_bad_documents(docs, exc, match):
    with pytest.raises(exc, match=match):
        FMIndex.build(docs)


def test_bad_patterns_and_arguments():
    fm = FMIndex.build([[1, 2, 3]])
    with pytest.raises(ValueError, match="empty"):
        fm.count([])
    with pytest.raises(ValueError, match="negative"):
        fm.count([-1])
    with pytest.raises(TypeError):
        fm.count(np.array([1.0]))
    with pytest.raises(TypeError):
        fm.count("abc")
    with pytest.raises(ValueError, match="pattern 1 is empty"):
        fm.count_batch([[1], []])
    with pytest.raises(IndexError):
        fm.extract(1)
    with pytest.raises(ValueError):
        fm.locate([1], limit=-1)
    with pytest.raises(ValueError):
        FMIndex.build([[1]], sample_rate=0)
    with pytest.raises(ValueError, match="invalid suffix range"):
        fm._core.next_tokens_range(5, 2)
    with pytest.raises(ValueError, match="above the largest"):
        fm.count([2**32 + 5])
    assert fm.count([2**32 - 3]) == 0  # the largest id is valid; it does not occur
    assert fm.locate([1, 2], limit=0).shape == (0, 2)


def test_one_token_and_empty_documents():
    fm = FMIndex.build([[42]])
    assert fm.count([42]) == 1 and fm.locate([42]).tolist() == [[0, 0]] and fm.next_tokens([42])[0].tolist() == []
    fm = FMIndex.build([[], [], [3]])
    assert fm.extract(0).tolist() == [] and fm.count([3]) == 1 and fm.locate([3]).tolist() == [[2, 0]]
    fm = FMIndex.build([[], []])
    assert fm.n_tokens == 0 and fm.next_tokens([])[0].tolist() == []


def test_damaged_files(tmp_path):
    rng = np.random.default_rng(1)
    fm = FMIndex.build([rng.integers(0, 500, size=200).tolist() for _ in range(30)])
    path = tmp_path / "fm.irx"
    fm.save(path)
    data = path.read_bytes()
    for cut in (0, 10, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.irx").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            FMIndex.load(tmp_path / "cut.irx")
    for pos in rng.integers(0, len(data), size=40):
        bad = bytearray(data)
        bad[int(pos)] ^= 0x5A
        (tmp_path / "flip.irx").write_bytes(bytes(bad))
        try:
            g = FMIndex.load(tmp_path / "flip.irx")
        except ValueError:
            continue
        assert g.count([int(fm.extract(0)[0])]) == fm.count([int(fm.extract(0)[0])])  # the flip hit padding
    from irforge import BM25Index

    BM25Index.build(["x"]).save(tmp_path / "bm25.irf")
    with pytest.raises(ValueError, match="magic"):
        FMIndex.load(tmp_path / "bm25.irf")


def _check_corpus_against_numpy(fm, docs, rng, n_checks=40):
    """Counts of every token, and counts / next tokens / occurrences of sampled n-grams, against a scan."""
    flat = Counter(t for d in docs for t in d)
    toks = sorted(flat)
    assert fm.count_batch([[t] for t in toks]).tolist() == [flat[t] for t in toks]
    for _ in range(n_checks):
        d = int(rng.integers(0, len(docs)))
        if not docs[d]:
            continue
        i = int(rng.integers(0, len(docs[d])))
        check_pattern(fm, docs, docs[d][i:i + int(rng.integers(1, 4))])


def test_skewed_frequencies_give_deep_codes():
    """Fibonacci-like frequencies make the Huffman-shaped wavelet matrix 20+ levels deep; rare symbols sit at
    the bottom and must still count, locate, extract and enumerate exactly."""
    rng = np.random.default_rng(7)
    fib = [1, 1]
    while len(fib) < 24:
        fib.append(fib[-1] + fib[-2])
    tokens = np.repeat(np.arange(24) * 3 + 1, fib)  # ids 1, 4, 7, ...: gaps in the alphabet
    rng.shuffle(tokens)
    cuts = np.sort(rng.choice(len(tokens), size=400, replace=False))
    docs = [d.tolist() for d in np.split(tokens, cuts)]
    fm = FMIndex.build(docs)
    _check_corpus_against_numpy(fm, docs, rng)
    check_pattern(fm, docs, [1])  # the rarest symbol, deepest code
    check_pattern(fm, docs, [4, 70])
    for d in rng.integers(0, len(docs), size=20):
        assert fm.extract(int(d)).tolist() == docs[int(d)]


def test_alphabet_above_16_bits(tmp_path):
    """More than 65,534 distinct ids: the 32-bit symbol path, with ids far apart."""
    rng = np.random.default_rng(3)
    ids = rng.choice(2**31, size=70_000, replace=False).astype(np.int64)
    tokens = np.concatenate([ids, rng.choice(ids[:500], size=30_000)])
    rng.shuffle(tokens)
    docs = [d.tolist() for d in np.array_split(tokens, 1000)]
    fm = FMIndex.build(docs)
    assert fm.alphabet_size == 70_000
    _check_corpus_against_numpy(fm, docs, rng, n_checks=15)
    t, c = fm.next_tokens([])  # 70,000 continuations, straight from the symbol counts
    assert list(zip(t.tolist(), c.tolist())) == sorted(Counter(tokens.tolist()).items())
    top = Counter(tokens.tolist()).most_common(1)[0][0]  # hundreds of continuations: the radix-sorted path,
    t, c = fm.next_tokens([top])                         # over 17-bit symbols
    want = Counter(d[i + 1] for d in docs for i in range(len(d) - 1) if d[i] == top)
    assert len(want) >= 64 and list(zip(t.tolist(), c.tolist())) == sorted(want.items())
    fm.save(tmp_path / "big.irx")
    g = FMIndex.load(tmp_path / "big.irx")
    for d in (0, 499, 999):
        assert g.extract(d).tolist() == docs[d]


def test_document_dtypes_mix():
    """uint16, uint32, int64 arrays and lists in one corpus index the same as plain lists."""
    docs = [[5, 6, 7, 2], [6, 7, 8, 2], [5, 6, 2], [70000, 6]]
    mixed = [np.array(docs[0], dtype=np.uint16), np.array(docs[1], dtype=np.uint32), np.array(docs[2]), docs[3]]
    a, b = FMIndex.build(docs), FMIndex.build(mixed)
    for p in ([6], [6, 7], [70000], [2]):
        assert a.locate(p).tolist() == b.locate(p).tolist()
    assert [b.extract(d).tolist() for d in range(4)] == docs
    small = [np.array(d, dtype=np.uint32) for d in docs[:3]]  # uint32 input with small ids is read in place
    assert FMIndex.build(small).next_tokens([6])[0].tolist() == [2, 7]


def _zipf_corpus(seed=3, n_docs=300, vocab=400):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    return [rng.choice(vocab, size=int(rng.integers(5, 80)), p=p / p.sum()).tolist() for _ in range(n_docs)]


def test_next_token_cache(tmp_path):
    """Stored distributions of the most frequent 2-token prefixes give exactly what enumeration gives, after
    save and load too, within the byte budget; the default budget is 2.5% of the rest of the index."""
    docs = _zipf_corpus()
    plain = FMIndex.build(docs, next_cache=0)
    assert plain.next_cache_ranges == 0
    default = FMIndex.build(docs)
    assert 0 < default.next_cache_ranges and default._core.next_cache_bytes <= 0.025 * plain.size_bytes + 1
    big = FMIndex.build(docs, next_cache=10**6)
    assert big.next_cache_ranges > default.next_cache_ranges
    big.save(tmp_path / "fm.irx")
    prefixes = {tuple(d[i:i + m]) for d in docs for m in (1, 2, 3) for i in range(len(d) - m + 1)}
    for fm in (default, big, FMIndex.load(tmp_path / "fm.irx"), FMIndex.load(tmp_path / "fm.irx", mmap=False)):
        assert fm.size_bytes - fm._core.next_cache_bytes == plain.size_bytes - plain._core.next_cache_bytes
        for p in sorted(prefixes)[::7]:
            got, want = fm.next_tokens(list(p)), plain.next_tokens(list(p))
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
        r = fm.range([int(docs[0][0])])
        assert fm.next_tokens(r)[1].sum() == plain.next_tokens(r)[1].sum()
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="next_cache"):
            FMIndex.build(docs, next_cache=bad)


def test_next_token_cache_with_wide_codes():
    """A stored continuation whose symbol gap and count take more than 64 bits together (decoded code by code):
    [1, 2] is followed 140,000 times by the largest of 40,001 ids."""
    docs = [list(range(40001))] + [[1, 2, 40000]] * 140000 + [[1, 2, 7]] * 3
    fm = FMIndex.build(docs, next_cache=10**6)
    assert fm.next_cache_ranges > 0
    t, c = fm.next_tokens([1, 2])
    assert t.tolist() == [3, 7, 40000] and c.tolist() == [1, 3, 140000]


@pytest.mark.parametrize("n_follow", [1, 31, 32, 127, 128, 129, 300, 1000])
def test_long_cached_distributions(n_follow):
    """Cached distributions decode in blocks of 32 continuations, four blocks at a time, then block by block:
    lengths around those sizes give exactly what enumeration gives."""
    rng = np.random.default_rng(n_follow)
    follow = np.sort(rng.choice(np.arange(3, 5000), size=n_follow, replace=False))
    docs = [[1, 2, int(t)] * int(rng.integers(1, 4)) for t in follow] + [[1, 2, int(follow[0])]] * 50
    docs += [rng.integers(3, 5000, size=30).tolist() for _ in range(20)]
    plain, cached = FMIndex.build(docs, next_cache=0), FMIndex.build(docs, next_cache=10**6)
    assert cached.next_cache_ranges > 0
    for p in ([1, 2], [2, 1], [1], [2]):
        got, want = cached.next_tokens(p), plain.next_tokens(p)
        assert got[0].dtype == np.int64 and got[1].dtype == np.int64
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    t, c = cached.next_tokens([1, 2])
    assert t.tolist() == follow.tolist() and int(c.sum()) == plain.count([1, 2])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_64_bit_suffix_array_path_builds_the_same_index(tmp_path, dtype):
    """Corpora of 2^31 positions and more take the 64-bit SA-IS and BWT path; forced on small corpora, it must
    write byte for byte the index of the 32-bit path (both symbol widths, with separators and repeats)."""
    docs = _zipf_corpus(seed=9) + [[403] * 300, [401, 402] * 150, [3]]  # the Zipf corpus uses ids below 400
    if dtype is np.uint32:  # over 65,536 distinct ids: 32-bit symbols in the text and BWT
        docs.append(list(range(70_000, 140_000)))
    arrs = [np.asarray(d, dtype=dtype) for d in docs]
    for cache in (0, 10**5):
        narrow = _core.FMIndex.build(arrs, 8, False, cache)
        wide = _core.FMIndex.build(arrs, 8, False, cache, True)
        narrow.save(str(tmp_path / "n.irx"))
        wide.save(str(tmp_path / "w.irx"))
        assert (tmp_path / "n.irx").read_bytes() == (tmp_path / "w.irx").read_bytes()
    fm = FMIndex.load(tmp_path / "w.irx")
    assert fm.count([401, 402]) == 150 and fm.count([403, 403]) == 299
    assert fm.extract(len(docs) - 1).tolist() == docs[-1]


def test_large_buffers_on_huge_pages(tmp_path):
    """An index of 2M tokens: its wavelet levels (gathered into one buffer), samples and a file read in full are
    over 2 MB, so they come from the huge-page allocator's own mappings. Built, mapped and read-in-full indexes
    answer alike, and dropping them releases the mappings cleanly."""
    import gc

    rng = np.random.default_rng(4)
    p = 1.0 / np.arange(1, 3001)
    docs = [rng.choice(3000, size=200, p=p / p.sum()).astype(np.uint16) for _ in range(10_000)]
    fm = FMIndex.build(docs)
    assert fm.size_bytes > 3 * 2**20
    fm.save(tmp_path / "big.irx")
    pats = [docs[7][10:12].tolist(), docs[99][0:3].tolist(), [int(docs[5][0])]]
    want = [(fm.count(q), fm.locate(q, limit=50).tolist(), [a.tolist() for a in fm.next_tokens(q)]) for q in pats]
    for mmap in (True, False):
        g = FMIndex.load(tmp_path / "big.irx", mmap=mmap)
        assert [(g.count(q), g.locate(q, limit=50).tolist(), [a.tolist() for a in g.next_tokens(q)]) for q in pats] == want
        assert g.extract(9_999).tolist() == docs[9_999].tolist()
        del g
        gc.collect()


def test_damaged_next_token_cache(tmp_path):
    """With checksums off, the loader decodes every stored distribution with bounds checks: damage there is a
    ValueError at load, or leaves distributions that still decode within the stream (never a crash)."""
    import struct

    fm = FMIndex.build(_zipf_corpus(), next_cache=10**6)
    path = tmp_path / "fm.irx"
    fm.save(path)
    data = bytes(path.read_bytes())
    n_sections = struct.unpack_from("<I", data, 12)[0]
    where = {}
    for k in range(n_sections):
        sid, _, off, size, _ = struct.unpack_from("<IIQQQ", data, 24 + 32 * k)
        where[sid] = (off, size)
    rng = np.random.default_rng(0)
    errors = 0
    for sid in (10, 11):  # the cache's keys and bit stream
        off, size = where[sid]
        for pos in rng.integers(off, off + size, size=25):
            bad = bytearray(data)
            bad[int(pos)] ^= 1 << int(rng.integers(0, 8))
            (tmp_path / "bad.irx").write_bytes(bytes(bad))
            with pytest.raises(ValueError, match="checksum"):
                FMIndex.load(tmp_path / "bad.irx")
            try:
                g = FMIndex.load(tmp_path / "bad.irx", verify=False)
            except ValueError:
                errors += 1
                continue
            for p in ([0, 0], [0, 1], [1, 0], [0], []):
                g.next_tokens(p)
    assert errors > 0


def test_damaged_sections_without_checksums(tmp_path):
    """A flipped bit anywhere (format 4 derives the symbol counts from the wavelet levels, so damage there can
    load) gives a ValueError at load, or queries that return or raise a clear error: never a crash or a hang
    (a locate walk that meets no sample within sample_rate steps is an error)."""
    import struct

    docs = _zipf_corpus(seed=5)
    FMIndex.build(docs, next_cache=10**5).save(tmp_path / "fm.irx")
    data = (tmp_path / "fm.irx").read_bytes()
    rng = np.random.default_rng(1)
    for k in range(struct.unpack_from("<I", data, 12)[0]):
        _, _, off, size, _ = struct.unpack_from("<IIQQQ", data, 24 + 32 * k)
        for pos in rng.integers(off, off + size, size=12) if size else []:
            bad = bytearray(data)
            bad[int(pos)] ^= 1 << int(rng.integers(0, 8))
            (tmp_path / "bad.irx").write_bytes(bytes(bad))
            try:
                g = FMIndex.load(tmp_path / "bad.irx", verify=False)
            except ValueError:
                continue
            for q in ([int(docs[0][0])], [int(docs[1][0]), int(docs[1][1])], [0, 1]):
                for f in (g.count, g.locate, g.doc_frequencies, g.next_tokens):
                    try:
                        f(q)
                    except (ValueError, TypeError):  # TypeError: damage to the header's byte-mode flag
                        pass
            for d in (0, len(docs) - 1):
                try:
                    g.extract(d)
                except ValueError:
                    pass


DATA = Path(__file__).parent / "data"
# The corpora of the format 3 files in tests/data (written by the format 3 code; see tests/data/README.md).
BYTES_DOCS = ["the cat sat on the mat", "the dog sat", "ünïcode text here", "a", "the cat"]


def _v3_token_corpus():
    rng = np.random.default_rng(11)
    p = 1.0 / np.arange(1, 301)
    return [rng.choice(300, size=int(rng.integers(5, 60)), p=p / p.sum()).tolist() for _ in range(150)]


def _assert_same_answers(a, b, patterns, n_docs):
    for p in patterns:
        assert a.count(p) == b.count(p)
        assert a.locate(p).tolist() == b.locate(p).tolist()
        for x, y in zip(a.doc_frequencies(p), b.doc_frequencies(p)):
            assert x.tolist() == y.tolist()
        for x, y in zip(a.next_tokens(p), b.next_tokens(p)):
            assert x.tolist() == y.tolist()
    for d in range(n_docs):
        x, y = a.extract(d), b.extract(d)
        assert (x == y) if isinstance(x, str) else (x.tolist() == y.tolist())
    assert a.doc_lengths().tolist() == b.doc_lengths().tolist()


@pytest.mark.parametrize("mmap", [True, False])
def test_format_3_files_load(tmp_path, mmap):
    """Files written by the format 3 code (a C table, absolute document starts, packed alphabet) load and answer
    as a fresh build does, cache included; saved again they become format 4, smaller, with the same answers."""
    docs = _v3_token_corpus()
    cases = [("fm_v3_tokens.irx", FMIndex.build(docs, next_cache=3000), docs),
             ("fm_v3_bytes.irx", FMIndex.build(BYTES_DOCS, next_cache=400), BYTES_DOCS)]
    for name, fresh, corpus in cases:
        old = FMIndex.load(DATA / name, mmap=mmap)
        assert old.next_cache_ranges == fresh.next_cache_ranges > 0
        if isinstance(corpus[0], str):
            patterns = ["the", "the ", "the cat", "at", "ü", "a", "x"]
        else:
            patterns = [[int(t)] for t in range(0, 300, 7)] + [d[i:i + m] for d in corpus[:40] for m in (2, 3) for i in (0, 2)]
        _assert_same_answers(old, fresh, patterns, len(corpus))
        old.save(tmp_path / name)
        assert (tmp_path / name).stat().st_size <= (DATA / name).stat().st_size
        assert old.size_bytes == fresh.size_bytes
        again = FMIndex.load(tmp_path / name, mmap=mmap)
        _assert_same_answers(again, fresh, patterns, len(corpus))


def _relabelled(data: bytes, version: int) -> bytes:
    """The file with another format version in its header (header checksum redone)."""
    import struct

    out = bytearray(data)
    hlen = 24 + 32 * struct.unpack_from("<I", out, 12)[0]
    struct.pack_into("<I", out, 8, version)
    struct.pack_into("<Q", out, hlen, _core.checksum64(bytes(out[:hlen])))
    return bytes(out)


def test_version_2_files_load_without_the_cache(tmp_path):
    """A file of format version 2 (format 3 less the next-token cache, which version 2 readers skip) loads and
    answers the same, and saves as the current version; versions outside 2..4 are refused."""
    docs = _v3_token_corpus()
    fm = FMIndex.build(docs, next_cache=0)
    (tmp_path / "v2.irx").write_bytes(_relabelled((DATA / "fm_v3_tokens.irx").read_bytes(), 2))
    old = FMIndex.load(tmp_path / "v2.irx")
    assert old.next_cache_ranges == 0
    old.save(tmp_path / "v4.irx")
    again = FMIndex.load(tmp_path / "v4.irx")
    patterns = [d[i:i + m] for d in docs[:30] for m in (1, 2, 3) for i in (0, 1)] + [[]]
    for g in (old, again):
        _assert_same_answers(g, fm, [p for p in patterns if p], len(docs))
        assert g.next_tokens([])[1].tolist() == fm.next_tokens([])[1].tolist()
    for v in (1, 5):
        (tmp_path / "bad.irx").write_bytes(_relabelled((tmp_path / "v4.irx").read_bytes(), v))
        with pytest.raises(ValueError, match=f"format version {v} is not supported"):
            FMIndex.load(tmp_path / "bad.irx")
    # a format 4 file read as format 3 (no C table) is refused, not misread
    (tmp_path / "as3.irx").write_bytes(_relabelled((tmp_path / "v4.irx").read_bytes(), 3))
    with pytest.raises(ValueError):
        FMIndex.load(tmp_path / "as3.irx")


def test_inconsistent_code_lengths_are_rejected(tmp_path):
    """With checksums off, a structurally wrong code-length table is still caught before use."""
    import struct

    fm = FMIndex.build([[1, 2, 3, 1, 2], [3, 3, 4]])
    path = tmp_path / "fm.irx"
    fm.save(path)
    data = bytearray(path.read_bytes())
    n_sections = struct.unpack_from("<I", data, 12)[0]
    for k in range(n_sections):
        sid, _, off, size, _ = struct.unpack_from("<IIQQQ", data, 24 + 32 * k)
        if sid == 4:  # code lengths: one byte per symbol
            break
    else:
        raise AssertionError("no code-length section")
    for value in (0, 60, 1):
        bad = bytearray(data)
        bad[off:off + size] = bytes([value]) * size
        (tmp_path / "bad.irx").write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="code"):
            FMIndex.load(tmp_path / "bad.irx", verify=False)


def test_kernel_choice():
    with pytest.raises(ValueError, match="unknown instruction set"):
        _core.fm_set_isa("sse9")
