"""Evaluation measures with trec_eval's definitions, and TREC run files.

A run is ``{query id: {doc id: score}}``; qrels are ``{query id: {doc id: relevance}}``. As in trec_eval,
each query's documents are ranked by score (descending), ties by document id in descending string
order, whatever order the run lists them in; a document is relevant when its relevance is >= 1.
Means are taken over all queries of the qrels; a query the run does not answer, or one without any
relevant document, counts as 0 (trec_eval's ``-c``).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from typing import Union

from ._io import atomic_save

__all__ = ["evaluate", "ndcg", "recall", "mrr", "average_precision", "precision", "write_trec_run",
           "read_trec_run", "read_qrels", "parse_metric"]

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

_METRIC_RE = re.compile(r"^(ndcg|recall|mrr|map|p)(?:@(\d+))?$")


def parse_metric(name: str) -> tuple[str, Union[int, None]]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; ``"map"`` -> ``("map", None)``."""
    m = _METRIC_RE.match(name.strip().lower())
    if not m:
        raise ValueError(f"unknown metric {name!r}; use ndcg@k, recall@k, mrr@k, p@k, map or map@k")
    kind, k = m.group(1), m.group(2)
    if kind in ("ndcg", "recall", "p") and k is None:
        raise ValueError(f"metric {name!r} needs a cutoff, e.g. {kind}@10")
    if k is not None and int(k) <= 0:
        raise ValueError(f"metric cutoff must be positive in {name!r}")
    return kind, (int(k) if k is not None else None)


def _ranked(docs: Mapping[str, float]) -> list[str]:
    # trec_eval: score descending, then document id descending (two stable sorts)
    items = sorted(docs.items(), key=lambda x: x[0], reverse=True)
    items.sort(key=lambda x: -x[1])
    return [d for d, _ in items]


def ndcg(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (trec_eval's ``ndcg_cut``)."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    n_rel = sum(1 for r in rels.values() if r >= 1)
    if n_rel == 0:
        return 0.0
    return sum(1 for d in ranking[:k] if rels.get(d, 0) >= 1) / n_rel


def precision(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """P@k: relevant among the first k, divided by k (trec_eval's ``P``)."""
    return sum(1 for d in ranking[:k] if rels.get(d, 0) >= 1) / k


def mrr(ranking: list[str], rels: Mapping[str, int], k: Union[int, None] = None) -> float:
    """Reciprocal rank of the first relevant document within the first k (trec_eval's ``recip_rank``)."""
    for i, d in enumerate(ranking if k is None else ranking[:k]):
        if rels.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def average_precision(ranking: list[str], rels: Mapping[str, int], k: Union[int, None] = None) -> float:
    """AP (trec_eval's ``map``), or AP cut at k (``map_cut``)."""
    n_rel = sum(1 for r in rels.values() if r >= 1)
    if n_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranking if k is None else ranking[:k]):
        if rels.get(d, 0) >= 1:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel


_FUNCS = {"ndcg": ndcg, "recall": recall, "p": precision, "mrr": mrr, "map": average_precision}


def _check_entries(table: Mapping, what: str, value: str) -> None:
    """TypeError or ValueError unless every query of ``table`` maps str document ids to real, non-NaN numbers:
    a document id of another type would never match (a silent 0), and a NaN score has no rank."""
    for q, docs in table.items():
        if not isinstance(docs, Mapping):
            raise TypeError(f"{what}[{q!r}] must be a mapping {{doc id: {value}}}, got {type(docs).__name__}")
        for d, v in docs.items():
            if not isinstance(d, str):
                raise TypeError(f"{what}[{q!r}]: document ids must be str, got {type(d).__name__} {d!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{what}[{q!r}][{d!r}]: the {value} must be a number, got {type(v).__name__}")
            if math.isnan(v):
                raise ValueError(f"{what}[{q!r}][{d!r}]: the {value} is NaN")


def evaluate(
    run: Run, qrels: Qrels, metrics: Union[str, Iterable[str]] = ("ndcg@10", "recall@100", "mrr@10", "map"),
    per_query: bool = False,
) -> dict:
    """Mean of each metric over the judged queries (see the module docstring for the conventions).

    ``metrics``: names such as ``"ndcg@10"`` (or one name). Document ids must be str and scores real numbers,
    not NaN (TypeError / ValueError naming the entry). With ``per_query=True`` returns
    ``{metric: {query id: value}}`` instead of means.
    """
    if not isinstance(run, Mapping) or not isinstance(qrels, Mapping):
        raise TypeError("run and qrels must be mappings {query id: {doc id: value}}")
    _check_entries(run, "run", "score")
    _check_entries(qrels, "qrels", "relevance")
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    for m in names:
        if not isinstance(m, str):
            raise TypeError(f"metric names must be str, got {type(m).__name__}")
    parsed = [parse_metric(m) for m in names]
    queries = list(qrels)
    table: dict[str, dict[str, float]] = {m: {} for m in names}
    for q in queries:
        ranking = _ranked(run.get(q, {}))
        for name, (kind, k) in zip(names, parsed):
            table[name][q] = _FUNCS[kind](ranking, qrels[q], k)
    if per_query:
        return table
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in table.items()}


def write_trec_run(run: Run, path: Union[str, "os.PathLike[str]"], tag: str = "irforge") -> None:
    """Write a run in TREC format (``qid Q0 docid rank score tag``), ranked as trec_eval ranks it. The file is
    written atomically: on an error (an id with whitespace) nothing is left under ``path`` or beside it."""
    if not isinstance(tag, str):
        raise TypeError(f"run tag must be a str, got {type(tag).__name__}")
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for q, docs in run.items():
                if any(c.isspace() for c in str(q)):
                    raise ValueError(f"query id {q!r} contains whitespace")
                for rank, d in enumerate(_ranked(docs), start=1):
                    if any(c.isspace() for c in d):
                        raise ValueError(f"document id {d!r} contains whitespace")
                    f.write(f"{q} Q0 {d} {rank} {docs[d]:.6f} {tag}\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_save(path, write)


def read_trec_run(path: Union[str, "os.PathLike[str]"]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(f"{path}:{n}: expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}")
            try:
                score = float(parts[4])
            except ValueError:
                raise ValueError(f"{path}:{n}: score {parts[4]!r} is not a number") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    return run


def read_qrels(path: Union[str, "os.PathLike[str]"]) -> dict[str, dict[str, int]]:
    """Read qrels as TREC (``qid 0 docid rel``) or BEIR TSV (``query-id corpus-id score`` with a header)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 4:
                q, d, r = parts[0], parts[2], parts[3]
            elif len(parts) == 3:
                q, d, r = parts
            else:
                raise ValueError(f"{path}:{n}: expected 3 or 4 columns, got {len(parts)}")
            try:
                rel = int(r)
            except ValueError:
                if n == 1:  # header line
                    continue
                raise ValueError(f"{path}:{n}: relevance {r!r} is not an integer") from None
            qrels.setdefault(q, {})[d] = rel
    return qrels
