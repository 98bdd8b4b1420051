from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irforge import ALGORITHMS, METHODS, BM25Index, metrics

from .reference import bm25_scores

DELTA = {"bm25l": 0.5, "bm25+": 1.0}


def reference_topk(docs_terms, query_terms, method, k1, b, k):
    """(docnos, scores) of the numpy reference, ranked by score then document number."""
    s = bm25_scores(docs_terms, query_terms, method, k1, b, DELTA.get(method, 0.0))
    idx = np.flatnonzero(~np.isnan(s))
    order = sorted(idx, key=lambda d: (-s[d], d))[:k]
    return np.array(order, dtype=np.int64), s[order]


def assert_same_topk(got_docs, got_scores, ref_docs, ref_scores, rtol=2e-5):
    """Equal up to float rounding: scores match position by position, and documents match except where
    the reference has near-ties (whose order float32 rounding may flip)."""
    assert len(got_docs) == len(ref_docs)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=rtol, atol=1e-6)
    for i, (g, r) in enumerate(zip(got_docs, ref_docs)):
        if g != r:
            near = np.isclose(ref_scores, ref_scores[i], rtol=rtol, atol=1e-6)
            assert near.sum() > 1, f"rank {i}: got doc {g}, reference {r}"


# Corpora sized to cross the 128-document block boundaries: few distinct terms, many documents.
WORDS = [f"w{i}" for i in range(12)]
corpora = st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=30), min_size=1, max_size=420)
queries = st.lists(st.sampled_from(WORDS + ["absent"]), min_size=0, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(docs=corpora, qs=st.lists(queries, min_size=1, max_size=5), k=st.sampled_from([1, 3, 10, 129, 1000]),
       method=st.sampled_from(METHODS), k1=st.sampled_from([0.0, 0.9, 1.2, 3.0]), b=st.sampled_from([0.0, 0.4, 0.75, 1.0]))
def test_all_algorithms_equal_exhaustive_and_reference(docs, qs, k, method, k1, b):
    index = BM25Index.build(docs, method=method, k1=k1, b=b, threads=2)
    for q in qs:
        base = index.search(q, k=k, algorithm="exhaustive")
        for algo in ALGORITHMS:
            got = index.search(q, k=k, algorithm=algo)
            np.testing.assert_array_equal(got.docnos, base.docnos, err_msg=f"{algo} documents")
            np.testing.assert_array_equal(got.scores, base.scores, err_msg=f"{algo} scores")
        ref_docs, ref_scores = reference_topk(docs, q, method, k1, b, k)
        assert_same_topk(base.docnos, base.scores, ref_docs, ref_scores)


def skewed_corpus(n_docs: int, vocab: int, max_len: int, seed: int) -> list[list[str]]:
    """Zipf-like term draws: frequent terms reach many 128-document blocks, rare ones one block."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    weights /= weights.sum()
    return [[f"w{t}" for t in rng.choice(vocab, size=rng.integers(0, max_len + 1), p=weights)] for _ in range(n_docs)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_docs=st.integers(1, 2000), vocab=st.integers(1, 60), max_len=st.integers(0, 40),
       seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 2, 10, 100, 128, 129, 5000]),
       method=st.sampled_from(METHODS), q_len=st.integers(1, 8))
def test_pruning_exact_on_multi_block_lists(n_docs, vocab, max_len, seed, k, method, q_len):
    docs = skewed_corpus(n_docs, vocab, max_len, seed)
    index = BM25Index.build(docs, method=method, stemmer=None, stopwords=None)
    rng = np.random.default_rng(seed + 1)
    for _ in range(4):
        q = [f"w{t}" for t in rng.integers(0, vocab + 2, size=q_len)]
        base = index.search(q, k=k, algorithm="exhaustive")
        for algo in ("auto", "maxscore", "bmw"):
            got = index.search(q, k=k, algorithm=algo)
            np.testing.assert_array_equal(got.docnos, base.docnos, err_msg=f"{algo} documents for {q}")
            np.testing.assert_array_equal(got.scores, base.scores, err_msg=f"{algo} scores for {q}")
        ref_docs, ref_scores = reference_topk(docs, q, method, 0.9, 0.4, k)
        assert_same_topk(base.docnos, base.scores, ref_docs, ref_scores)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_docs=st.integers(1, 1500), vocab=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       k=st.sampled_from([1, 3, 10, 200]), share=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
       method=st.sampled_from(METHODS), q_len=st.integers(1, 5))
def test_filtered_search_equals_search_then_filter(n_docs, vocab, seed, k, share, method, q_len):
    """Both plans (walk the allowed documents, or score the postings through a bitmap) give the unrestricted
    ranking with the other documents removed: the same documents, scores and tie order."""
    docs = skewed_corpus(n_docs, vocab, 30, seed)
    index = BM25Index.build(docs, method=method, stemmer=None, stopwords=None)
    rng = np.random.default_rng(seed + 2)
    allowed = np.flatnonzero(rng.random(n_docs) < share)
    for _ in range(3):
        q = [f"w{t}" for t in rng.integers(0, vocab + 2, size=q_len)]
        full = index.search(q, k=n_docs, algorithm="exhaustive")
        keep = np.isin(full.docnos, allowed)
        got = index.search(q, k=k, allowed=rng.permutation(np.concatenate([allowed, allowed[:3]])))
        np.testing.assert_array_equal(got.docnos, full.docnos[keep][:k])
        np.testing.assert_array_equal(got.scores, full.scores[keep][:k])


def test_filtered_search_bad_input():
    index = BM25Index.build(["a b", "b c", "c d"])
    assert index.search("b", k=5, allowed=[1]).ids.tolist() == ["1"]
    assert len(index.search("b", k=5, allowed=[])) == 0
    with pytest.raises(IndexError, match="out of range"):
        index.search("b", allowed=[3])
    with pytest.raises(IndexError, match="out of range"):
        index.search("b", allowed=[-1])
    with pytest.raises(TypeError, match="integer"):
        index.search("b", allowed=[0.5])
    with pytest.raises(ValueError, match="1-D"):
        index.search("b", allowed=[[0, 1]])


@settings(max_examples=25, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 40), max_size=25), min_size=1, max_size=300),
       q=st.lists(st.integers(0, 45), max_size=5))
def test_token_id_corpora(docs, q):
    index = BM25Index.build([np.array(d, dtype=np.int64) for d in docs], threads=1)
    assert index.input_mode == "ids"
    terms = [[str(t) for t in d] for d in docs]
    ref_docs, ref_scores = reference_topk(terms, [str(t) for t in q], "lucene", 0.9, 0.4, 20)
    for algo in ALGORITHMS:
        got = index.search(q, k=20, algorithm=algo)
        assert_same_topk(got.docnos, got.scores, ref_docs, ref_scores)
    np.testing.assert_array_equal(index.search(np.array(q, dtype=np.int32), k=20).docnos, index.search(q, k=20).docnos)


def test_pretokenized_strings_are_used_unchanged():
    docs = [["The", "Cats"], ["cats", "dog"], ["dog", "dog", "The"]]
    index = BM25Index.build(docs, ids=["a", "b", "c"])
    assert index.input_mode == "tokens"
    assert [h.id for h in index.search(["The"], k=5)] == ["a", "c"]  # the shorter document first
    assert index.search(["the"], k=5).ids.tolist() == []
    with pytest.raises(TypeError):
        index.search("The", k=5)


def test_text_index_takes_analysed_terms_as_a_list():
    index = BM25Index.build(["Running cats", "a dog runs", "cats and dogs"])
    assert index.query_terms("running cats cats") == [("run", 1), ("cat", 2)]
    for algo in ALGORITHMS:
        a = index.search("running cats cats", k=3, algorithm=algo)
        b = index.search(["run", "cat", "cat"], k=3, algorithm=algo)
        assert a.ids.tolist() == b.ids.tolist() and a.scores.tolist() == b.scores.tolist()
    assert len(index.search(["running"], k=3)) == 0  # list items are not analysed
    batch = index.search_batch([["dog"], "dogs"], k=2)
    assert batch.docnos[0].tolist() == batch.docnos[1].tolist()


def test_postings_codec_roundtrip():
    rng = np.random.default_rng(0)
    docs = [[f"t{int(x)}" for x in rng.zipf(1.3, size=rng.integers(1, 60)) if x < 200] for _ in range(3000)]
    index = BM25Index.build(docs, stemmer=None, stopwords=None)
    naive: dict[str, dict[int, int]] = {}
    for i, d in enumerate(docs):
        for t in d:
            naive.setdefault(t, {}).setdefault(i, 0)
            naive[t][i] += 1
    assert sorted(index.vocabulary()) == sorted(naive)
    for t, plist in naive.items():
        d, f = index.postings(t)
        assert d.tolist() == sorted(plist)
        assert f.tolist() == [plist[x] for x in sorted(plist)]
        assert index.document_frequency(t) == len(plist)
    np.testing.assert_array_equal(index.doc_lengths(), [len(d) for d in docs])


def test_postings_of_every_bit_width():
    """Document gaps and frequencies of widths 1..17 bits in one block and across blocks (the unpacker is
    specialised per width, with an unrolled part and a tail)."""
    n = 2**17
    where = sorted({(1 << k) - 1 for k in range(18) if (1 << k) - 1 < n} | set(range(200, 460)))
    tf = {d: 1 + (d % 70000 if d > 1000 else (1 << (d.bit_length() % 17))) for d in where}
    docs = [["a"] * tf[d] + ["b"] if d in tf else ["b"] for d in range(n)]
    index = BM25Index.build(docs, stemmer=None, stopwords=None)
    d, f = index.postings("a")
    assert d.tolist() == where
    assert f.tolist() == [tf[x] for x in where]


def test_records_ids_and_hits():
    corpus = [
        {"_id": "d1", "title": "Cats", "text": "Cats purr and sleep."},
        {"_id": "d2", "title": "Dogs", "text": "Dogs bark at cats."},
        {"id": 3, "title": "", "text": "Birds sing."},
    ]
    index = BM25Index.build(corpus)
    hits = index.search("cat", k=10)
    assert [h.id for h in hits] == ["d1", "d2"]
    assert hits[0].docno == 0 and hits[0].score > hits[1].score > 0
    assert isinstance(hits.scores, np.ndarray) and hits.scores.dtype == np.float32
    assert hits.to_dict().keys() == {"d1", "d2"}
    assert index.search("birds", k=1)[0].id == "3"
    assert index.doc_ids.tolist() == ["d1", "d2", "3"]
    assert "BM25Index(n_docs=3" in repr(index)


def test_k_larger_than_corpus_and_empty_queries():
    index = BM25Index.build(["alpha beta", "beta gamma", "delta"])
    assert len(index.search("beta", k=100)) == 2
    for q in ["", "   ", "the and of", "unknownword", "!!!"]:
        hits = index.search(q, k=5)
        assert len(hits) == 0 and hits.ids.shape == (0,)
    batch = index.search_batch(["beta", "", "delta"], k=3)
    assert batch.docnos.shape == (3, 3)
    assert batch.counts.tolist() == [2, 0, 1]
    assert batch.docnos[0, 2] == -1 and np.isneginf(batch.scores[0, 2]) and batch.ids[0, 2] is None
    assert batch.row(2).ids.tolist() == ["2"]
    # A k past the corpus size is cut to it: no row can hold more hits, and k=2**40 must not allocate 2**40 slots.
    huge = index.search_batch(["beta", "delta"], k=2**40)
    assert huge.docnos.shape == huge.scores.shape == huge.ids.shape == (2, 3)
    assert huge.counts.tolist() == [2, 1] and huge.row(0).docnos.tolist() == index.search("beta").docnos.tolist()


def test_ties_broken_by_document_number():
    index = BM25Index.build(["same words"] * 50 + ["other"])
    for algo in ALGORITHMS:
        assert index.search("same", k=7, algorithm=algo).docnos.tolist() == list(range(7))


def test_batch_equals_serial_and_threads_do_not_change_results(scifact, scifact_index):
    qids = list(scifact.test_queries)[:120]
    texts = [scifact.queries[q] for q in qids]
    one = scifact_index.search_batch(texts, k=100, threads=1)
    two = scifact_index.search_batch(texts, k=100, threads=2)
    np.testing.assert_array_equal(one.docnos, two.docnos)
    np.testing.assert_array_equal(one.scores, two.scores)
    for i in range(0, len(texts), 17):
        h = scifact_index.search(texts[i], k=100)
        np.testing.assert_array_equal(h.docnos, one.docnos[i, : one.counts[i]])


def test_concurrent_python_threads(scifact, scifact_index):
    texts = [scifact.queries[q] for q in list(scifact.test_queries)[:60]]
    serial = [scifact_index.search(t, k=50) for t in texts]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for j in range(len(texts)):
            i = (j + offset) % len(texts)
            algo = ALGORITHMS[(i + offset) % len(ALGORITHMS)]
            h = scifact_index.search(texts[i], k=50, algorithm=algo)
            if h.docnos.tolist() != serial[i].docnos.tolist() or h.scores.tolist() != serial[i].scores.tolist():
                errors.append(f"thread {offset} query {i}")

    threads = [threading.Thread(target=worker, args=(t * 7,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_scifact_matches_pyserini(scifact, scifact_index):
    """Pyserini's BEIR flat BM25 (Lucene, k1=0.9, b=0.4) reports nDCG@10 0.6789 on SciFact."""
    qids = list(scifact.test_queries)
    batch = scifact_index.search_batch([scifact.queries[q] for q in qids], k=1000)
    res = metrics.evaluate(batch.to_run(qids), scifact.qrels, ["ndcg@10", "recall@100"])
    assert abs(res["ndcg@10"] - 0.6789) <= 0.003
    assert res["recall@100"] > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_scifact_algorithms_agree_for_every_method(scifact, scifact_index, method):
    index = scifact_index.with_scoring(method, k1=1.2, b=0.75)
    texts = [scifact.queries[q] for q in scifact.test_queries]
    base = index.search_batch(texts, k=1000, algorithm="exhaustive", threads=2)
    for algo in ("auto", "maxscore", "bmw"):
        got = index.search_batch(texts, k=1000, algorithm=algo, threads=2)
        np.testing.assert_array_equal(got.docnos, base.docnos)
        np.testing.assert_array_equal(got.scores, base.scores)
    for k in (1, 10):
        got = index.search_batch(texts, k=k, algorithm="bmw", threads=2)
        np.testing.assert_array_equal(got.docnos, base.docnos[:, :k])


def test_scifact_scores_match_reference(scifact, scifact_index):
    analyzer = scifact_index.analyzer
    docs = analyzer.analyze_many([(d["title"] + " " + d["text"]) for d in scifact.corpus])
    for q in list(scifact.test_queries)[:25]:
        text = scifact.queries[q]
        got = scifact_index.search(text, k=20)
        ref_docs, ref_scores = reference_topk(docs, analyzer(text), "lucene", 0.9, 0.4, 20)
        assert_same_topk(got.docnos, got.scores, ref_docs, ref_scores)


def test_with_scoring_equals_fresh_build():
    docs = ["the cat sat on the mat", "a cat and a dog", "dogs and cats and mice", "mice"] * 40
    for method in METHODS:
        fresh = BM25Index.build(docs, method=method, k1=1.5, b=0.6)
        rescored = BM25Index.build(docs).with_scoring(method, k1=1.5, b=0.6)
        assert rescored.params == fresh.params
        for algo in ALGORITHMS:
            a, b = fresh.search("cat mice dog", k=30, algorithm=algo), rescored.search("cat mice dog", k=30, algorithm=algo)
            np.testing.assert_array_equal(a.docnos, b.docnos)
            np.testing.assert_array_equal(a.scores, b.scores)


def test_save_load_roundtrip(tmp_path):
    docs = [{"id": f"doc-{i}", "text": f"word{i % 7} common text number {i} ünïcode"} for i in range(500)]
    index = BM25Index.build(docs, method="bm25+", k1=1.1, b=0.5, stemmer=None)
    path = tmp_path / "idx.irf"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["idx.irf"]  # no temporary left behind
    for mmap in (True, False):
        loaded = BM25Index.load(path, mmap=mmap)
        assert loaded.params == index.params
        assert loaded.analyzer.stemmer is None and loaded.analyzer.stopwords == list(index.analyzer.stopwords)
        assert loaded.doc_ids.tolist() == index.doc_ids.tolist()
        for q in ["word3 number", "common", "ünïcode texts", "numbers"]:
            a, b = index.search(q, k=50), loaded.search(q, k=50)
            assert a.ids.tolist() == b.ids.tolist()
            np.testing.assert_array_equal(a.scores, b.scores)
    # saving over an existing index replaces it
    BM25Index.build(["other corpus"]).save(path)
    assert BM25Index.load(path).n_docs == 1


def test_save_load_token_ids(tmp_path):
    docs = [np.array([1, 2, 3]), np.array([3, 3, 4]), np.array([], dtype=np.int64)]
    index = BM25Index.build(docs)
    index.save(tmp_path / "ids.irf")
    loaded = BM25Index.load(tmp_path / "ids.irf")
    assert loaded.input_mode == "ids"
    assert loaded.search([3], k=5).docnos.tolist() == index.search([3], k=5).docnos.tolist() == [1, 0]
