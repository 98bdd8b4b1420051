"""pytest-benchmark suite for the BM25 engine (not part of the default test run).

    pytest bench/test_bench_bm25.py --benchmark-only
    pytest bench/test_bench_bm25.py --benchmark-only --benchmark-compare   # against a saved run

Uses SciFact from $IRFORGE_DATA (default ../shared/data) and skips without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import irforge
from irforge.datasets import load_beir

ROOT = Path(os.environ.get("IRFORGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SCIFACT = ROOT / "beir" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason="SciFact not found")


@pytest.fixture(scope="module")
def dataset():
    return load_beir(SCIFACT)


@pytest.fixture(scope="module")
def index(dataset):
    return irforge.BM25Index.build(dataset.corpus)


@pytest.fixture(scope="module")
def queries(dataset):
    return list(dataset.test_queries.values())


def test_build(benchmark, dataset):
    benchmark.pedantic(irforge.BM25Index.build, args=(dataset.corpus,), kwargs={"threads": 2}, rounds=5)


@pytest.mark.parametrize("algorithm", irforge.ALGORITHMS)
@pytest.mark.parametrize("k", [10, 1000])
def test_search_one_query_at_a_time(benchmark, index, queries, algorithm, k):
    def run():
        for q in queries:
            index.search(q, k=k, algorithm=algorithm)

    benchmark(run)


@pytest.mark.parametrize("threads", [1, 2])
def test_search_batch(benchmark, index, queries, threads):
    benchmark(index.search_batch, queries, k=10, threads=threads)


def test_save_load(benchmark, index, tmp_path):
    path = tmp_path / "scifact.irf"

    def run():
        index.save(path)
        return irforge.BM25Index.load(path)

    benchmark(run)
