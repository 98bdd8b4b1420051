from __future__ import annotations

import math

import numpy as np
import pytest

from irforge import BM25Index, FMIndex, metrics
from irforge.seal import NGramIndex, NGramRetriever, PhraseSearcher, ngram_weight, parse_phrases, seal_aggregate


def test_ngram_weight_formula():
    # log[P(n|q)(1-P(n))] - log[P(n)(1-P(n|q))], P(n) = (count + s) / (T + s)
    p_q, count, total = 0.3, 4, 1000
    p_n = (count + 5.0) / (total + 5.0)
    expected = max(0.0, math.log(p_q * (1 - p_n)) - math.log(p_n * (1 - p_q))) ** 2.0
    assert ngram_weight(math.log(p_q), count, total) == pytest.approx(expected, rel=1e-12)
    assert ngram_weight(math.log(0.001), 900, 1000) == 0.0  # less likely given the query than a priori
    assert ngram_weight(math.log(0.3), 0, 1000) == 0.0  # absent n-grams weigh nothing
    assert ngram_weight(0.0, 3, 1000) == 0.0  # P(n|q) = 1 is outside the formula's domain


def brute_aggregate(docs, weights, beta):
    """Greedy SEAL aggregation by direct scanning (no FM-index)."""
    scores = {}
    for d, toks in enumerate(docs):
        taken = [False] * len(toks)
        covered: set = set()
        s = 0.0
        found = False
        for g in sorted(weights, key=lambda g: (-weights[g], g)):
            for i in range(len(toks) - len(g) + 1):
                if tuple(toks[i:i + len(g)]) == g and not any(taken[i:i + len(g)]):
                    for j in range(i, i + len(g)):
                        taken[j] = True
                    toks_g = set(g)
                    coeff = 1.0 if not covered else 1 - beta + beta * len(toks_g - covered) / len(toks_g)
                    s += coeff * weights[g]
                    covered |= toks_g
                    found = True
                    break
        if found:
            scores[d] = s
    return scores


def test_aggregation_equals_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        docs = [rng.integers(0, 6, size=rng.integers(0, 30)).tolist() for _ in range(25)]
        fm = FMIndex.build(docs, sample_rate=4)
        grams = {tuple(rng.integers(0, 6, size=rng.integers(1, 4)).tolist()) for _ in range(8)}
        weights = {g: float(rng.uniform(0.1, 5.0)) for g in grams}
        got = seal_aggregate(fm, weights, beta=0.8, max_hits=10**9, n_docs_complete_score=10**9)
        ref = brute_aggregate(docs, {g: w for g, w in weights.items() if fm.count(g) > 0}, 0.8)
        assert got.keys() == ref.keys()
        for d in ref:
            assert got[d] == pytest.approx(ref[d], rel=1e-12)


def test_repetition_coefficient_discounts_overlap():
    fm = FMIndex.build([[1, 2, 3], [1, 2, 9, 3]])
    w = {(1, 2): 4.0, (2, 3): 3.0, (3,): 1.0}
    s = seal_aggregate(fm, w, beta=0.8)
    # doc 0: (1,2) then (2,3) overlaps positions; (3,) is new position but token 3 uncovered -> full weight
    assert s[0] == pytest.approx(4.0 + 1.0)
    # doc 1: (1,2) then (3,) at a free position; (2,3) absent
    assert s[1] == pytest.approx(4.0 + 1.0)
    fm2 = FMIndex.build([[1, 2, 7, 2, 1]])
    s2 = seal_aggregate(fm2, {(1, 2): 4.0, (2, 1): 2.0}, beta=0.8)
    assert s2[0] == pytest.approx(4.0 + (1 - 0.8) * 2.0)  # (2,1) repeats covered tokens 1 and 2


def test_model_free_retrieval_finds_the_right_documents():
    corpus = [{"id": "a", "text": "The quick brown fox jumps over the lazy dog"},
              {"id": "b", "text": "A lazy afternoon with a brown dog"},
              {"id": "c", "text": "Quantum computing with superconducting qubits"},
              {"id": "d", "text": "Foxes are quick; dogs are lazy"}]
    ng = NGramIndex.build(corpus)
    r = NGramRetriever(ng)
    hits = r.search("quick brown fox", k=3)
    assert hits[0].id == "a"
    assert "c" not in hits.ids.tolist()
    assert len(r.search("superconducting qubits", k=5)) == 1
    assert len(r.search("", k=5)) == 0 and len(r.search("the of and", k=5)) == 0
    with pytest.raises(TypeError):
        r.search(["quick"])
    with pytest.raises(ValueError):
        r.search("fox", k=0)
    with pytest.raises(ValueError):
        NGramRetriever(ng, beta=2.0)
    for bad in (dict(max_n=1.5), dict(max_hits=True), dict(alpha=float("nan")), dict(n_docs_complete_score="9")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NGramRetriever(ng, **bad)


def test_phrases():
    corpus = [{"id": "a", "text": "new york city is large"},
              {"id": "b", "text": "york is a city in england, new and old"},
              {"id": "c", "text": "the new york times"}]
    bm25 = BM25Index.build(corpus)
    ps = PhraseSearcher(bm25, NGramIndex.build(corpus))
    assert sorted(ps.search('"new york" city', k=10).ids.tolist()) == ["a", "c"]
    assert ps.search('"new york" "large"', k=10).ids.tolist() == ["a"]
    assert len(ps.search('"york new"', k=10)) == 0
    assert ps.search("new york", k=10).ids.tolist() == bm25.search("new york", k=10).ids.tolist()
    with pytest.raises(ValueError, match="unbalanced"):
        ps.search('"new york', k=3)
    with pytest.raises(TypeError, match="query must be str"):
        ps.search(None)
    assert parse_phrases('a "b c" d "e"') == (["b c", "e"], "a  b c  d  e ")


def test_model_free_on_scifact(scifact):
    ng = NGramIndex.build(scifact.corpus[:1500])
    r = NGramRetriever(ng)
    kept = {d["id"] for d in scifact.corpus[:1500]}
    qrels = {q: rels for q, rels in scifact.qrels.items() if set(rels) & kept}
    run = {q: r.search(scifact.queries[q], k=10).to_dict() for q in list(qrels)[:40]}
    res = metrics.evaluate(run, {q: qrels[q] for q in run}, ["ndcg@10"])
    assert res["ndcg@10"] > 0.3  # a real retriever, far above chance on this subset
