from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from irforge import FMIndex  # noqa: E402
from irforge.seal_decoding import FMIndexLogitsProcessor  # noqa: E402

EOS = 2


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def corpus(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 64, size=rng.integers(5, 40)).tolist() for _ in range(30)]


def occurs(docs, gram):
    m = len(gram)
    return any(d[i:i + m] == gram for d in docs for i in range(len(d) - m + 1))


@pytest.mark.parametrize("num_beams", [1, 5])
def test_generated_ngrams_occur_in_the_corpus(tiny_llama, num_beams):
    docs = corpus()
    fm = FMIndex.build(docs)
    prompt = torch.tensor([[1, 5, 9, 11]])
    proc = FMIndexLogitsProcessor(fm, prompt_length=prompt.shape[1], eos_token_id=EOS, allow_eos_anywhere=False)
    out = tiny_llama.generate(prompt, logits_processor=[proc], num_beams=num_beams, num_return_sequences=num_beams,
                              max_new_tokens=8, do_sample=False, pad_token_id=0)
    for seq in out[:, prompt.shape[1]:].tolist():
        gram = [t for t in seq if t not in (EOS, 0)]
        assert gram and occurs(docs, gram), gram
    # Ranges were carried: one backward-search step per distinct prefix, each equal to a fresh search.
    for prefix, r in proc._ranges.items():
        if prefix:
            assert r == fm.range(list(prefix))
    assert proc.extend_calls == len(proc._ranges) - 1


def test_processor_masks_exactly_the_continuations():
    docs = [[5, 6, 7, 3], [6, 7, 8, 3], [5, 6, 3]]
    fm = FMIndex.build(docs)
    proc = FMIndexLogitsProcessor(fm, prompt_length=1, eos_token_id=EOS, allow_eos_anywhere=False)
    scores = torch.zeros(2, 16)
    ids = torch.tensor([[1, 6], [1, 8]])  # after [6]: 7 or 3; after [8]: 3
    out = proc(ids, scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [3, 7]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [3]
    ends = proc(torch.tensor([[1, 8, 3]]), torch.zeros(1, 16))  # [8, 3] ends a document: only EOS
    assert torch.isfinite(ends[0]).nonzero().flatten().tolist() == [EOS]
    with pytest.raises(ValueError):
        FMIndexLogitsProcessor(fm, prompt_length=-1)
    with pytest.raises(TypeError):
        FMIndexLogitsProcessor(docs, prompt_length=0)


def test_seal_retriever_end_to_end(tiny_llama):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from irforge.seal_decoding import SEALRetriever

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    docs = [" ".join(f"w{t - 3}" for t in d) for d in corpus(1)]
    r = SEALRetriever.build(docs, tiny_llama, hf_tok, doc_ids=[f"d{i}" for i in range(len(docs))], beam=4, key_length=4,
                            prompt="{query}")
    keys = r.generate_keys(docs[3].split()[0] + " " + docs[3].split()[1])
    assert keys and all(r.fm.count(list(g)) > 0 for g, _ in keys)
    assert all(lp <= 0.0 for _, lp in keys)
    # A random model's keys are no likelier given the query than in the corpus: SEAL weighs them 0.
    assert len(r.search("w5 w7", k=5)) == 0
    # Keys the model finds likely rank the documents holding them first.
    target = r.fm.extract(7)[:3].tolist()
    r.generate_keys = lambda query: [(tuple(target), -0.5), (tuple(target[:1]), -1.0)]
    hits = r.search("anything", k=5)
    docs_with_target = {d for d, _ in r.fm.locate(target).tolist()}
    assert int(hits.docnos[0]) in docs_with_target
    assert list(hits.scores) == sorted(hits.scores, reverse=True) and hits.scores[0] > 0
    # Arguments that would name the wrong documents or drop hits silently are refused.
    with pytest.raises(ValueError, match="k must be positive"):
        r.search("anything", k=-1)  # hits[:-1] would drop the last one
    with pytest.raises(ValueError, match="29 doc_ids for an FM-index of 30"):
        SEALRetriever(tiny_llama, hf_tok, r.fm, doc_ids=[f"d{i}" for i in range(29)])
    for bad in (dict(beam=0), dict(key_length=2.5), dict(beta=1.5), dict(alpha=float("inf"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SEALRetriever(tiny_llama, hf_tok, r.fm, **bad)
    with pytest.raises(ValueError, match="prompt"):
        SEALRetriever(tiny_llama, hf_tok, r.fm, prompt="no placeholder")
    with pytest.raises(TypeError, match="query must be str"):
        r.search(None)
