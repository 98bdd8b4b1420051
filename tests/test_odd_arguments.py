"""Every public call, given odd values for each argument in turn, either works or raises one of the exceptions the
project promises for bad input (ValueError, TypeError, IndexError, OSError, KeyError): never AttributeError,
ZeroDivisionError, OverflowError, MemoryError (k=2**40 would need 8 TB if a batch were as wide as k),
RuntimeError or a crash. The tests beside each module check that the clear cases raise, with their messages."""
from __future__ import annotations

import numpy as np
import pytest

from irforge import BM25Index, FMIndex, metrics
from irforge.fmindex import SuffixRange
from irforge.seal import NGramIndex, NGramRetriever, PhraseSearcher

PROMISED = (ValueError, TypeError, IndexError, OSError, KeyError)

ODD = [None, -1, 0, 2**40, -2**63, 2**64, float("nan"), float("inf"), 1.5, True, "", "x", b"\xff", [], [[]], [None],
       [1, "a"], [-1], [2**40], [1.5], np.array([1.5]), np.array([[1]]), np.array([], dtype=np.int64),
       np.int64(3), "\ud800", {"id": 1}, object(), range(3), (1, 2)]


def calls(target):
    """(name, function of one odd value) for each argument of each public call of ``target``'s objects."""
    ix, fm, ng, ps = target
    return [
        ("BM25Index.build", lambda w: BM25Index.build(w)),
        ("BM25Index.build([w])", lambda w: BM25Index.build([w])),
        ("BM25Index.build(ids)", lambda w: BM25Index.build(["a", "b"], ids=w)),
        ("BM25Index.build(k1)", lambda w: BM25Index.build(["a"], k1=w)),
        ("BM25Index.build(lowercase)", lambda w: BM25Index.build(["a"], lowercase=w)),
        ("BM25Index.build(max_token_length)", lambda w: BM25Index.build(["a"], max_token_length=w)),
        ("search", lambda w: ix.search(w)),
        ("search(k)", lambda w: ix.search("cat", k=w)),
        ("search(algorithm)", lambda w: ix.search("cat", algorithm=w)),
        ("search(allowed)", lambda w: ix.search("cat", allowed=w)),
        ("search_batch", lambda w: ix.search_batch(w)),
        ("search_batch([w])", lambda w: ix.search_batch(["cat", w])),
        ("search_batch(k)", lambda w: ix.search_batch(["cat"], k=w)),
        ("search_batch(threads)", lambda w: ix.search_batch(["cat"], threads=w)),
        ("with_scoring", lambda w: ix.with_scoring(w)),
        ("with_scoring(b)", lambda w: ix.with_scoring("lucene", b=w)),
        ("postings", lambda w: ix.postings(w)),
        ("query_terms", lambda w: ix.query_terms(w)),
        ("BM25Index.load", lambda w: BM25Index.load(w)),
        ("FMIndex.build", lambda w: FMIndex.build(w)),
        ("FMIndex.build([w])", lambda w: FMIndex.build([w])),
        ("FMIndex.build(sample_rate)", lambda w: FMIndex.build([[1]], sample_rate=w)),
        ("FMIndex.build(next_cache)", lambda w: FMIndex.build([[1]], next_cache=w)),
        ("count", lambda w: fm.count(w)),
        ("locate", lambda w: fm.locate(w)),
        ("locate(limit)", lambda w: fm.locate([6], limit=w)),
        ("next_tokens", lambda w: fm.next_tokens(w)),
        ("doc_frequencies", lambda w: fm.doc_frequencies(w)),
        ("extract", lambda w: fm.extract(w)),
        ("extend(token)", lambda w: fm.extend(fm.full_range(), w)),
        ("extend(range)", lambda w: fm.extend(w, 6)),
        ("count_batch", lambda w: fm.count_batch([w])),
        ("count_batch(threads)", lambda w: fm.count_batch([[6]], threads=w)),
        ("FMIndex.load", lambda w: FMIndex.load(w)),
        ("NGramRetriever(max_n)", lambda w: NGramRetriever(ng, max_n=w)),
        ("NGramRetriever.search", lambda w: NGramRetriever(ng).search(w)),
        ("NGramRetriever.search_keys", lambda w: NGramRetriever(ng).search_keys([(w, -1.0)])),
        ("PhraseSearcher.search", lambda w: ps.search(w)),
        ("evaluate(run)", lambda w: metrics.evaluate({"q": w}, {"q": {"a": 1}})),
        ("evaluate(run score)", lambda w: metrics.evaluate({"q": {"a": w}}, {"q": {"a": 1}})),
        ("evaluate(qrels)", lambda w: metrics.evaluate({"q": {"a": 1.0}}, {"q": w})),
        ("evaluate(metrics)", lambda w: metrics.evaluate({"q": {"a": 1.0}}, {"q": {"a": 1}}, w)),
        ("write_trec_run", lambda w: metrics.write_trec_run({"q": {"a": 1.0}}, "run.trec", tag=w)),
    ]


def kernel_calls():
    """The same for the kernels' public calls on the CPU (needs torch)."""
    torch = pytest.importorskip("torch")
    from irforge.kernels import SegmentLayout, attention_mass, block_sparse_attention

    layout = SegmentLayout.from_lengths([(3, [2, 4], 2)])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(layout.total_tokens, h, 16, generator=g) for h in (4, 2, 2))
    rows = torch.tensor([9, 10])
    return [
        ("SegmentLayout", lambda w: SegmentLayout(w, np.array([0, 2]))),
        ("SegmentLayout.from_lengths", lambda w: SegmentLayout.from_lengths([(2, [w], 1)])),
        ("block_sparse_attention(q)", lambda w: block_sparse_attention(w, k, v, layout)),
        ("block_sparse_attention(layout)", lambda w: block_sparse_attention(q, k, v, w)),
        ("block_sparse_attention(scale)", lambda w: block_sparse_attention(q, k, v, layout, scale=w)),
        ("block_sparse_attention(backend)", lambda w: block_sparse_attention(q, k, v, layout, backend=w)),
        ("attention_mass(rows)", lambda w: attention_mass(q[rows], w, k, layout)),
        ("attention_mass(lse)", lambda w: attention_mass(q[rows], rows, k, layout, lse=w)),
        ("attention_mass(weights)", lambda w: attention_mass(q[rows], rows, k, layout, weights=w)),
        ("attention_mass(mode)", lambda w: attention_mass(q[rows], rows, k, layout, mode=w)),
        ("attention_mass(window)", lambda w: attention_mass(q[rows], rows, k, layout, window=w)),
        ("attention_mass(reduce)", lambda w: attention_mass(q[rows], rows, k, layout, reduce=w)),
    ]


@pytest.fixture(scope="module")
def target():
    docs = [{"id": "a", "text": "the cat sat on the mat"}, {"id": "b", "text": "dogs bark at cats"}]
    return (BM25Index.build(docs), FMIndex.build([[5, 6, 7], [6, 7, 8], [1]]), NGramIndex.build(docs),
            PhraseSearcher(BM25Index.build(docs), NGramIndex.build(docs)))


def escaped(named_calls) -> list[str]:
    """Each call with each odd value: what raised anything but the promised exceptions."""
    broken = []
    for name, call in named_calls:
        for w in ODD:
            try:
                call(w)
            except PROMISED:
                pass
            except Exception as e:  # noqa: BLE001 - the point is to catch whatever else escapes
                broken.append(f"{name}({w!r:.30}): {type(e).__name__}: {e}")
    return broken


def test_odd_arguments_raise_only_the_promised_exceptions(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a load or save of "x" or "" happens here, never in the checkout
    broken = escaped(calls(target))
    assert not broken, "\n".join(broken)


def test_odd_kernel_arguments_raise_only_the_promised_exceptions():
    broken = escaped(kernel_calls())
    assert not broken, "\n".join(broken)


def test_a_foreign_or_inverted_suffix_range_is_refused(target):
    _, fm, _, _ = target
    for r in (SuffixRange(3, 1), SuffixRange(0, 10**12)):
        with pytest.raises(ValueError, match="invalid suffix range"):
            fm.next_tokens(r)
        with pytest.raises(ValueError, match="invalid suffix range"):
            fm.extend(r, 6)
