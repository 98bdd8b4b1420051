from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    env = os.environ.get("IRFORGE_DATA")
    if env:
        return Path(env)
    for cand in (Path("..") / "shared" / "data", REPO.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def scifact_dir() -> Path | None:
    root = data_root()
    if root is None:
        return None
    d = root / "beir" / "scifact"
    return d if (d / "corpus.jsonl").exists() else None


@pytest.fixture(scope="session")
def scifact():
    d = scifact_dir()
    if d is None:
        pytest.skip("SciFact not found (set IRFORGE_DATA to a directory holding beir/scifact)")
    from irforge.datasets import load_beir

    return load_beir(d)


@pytest.fixture(scope="session")
def scifact_index(scifact):
    from irforge import BM25Index

    return BM25Index.build(scifact.corpus)


# Triton kernels run in the interpreter when there is no GPU. The variable must be set before the kernels'
# modules are imported (triton.jit reads it when it decorates them).
try:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # torch is only needed by the kernel and decoding tests, which skip without it
    pass


# Files whose tests each take tens of seconds (compilers in subprocesses), run first: under pytest-xdist (the
# README's test command) they then overlap the many short tests instead of ending the run on one worker.
FIRST = ("tests/test_kernels_compile.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))  # stable: the order within each part is kept
