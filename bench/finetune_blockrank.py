"""Fine-tuning SmolLM2-135M with BlockRank's contrastive loss (BlockRankReranker.loss) on the CPU, and BlockRank's
nDCG@10 on held-out SciFact queries before and after.

    python bench/finetune_blockrank.py [--eval-queries 100] [--train-queries 200] [--epochs 1] [--lr 3e-5]
                                       [--max-doc-tokens 100] [--write FILE]

Queries: SciFact's judged test queries in qrels order; the first --eval-queries are evaluated (the same queries
as bench_rerank.py and study_blockrank.py), the next --train-queries train. The two sets share the corpus, not a
query. A training example is a query, BM25's top 20 documents and, as the positive, the best-ranked judged
relevant one among them (queries with none in the top 20 are skipped), the documents in a random order each
time (in BM25's order the positive is most often the first, and "ID: 1" would be learnt instead of relevance).
Evaluation gives the held-out lists both in BM25's order and in a fixed random order; a reranker that learnt
relevance ranks both alike. One optimizer step per example (AdamW, gradient norm clipped at 1); the layers
above BlockRank's scoring layer and the LM head get no gradient and are frozen. The loss is BlockRank's
auxiliary InfoNCE over S(q, d) at temperature 0.05, alone: BlockRank trains it beside the language-modelling
loss on the answer, which this script leaves out.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-queries", type=int, default=100)
    ap.add_argument("--train-queries", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-doc-tokens", type=int, default=100)
    ap.add_argument("--write", help="append the results to this markdown file")
    args = ap.parse_args()

    import numpy as np
    import torch
    import warnings

    from bench_bm25 import machine
    from bench_rerank import load_model, scifact_bm25
    from irforge.metrics import ndcg
    from irforge.rerank import BlockRankReranker

    warnings.simplefilter("ignore")  # BlockRank's query offset past SmolLM2's positions warns once
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ds, index, text = scifact_bm25()
    qids = list(ds.test_queries)
    eval_q = qids[:args.eval_queries]
    train_q = qids[args.eval_queries:args.eval_queries + args.train_queries]
    model, tok = load_model("smollm2", None, "cpu", torch.float32)
    br = BlockRankReranker(model, tok, max_doc_tokens=args.max_doc_tokens, backend="torch")
    top = {q: index.search(ds.queries[q], k=20).ids for q in eval_q + train_q}

    shuffled = {q: [top[q][i] for i in np.random.default_rng(1).permutation(len(top[q]))] for q in eval_q}

    def evaluate(lists) -> float:
        model.eval()
        out = []
        for q in eval_q:
            res = br.rerank(ds.queries[q], [text[i] for i in lists[q]])
            out.append(ndcg([str(lists[q][i]) for i in res.indices], ds.qrels[q], 10))
        return float(np.mean(out))

    examples = []
    for q in train_q:
        if any(ds.qrels[q].get(str(i), 0) > 0 for i in top[q]):
            examples.append(q)
    for name, p in model.named_parameters():  # only the embeddings and the layers up to the scoring layer learn
        p.requires_grad = name.startswith("model.embed_tokens") or any(
            name.startswith(f"model.layers.{i}.") for i in range(br.layer + 1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    bm25 = float(np.mean([ndcg([str(i) for i in top[q]], ds.qrels[q], 10) for q in eval_q]))
    chance = float(np.mean([ndcg([str(i) for i in shuffled[q]], ds.qrels[q], 10) for q in eval_q]))
    t = time.perf_counter()
    before = evaluate(top), evaluate(shuffled)
    eval_s = (time.perf_counter() - t) / (2 * len(eval_q))
    losses, steps_s = [], []
    rng = random.Random(0)
    for epoch in range(args.epochs):
        rng.shuffle(examples)
        model.train()
        for q in examples:
            # documents in a new random order each time, so that neither their order nor their "ID: i" tells
            # which is relevant (BM25's order would: the positive is most often its first document)
            docs = rng.sample(list(top[q]), len(top[q]))
            pos = docs.index(next(i for i in top[q] if ds.qrels[q].get(str(i), 0) > 0))
            t = time.perf_counter()
            loss = br.loss(ds.queries[q], [text[i] for i in docs], positive=pos)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            steps_s.append(time.perf_counter() - t)
            if len(losses) % 25 == 0:
                print(f"step {len(losses)}: mean loss of the last 25 {np.mean(losses[-25:]):.3f}", flush=True)
    after = evaluate(top), evaluate(shuffled)
    meta = machine()
    chunks = [float(np.mean(c)) for c in np.array_split(np.array(losses), min(8, len(losses)))] if losses else []
    out = (f"SmolLM2-135M-Instruct (float32, 2 CPU threads), BlockRank at layer {br.layer}, query offset "
           f"{br.query_offset}, documents cut to {args.max_doc_tokens} tokens. Date: "
           f"{meta['date']}; irforge git {meta['git']}; torch "
           f"{torch.__version__}; command: `python bench/finetune_blockrank.py --eval-queries {args.eval_queries} "
           f"--train-queries {args.train_queries} --epochs {args.epochs} --lr {args.lr:g} --max-doc-tokens "
           f"{args.max_doc_tokens}`.\n\n"
           f"| | value |\n|---|---|\n"
           f"| held-out queries (SciFact's first judged) | {len(eval_q)} |\n"
           f"| training examples (of {len(train_q)} queries, positive in BM25's top 20) | {len(examples)} |\n"
           f"| optimizer steps (AdamW, lr {args.lr:g}, {args.epochs} epoch(s)) | {len(losses)} |\n"
           f"| nDCG@10 held out: BM25 top 20 | {bm25:.4f} |\n"
           f"| nDCG@10 held out: BM25's top 20 in a random order (chance) | {chance:.4f} |\n"
           f"| nDCG@10 held out: BlockRank before fine-tuning, given BM25's order / a random order | "
           f"{before[0]:.4f} / {before[1]:.4f} |\n"
           f"| nDCG@10 held out: BlockRank after fine-tuning, given BM25's order / a random order | "
           f"{after[0]:.4f} / {after[1]:.4f} |\n"
           f"| InfoNCE loss, mean over eighths of training | {' / '.join(f'{c:.3f}' for c in chunks)} |\n"
           f"| seconds per training step (median) | {np.median(steps_s) if steps_s else 0:.2f} |\n"
           f"| seconds per evaluated query | {eval_s:.2f} |\n")
    print(out)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + out)


if __name__ == "__main__":
    main()
