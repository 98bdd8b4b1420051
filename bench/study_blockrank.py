"""Why zero-shot BlockRank with SmolLM2-135M ranks SciFact so poorly: its scores with BlockRank's layout and
positions against the same prompt run as the model was trained (plain causal attention, positions 0..T-1),
at every layer, from BlockRank's scoring rows (the last two query tokens) and from the whole query segment.

    python bench/study_blockrank.py [--queries 20] [--max-doc-tokens 100] [--query-offset 8192] [--write FILE]

One forward pass per prompt and variant runs all layers; at each layer the scoring rows' softmax over the
document keys (the same formula as BlockRank's S(q, d)) is computed explicitly for those few rows and summed
per document. Variants:
  blockrank     BlockRank's layout (documents see the instruction and themselves) and positions (each document
                restarting after the instruction, the query segment at --query-offset): what the reranker does;
  blockrank-seq BlockRank's layout with positions 0..T-1;
  causal        plain causal attention and positions 0..T-1: the prompt as the model reads any text.
Each with the scores as they are and calibrated as ICR does (minus the scores of the same prompt with the
content-free query "N/A" in the instruction and the query segment), per layer and summed over all layers.
The "blockrank" variant at the reranker's layer is checked against BlockRankReranker.scores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
VARIANTS = ("blockrank", "blockrank-seq", "causal")
STUDY = "irforge_study"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--max-doc-tokens", type=int, default=100)
    ap.add_argument("--query-offset", type=int, default=8192)
    ap.add_argument("--write", help="append the table to this markdown file")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    import warnings
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from bench_bm25 import machine
    from bench_rerank import load_model, scifact_bm25
    from irforge.kernels import DOCUMENT, SegmentLayout, block_sparse_attention
    from irforge.metrics import ndcg
    from irforge.rerank import BlockRankReranker

    warnings.simplefilter("ignore")  # the query offset past SmolLM2's positions warns once per reranker
    torch.set_num_threads(2)
    ds, index, text = scifact_bm25()
    model, tok = load_model("smollm2", None, "cpu", torch.float32)
    br = BlockRankReranker(model, tok, max_doc_tokens=args.max_doc_tokens, query_offset=args.query_offset)
    depth = model.config.num_hidden_layers
    state: dict = {}

    def attention(module, query, key, value, attention_mask, **kwargs):
        scaling = float(kwargs.get("scaling") or module.scaling)
        group = query.shape[1] // key.shape[1]
        if state["variant"] == "causal":
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
            out = out.transpose(1, 2)
        else:
            q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
            out = block_sparse_attention(q, k, v, state["layout"], scale=scaling, backend="torch")[0][None]
        # the scoring rows attend causally to the whole prompt in every variant: their probabilities, explicitly
        kk = key[0].repeat_interleave(group, 0).double()  # [H, T, D]
        for name, rows in state["rows"].items():
            s = torch.einsum("hrd,htd->hrt", query[0][:, rows].double(), kk) * scaling
            s = s.masked_fill(torch.arange(s.shape[-1])[None, None, :] > rows[None, :, None], float("-inf"))
            p = torch.softmax(s.masked_fill(~state["doc_keys"], float("-inf")), -1)  # over document keys only
            per_key = p.mean((0, 1))
            state["scores"][name][module.layer_idx] = torch.zeros(state["n_seg"], dtype=torch.float64).index_add_(
                0, state["seg"], per_key)[state["doc_segments"]].numpy()
        return out, None

    AttentionInterface.register(STUDY, attention)
    AttentionMaskInterface.register(STUDY, lambda *a, **k: None)
    qids = list(ds.test_queries)[:args.queries]
    ROWS = ("last2", "query", "last2-cal", "query-cal")
    ranked = {(v, rows, layer): {} for v in VARIANTS for rows in ROWS for layer in range(-1, depth)}
    bm25, check = {}, []
    t0 = time.perf_counter()
    for qid in qids:
        hits = index.search(ds.queries[qid], k=20)
        docs = [text[i] for i in hits.ids]
        bm25[qid] = hits.to_dict()
        per = {}  # (variant, rows, query or "N/A") -> [layers, documents]
        for query in (ds.queries[qid], "N/A"):
            ids, pos, (inst, lens, qlen), _ = br._encode(query, docs)
            layout = SegmentLayout.from_lengths([(inst, lens, qlen)])
            T = len(ids)
            state.update(layout=layout, n_seg=len(layout.kinds), seg=torch.as_tensor(layout.segment_ids()),
                         doc_keys=torch.as_tensor(layout.key_kinds() == DOCUMENT),
                         doc_segments=torch.arange(1, 1 + len(lens)),
                         rows={"last2": torch.arange(T - 2, T), "query": torch.arange(T - qlen, T)})
            for variant in VARIANTS:
                state["variant"] = variant
                state["scores"] = {name: np.zeros((depth, len(docs))) for name in state["rows"]}
                positions = pos if variant == "blockrank" else list(range(T))
                prev = model.config._attn_implementation
                model.set_attn_implementation(STUDY)
                try:
                    with torch.inference_mode():
                        model.base_model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]),
                                         use_cache=False)
                finally:
                    model.set_attn_implementation(prev)
                for name, per_layer in state["scores"].items():
                    per[(variant, name, query == "N/A")] = per_layer
                if variant == "blockrank" and query != "N/A":
                    with torch.inference_mode():
                        ref = br.scores(query, docs)[0].double().numpy()
                    check.append(float(np.abs(state["scores"]["last2"][br.layer] - ref).max() / np.abs(ref).max()))
        for variant in VARIANTS:
            for name in ("last2", "query"):
                for cal in (False, True):  # calibrated: minus the scores of the content-free query "N/A"
                    per_layer = per[(variant, name, False)] - (per[(variant, name, True)] if cal else 0)
                    for layer in range(-1, depth):  # -1: summed over all layers
                        s = per_layer.sum(0) if layer < 0 else per_layer[layer]
                        order = np.lexsort((np.arange(len(s)), -s))
                        ranked[(variant, name + "-cal" * cal, layer)][qid] = [str(hits.ids[i]) for i in order]
    secs = time.perf_counter() - t0

    def mean_ndcg(run):
        return float(np.mean([ndcg(run[q], ds.qrels[q], 10) for q in qids]))

    base = float(np.mean([ndcg(sorted(bm25[q], key=lambda d: -bm25[q][d]), ds.qrels[q], 10) for q in qids]))
    table = {key: mean_ndcg(run) for key, run in ranked.items()}
    meta = machine()
    lines = [f"SciFact, first {len(qids)} judged queries, BM25 top 20 (nDCG@10 {base:.4f}), documents cut to "
             f"{args.max_doc_tokens} tokens, SmolLM2-135M-Instruct (float32, CPU), query offset "
             f"{args.query_offset} in the blockrank variant. Date: "
             f"{meta['date']}; irforge git {meta['git']}; command: "
             f"`python bench/study_blockrank.py --queries {args.queries} --max-doc-tokens {args.max_doc_tokens} "
             f"--query-offset {args.query_offset}`. Columns: variant, scoring rows (last2: the last two query "
             f"tokens, BlockRank's; query: the whole query segment), -cal: calibrated by \"N/A\". The blockrank "
             f"variant at layer {br.layer} equals BlockRankReranker.scores to {max(check):.1e} (relative to the "
             f"largest score).", "",
             "| layer | " + " | ".join(f"{v}, {r}" for v in VARIANTS for r in ROWS) + " |",
             "|---|" + "---|" * (len(ROWS) * len(VARIANTS))]
    for layer in list(range(depth)) + [-1]:
        cells = [f"{table[(v, r, layer)]:.4f}" for v in VARIANTS for r in ROWS]
        lines.append(f"| {'all (sum)' if layer < 0 else layer} | " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    print(out)
    print(f"{secs:.0f} s")
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + out)


if __name__ == "__main__":
    main()
