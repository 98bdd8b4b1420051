from __future__ import annotations

import gzip
import json

import pytest

from irforge import BM25Index, metrics
from irforge.datasets import iter_jsonl, load_beir, stdlib_corpus


def write_beir(d, gz=False):
    d.mkdir(parents=True)
    (d / "qrels").mkdir()
    docs = [{"_id": "d1", "title": "Solar power", "text": "Panels turn sunlight into electricity."},
            {"_id": "d2", "title": "Wind", "text": "Turbines turn wind into electricity."},
            {"_id": "d3", "text": "Cats sleep a lot."}]
    lines = "\n".join(json.dumps(x) for x in docs) + "\n"
    if gz:
        with gzip.open(d / "corpus.jsonl.gz", "wt") as f:
            f.write(lines)
    else:
        (d / "corpus.jsonl").write_text(lines)
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "sunlight electricity"}) + "\n"
                                     + json.dumps({"_id": "q2", "text": "unjudged"}) + "\n")
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir(tmp_path, gz):
    write_beir(tmp_path / "toy", gz=gz)
    ds = load_beir(tmp_path / "toy")
    assert ds.name == "toy" and len(ds.corpus) == 3
    assert ds.corpus[2] == {"id": "d3", "title": "", "text": "Cats sleep a lot."}
    assert ds.test_queries == {"q1": "sunlight electricity"}
    index = BM25Index.build(ds.corpus)
    run = index.search_batch(list(ds.test_queries.values()), k=10).to_run(list(ds.test_queries))
    assert metrics.evaluate(run, ds.qrels, ["ndcg@10"])["ndcg@10"] == 1.0


def test_load_beir_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_beir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus"):
        load_beir(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(iter_jsonl(bad))
    write_beir(tmp_path / "noqid")
    (tmp_path / "noqid" / "queries.jsonl").write_text(json.dumps({"text": "a query without an id"}) + "\n")
    with pytest.raises(ValueError, match="query record 1 has no _id"):
        load_beir(tmp_path / "noqid")
    (tmp_path / "noqid" / "queries.jsonl").write_text(json.dumps({"_id": 7, "text": "a"}) + "\n"
                                                      + json.dumps({"_id": "7", "text": "b"}) + "\n")
    with pytest.raises(ValueError, match="query id '7' appears twice"):  # one would silently replace the other
        load_beir(tmp_path / "noqid")


def test_scifact_shape(scifact):
    assert len(scifact.corpus) == 5183
    assert len(scifact.test_queries) == 300


def test_stdlib_corpus_is_a_real_collection():
    ds = stdlib_corpus(max_docs=3000)
    assert len(ds.corpus) > 500 and len(ds.qrels) > 50
    ids = [d["id"] for d in ds.corpus]
    assert len(set(ids)) == len(ids)
    for q, rels in ds.qrels.items():
        assert set(rels) <= set(ids) and q in ds.queries
