from __future__ import annotations

import random

import numpy as np
import pytest

from irforge import metrics

pytrec_eval = pytest.importorskip("pytrec_eval")


def random_collection(seed: int, n_queries: int = 40):
    rnd = random.Random(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        docs = [f"d{rnd.randrange(300)}" for _ in range(rnd.randrange(1, 120))]
        qrels[qid] = {d: rnd.choice([0, 0, 1, 1, 2, 3]) for d in rnd.sample(range(300), rnd.randrange(1, 25)) for d in [f"d{d}"]}
        # coarse scores make many ties, which trec_eval breaks by document id
        run[qid] = {d: float(rnd.randrange(8)) / 2 for d in docs}
    run.pop("q3")  # a judged query without results
    return run, qrels


def trec(run, qrels, measures):
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@pytest.mark.parametrize("seed", range(6))
def test_per_query_values_equal_trec_eval(seed):
    run, qrels = random_collection(seed)
    ours = metrics.evaluate(run, qrels, ["ndcg@10", "ndcg@5", "recall@10", "recall@100", "map", "map@10", "p@5"], per_query=True)
    ref = trec(run, qrels, {"ndcg_cut.5,10", "recall.10,100", "map", "map_cut.10", "P.5"})
    pairs = {"ndcg@10": "ndcg_cut_10", "ndcg@5": "ndcg_cut_5", "recall@10": "recall_10", "recall@100": "recall_100",
             "map": "map", "map@10": "map_cut_10", "p@5": "P_5"}
    for q, vals in ref.items():
        for ours_name, ref_name in pairs.items():
            assert ours[ours_name][q] == pytest.approx(vals[ref_name], abs=1e-12), (q, ours_name)


@pytest.mark.parametrize("seed", range(3))
def test_mrr_at_k_equals_trec_eval_on_truncated_run(seed):
    run, qrels = random_collection(seed)
    k = 5
    ranked = {q: metrics._ranked(docs)[:k] for q, docs in run.items()}
    truncated = {q: {d: run[q][d] for d in ds} for q, ds in ranked.items()}
    ref = trec(truncated, qrels, {"recip_rank"})
    ours = metrics.evaluate(run, qrels, [f"mrr@{k}"], per_query=True)[f"mrr@{k}"]
    for q, vals in ref.items():
        assert ours[q] == pytest.approx(vals["recip_rank"], abs=1e-12)


def test_missing_queries_count_as_zero_in_the_mean():
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 0}, "d": {"w": 2}}  # c has no relevant document
    run = {"a": {"x": 1.0}, "c": {"z": 1.0}}
    assert metrics.evaluate(run, qrels, ["ndcg@10", "recall@10"]) == {"ndcg@10": 0.25, "recall@10": 0.25}


def test_trec_run_roundtrip(tmp_path):
    run = {"q1": {"d1": 1.5, "d2": 2.5, "d3": 2.5}, "q2": {"d9": 0.1}}
    path = tmp_path / "run.trec"
    metrics.write_trec_run(run, path, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 2.500000 t"  # tie broken by document id, descending, as trec_eval does
    assert lines[1].startswith("q1 Q0 d2 2 ")
    assert metrics.read_trec_run(path) == run
    with pytest.raises(ValueError, match="whitespace"):
        metrics.write_trec_run({"q": {"bad id": 1.0}}, tmp_path / "x.trec")
    with pytest.raises(ValueError, match="whitespace"):  # a failed write keeps the earlier file and leaves no other
        metrics.write_trec_run({"q": {"ok": 1.0}, "q 2": {"d": 1.0}}, path)
    assert metrics.read_trec_run(path) == run and sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]
    with pytest.raises(TypeError, match="run tag must be a str"):
        metrics.write_trec_run(run, path, tag=None)


def test_read_qrels_formats(tmp_path):
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    trec_file = tmp_path / "qrels.txt"
    trec_file.write_text("q1 0 d1 1\nq1 0 d2 2\n")
    assert metrics.read_qrels(beir) == metrics.read_qrels(trec_file) == {"q1": {"d1": 1, "d2": 2}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1\td1\t1\nq1\td2\tx\n")
    with pytest.raises(ValueError, match="not an integer"):
        metrics.read_qrels(bad)


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "foo@10", "recall"])
def test_bad_metric_names(name):
    with pytest.raises(ValueError):
        metrics.evaluate({}, {"q": {"d": 1}}, [name])


def test_bad_runs_and_qrels_raise_instead_of_scoring_zero():
    """Entries that would silently score 0 (a document id that is not a str never matches the qrels) or rank
    arbitrarily (NaN) raise, naming the entry; one metric name may be given as a str."""
    qrels = {"q": {"a": 1, "b": 0}}
    for run, exc, match in [({"q": {1: 1.0}}, TypeError, r"run\['q'\]: document ids must be str"),
                            ({"q": {"a": float("nan")}}, ValueError, "NaN"),
                            ({"q": {"a": "0.5"}}, TypeError, "score must be a number"),
                            ({"q": ["a"]}, TypeError, "must be a mapping")]:
        with pytest.raises(exc, match=match):
            metrics.evaluate(run, qrels, ["ndcg@10"])
    with pytest.raises(TypeError, match=r"qrels\['q'\]: document ids must be str"):
        metrics.evaluate({"q": {"a": 1.0}}, {"q": {7: 1}}, ["ndcg@10"])
    with pytest.raises(TypeError, match="metric names must be str"):
        metrics.evaluate({"q": {"a": 1.0}}, qrels, [10])
    assert metrics.evaluate({"q": {"a": np.float32(2.0)}}, qrels, "ndcg@10") == {"ndcg@10": 1.0}


def test_scifact_run_equals_trec_eval(scifact, scifact_index):
    qids = list(scifact.test_queries)
    run = scifact_index.search_batch([scifact.queries[q] for q in qids], k=1000).to_run(qids)
    ours = metrics.evaluate(run, scifact.qrels, ["ndcg@10", "recall@100", "map"])
    ref = trec(run, scifact.qrels, {"ndcg_cut.10", "recall.100", "map"})
    for ours_name, ref_name in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("map", "map")):
        assert ours[ours_name] == pytest.approx(sum(v[ref_name] for v in ref.values()) / len(ref), abs=1e-12)
