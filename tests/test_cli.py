from __future__ import annotations

import json
import os
import subprocess
import sys

from irforge.cli import main


def _corpus(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"body number{i % 3} words"})
                                for i in range(30)) + "\n")
    return corpus


def test_index_search_eval_roundtrip(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "x.irf"
    assert main(["index", "--corpus", str(corpus), "--output", str(out), "--threads", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 30 and info["bytes"] == out.stat().st_size
    assert main(["search", "--index", str(out), "--query", "number2 title", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split("\t")[0] == "1"
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "number1"}) + "\n")
    run = tmp_path / "run.trec"
    assert main(["search", "--index", str(out), "--queries", str(queries), "--output", str(run)]) == 0
    assert run.read_text().startswith("q1 Q0 d")


def test_eval_on_scifact_prints_json(scifact, capsys, tmp_path):
    from .conftest import scifact_dir

    assert main(["eval", "--data", str(scifact_dir()), "--retriever", "bm25", "--k", "1000", "--run",
                 str(tmp_path / "run.trec")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"ndcg@10", "recall@100", "queries", "ms_per_query"} <= res.keys()
    assert res["queries"] == 300 and abs(res["ndcg@10"] - 0.6789) <= 0.003
    assert len((tmp_path / "run.trec").read_text().splitlines()) > 250_000


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.irf"
    bad.write_bytes(b"garbage" * 10)
    assert main(["search", "--index", str(bad), "--query", "x"]) == 2
    assert "not an irforge index" in capsys.readouterr().err
    good = tmp_path / "good.irf"
    assert main(["index", "--corpus", str(_corpus(tmp_path)), "--output", str(good)]) == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "cats"}) + "\n" + json.dumps({"text": "dogs"}) + "\n")
    assert main(["search", "--index", str(good), "--queries", str(queries)]) == 2  # not a run for query "None"
    assert "query record 2 has no _id" in capsys.readouterr().err


def test_demo_runs_offline_without_data(tmp_path):
    env = dict(os.environ, IRFORGE_DATA=str(tmp_path / "none"), IRFORGE_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "irforge", "demo", "--offline"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "nDCG@10" in r.stdout and "standard library" in r.stdout
