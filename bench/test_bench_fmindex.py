"""pytest-benchmark suite for the FM-index (not part of the default test run).

    pytest bench/test_bench_fmindex.py --benchmark-only

Uses the first 10,000 wiki100k passages, BPE-tokenised as in bench_fmindex.py (cached after the first run;
training the tokenizer needs the `tokenizers` package). Skips without the data.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(os.environ.get("IRFORGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (ROOT / "wiki100k" / "corpus.jsonl.gz").exists(), reason="wiki100k not found")


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("tokenizers")
    import irforge
    from bench_fmindex import corpus_tokens, patterns

    tokens, offsets = corpus_tokens(10_000)
    fm = irforge.FMIndex.build([tokens[offsets[d]:offsets[d + 1]] for d in range(len(offsets) - 1)])
    return fm, patterns(tokens, offsets, 200)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_count_batch(benchmark, setup, m):
    fm, pats = setup
    benchmark(fm.count_batch, pats[m], threads=1)


@pytest.mark.parametrize("m", [2, 4])
def test_locate(benchmark, setup, m):
    fm, pats = setup
    benchmark(lambda: [fm.locate(p, limit=100) for p in pats[m][:50]])


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_next_tokens(benchmark, setup, m):
    fm, pats = setup
    benchmark(fm.next_tokens_batch, pats[m][:100], threads=1)
