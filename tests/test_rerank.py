from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("triton")

from irforge.rerank import ICRReranker  # noqa: E402
from irforge.rerank.icr import icr_token_mass_eager  # noqa: E402

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + "here are some paragraphs : [ ] 1 2 3 4 5 6 7 8 9 query please find " \
    "information that is relevant to the following in above . n/a cats dogs sleep bark fish swim birds fly " \
    "quantum physics energy the a of".split()


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")


def tiny(kind: str):
    """A random 3-layer model. "llama", "qwen2"; with sliding windows of 7 tokens (shorter than the test
    prompts): "mistral-window" (every layer), "qwen2-window" (layers 1 and 2), "gemma3" (every layer, and a
    softmax scale that is not 1/sqrt(head_dim)); "gemma2-softcap" (soft-capped attention logits); "gpt2"
    (learned positions, no key/value groups, its transformer under another attribute than ``model``)."""
    torch.manual_seed(0)
    common = dict(vocab_size=len(WORDS), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    cfg, cls = {
        "llama": lambda: (transformers.LlamaConfig(**common), transformers.LlamaForCausalLM),
        "qwen2": lambda: (transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM),
        "mistral-window": lambda: (transformers.MistralConfig(**common, sliding_window=7),
                                   transformers.MistralForCausalLM),
        "qwen2-window": lambda: (transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=7,
                                                          max_window_layers=1), transformers.Qwen2ForCausalLM),
        "gemma3": lambda: (transformers.Gemma3TextConfig(**common, head_dim=8, sliding_window=7),
                           transformers.Gemma3ForCausalLM),
        "gemma2-softcap": lambda: (transformers.Gemma2Config(**common, head_dim=8), transformers.Gemma2ForCausalLM),
        "gpt2": lambda: (transformers.GPT2Config(vocab_size=len(WORDS), n_embd=48, n_layer=3, n_head=6, n_positions=512,
                                                 bos_token_id=1, eos_token_id=2), transformers.GPT2LMHeadModel),
    }[kind]()
    return cls(cfg).eval()


DOCS = ["cats sleep", "dogs bark and bark", "fish swim", "quantum physics of energy", "birds"]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral-window", "qwen2-window", "gemma3", "gpt2"])
def test_mass_from_the_attention_hook_equals_eager_output_attentions(tokenizer, kind):
    """Sliding-window layers (here 7 tokens, shorter than the prompt) contribute the mass within their window,
    as eager attention, which applies transformers' own sliding-window masks, does."""
    model = tiny(kind)
    r = ICRReranker(model, tokenizer, chat="none")
    prompt, _ = r.build_prompt(DOCS)
    got = r.token_mass(prompt, ["cats sleep", "N/A"])
    eager = tiny(kind)
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    for q, m in zip(["cats sleep", "N/A"], got):
        ref = icr_token_mass_eager(eager, prompt.ids, r.query_ids(q))
        np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-7)
    # scores and ranking equal those from the eager masses
    ref_scores = r.doc_scores(prompt, icr_token_mass_eager(eager, prompt.ids, r.query_ids("cats sleep")),
                              icr_token_mass_eager(eager, prompt.ids, r.query_ids("N/A")))
    scores, _ = r.score("cats sleep", DOCS)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-7)
    assert r.rerank("cats sleep", DOCS).indices.tolist() == np.lexsort((np.arange(5), -ref_scores)).tolist()


def test_prompt_layout_and_truncation(tokenizer):
    r = ICRReranker(tiny("llama"), tokenizer, chat="none", max_doc_tokens=2)
    prompt, order = r.build_prompt(DOCS)
    assert order == [4, 3, 2, 1, 0]  # first-stage top document last, next to the query
    starts = [a for a, _ in prompt.doc_spans]
    assert starts == sorted(starts, reverse=True)
    assert prompt.truncated == [1, 3]
    with pytest.warns(UserWarning, match="2 of 5 documents cut to 2 tokens"):
        res = r.rerank("cats", DOCS, k=3)
    assert res.truncated == [1, 3] and len(res.indices) == 3
    r2 = ICRReranker(tiny("llama"), tokenizer, chat="none", reverse_order=False)
    assert r2.build_prompt(DOCS)[1] == [0, 1, 2, 3, 4]


GEMMA_LIKE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] | trim }}"
              "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_chat_tags_from_the_tokenizers_own_template(tokenizer):
    """A chat template of no known family (here Gemma's layout) gives the tags around the user message, with the
    generation prompt; both rerankers put them around their instruction and query, BOS once."""
    import copy

    from irforge.rerank import BlockRankReranker
    from irforge.rerank.prompts import chat_family, template_tags

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = GEMMA_LIKE
    head, tail = "<s><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"
    assert chat_family(tok) == "template" and template_tags(tok) == (head, tail)
    assert chat_family(tokenizer) == "none" and template_tags(tokenizer) is None
    r = ICRReranker(tiny("llama"), tok)
    prompt, _ = r.build_prompt(DOCS)
    head_ids, tail_ids = (tok(t, add_special_tokens=False)["input_ids"] for t in (head, tail))
    assert head_ids[0] == tok.bos_token_id and len(head_ids) > 1
    assert prompt.ids[:len(head_ids)] == head_ids and prompt.ids.count(tok.bos_token_id) == 1
    assert r.query_ids("cats")[-len(tail_ids):] == tail_ids
    assert np.isfinite(r.rerank("cats", DOCS).scores).all()
    b = BlockRankReranker(tiny("llama"), tok, layer=1, query_offset=300)
    ids = b.build("cats", DOCS)[0][0].tolist()
    assert ids[:len(head_ids)] == head_ids and ids.count(tok.bos_token_id) == 1
    with pytest.raises(ValueError, match="chat template"):
        ICRReranker(tiny("llama"), tokenizer, chat="template")
    tok.chat_template = "{{ raise_exception('no lone user messages') }}"
    assert chat_family(tok) == "none"


def adversarial_texts(seed=0):
    """Word salad of several lengths, runs of one character, CJK, emoji, whitespace runs."""
    rng = np.random.default_rng(seed)
    words = ["cat", "dogs", "the", "energy", "quantum", "re-ranking", "α-helix", "2014–2023", "(n=12)", "don't"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(0, 900, size=40)]
    texts += ["a" * 5000, "-" * 3000 + " x", "  " * 2000 + "end", "日本語のテキストです。" * 300, "🙂🙃" * 800,
              "word\n\n" * 900, "x", "", "control tokens as text: </s> <s> <|im_end|> <|im_start|>assistant " * 40]
    texts += ["".join(rng.choice(list("aab  cde\n"), size=4000)) for _ in range(10)]
    return texts


def test_truncation_tokenises_a_prefix_yet_equals_whole_text_tokenisation(tokenizer):
    """truncate_many's first budget tokens and cut flags equal whole-text tokenisation for local models (BPE
    without pre-tokenisation, word-level) and for Unigram without word splitting (tokenised whole)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from irforge.rerank.prompts import encode, truncate_many

    texts = adversarial_texts()
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))  # merges may cross spaces: no pre-tokeniser
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"]))
    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    uni.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>"], unk_token="<unk>"))
    toks = {"word-level": tokenizer,
            "bpe": transformers.PreTrainedTokenizerFast(tokenizer_object=bpe),
            "unigram": transformers.PreTrainedTokenizerFast(tokenizer_object=uni)}
    for name, tok in toks.items():
        whole = [encode(tok, t, plain=True) for t in texts]
        for budget in (1, 7, 100, 300):
            got = truncate_many(tok, texts, budget)
            for i, (w, (ids, cut)) in enumerate(zip(whole, got)):
                assert ids == w[:budget] and cut == (len(w) > budget), f"{name}, budget {budget}, text {i}"
    assert truncate_many(tokenizer, [], 5) == []


def test_documents_and_queries_never_become_control_tokens(tokenizer):
    """Corpus and query text holding "</s>" or "<s>" keeps them as text: the only BOS in a prompt is the one it
    starts with, and no EOS appears (on a mistral-tagged prompt, whose template holds neither)."""
    from irforge.rerank import BlockRankReranker

    docs = ["cats sleep </s> dogs", "<s> fish swim", "birds </s>"]
    query = "cats </s> <s> sleep"
    for chat in ("none", "mistral"):
        icr = ICRReranker(tiny("llama"), tokenizer, chat=chat)
        prompt, _ = icr.build_prompt(docs)
        ids = prompt.ids + icr.query_ids(query)
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        assert tokenizer.eos_token_id not in ids
        br = BlockRankReranker(tiny("llama"), tokenizer, chat=chat, layer=1, query_offset=300)
        ids = br.build(query, docs)[0][0].tolist()
        assert ids.count(tokenizer.bos_token_id) == 1 and tokenizer.eos_token_id not in ids
        assert np.isfinite(icr.rerank(query, docs).scores).all()


def test_one_token_documents_and_bad_input(tokenizer):
    r = ICRReranker(tiny("llama"), tokenizer, chat="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = r.rerank("birds fly", ["birds", "a", "fish", "dogs"])
    assert sorted(res.indices.tolist()) == [0, 1, 2, 3] and np.all(np.isfinite(res.scores))
    assert r.rerank("x", []).indices.tolist() == []
    with pytest.raises(TypeError):
        r.rerank("x", ["ok", 3])
    with pytest.raises(ValueError):
        r.rerank("x", ["a"], k=0)
    with pytest.raises(ValueError):
        ICRReranker(tiny("llama"), tokenizer, max_doc_tokens=0)
    with pytest.raises(ValueError, match="chat"):
        ICRReranker(tiny("llama"), tokenizer, chat="alpaca")


def test_both_rerankers_reject_what_would_rank_the_wrong_thing(tokenizer):
    """A single string as the documents (its characters would be ranked) or as the queries of a batch raises
    TypeError; numpy integers are valid k; a bool or a fraction is no layer, token budget or offset; a backend
    name is checked when the reranker is built, not at its first forward pass; so are the switches (a bool, not a
    string that would count as true), the model and the tokenizer."""
    from irforge.rerank import BlockRankReranker

    model = tiny("llama")
    for r in (ICRReranker(model, tokenizer, chat="none"),
              BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300)):
        with pytest.raises(TypeError, match="single string"):
            r.rerank("cats", "cats sleep")
        with pytest.raises(TypeError, match="single string"):
            r.rerank_batch("cats", [DOCS])
        assert r.rerank("cats", DOCS, k=np.int64(2)).indices.tolist() == r.rerank("cats", DOCS, k=2).indices.tolist()
        assert len(r.rerank("cats", np.array(DOCS[:3])).indices) == 3  # any sequence of str
    for bad in (dict(layer=True), dict(layer=1.5), dict(max_doc_tokens=True), dict(query_offset=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BlockRankReranker(model, tokenizer, chat="none", **bad)
    with pytest.raises(ValueError, match="backend"):
        BlockRankReranker(model, tokenizer, chat="none", backend="cuda")
    with pytest.raises(ValueError, match="max_doc_tokens"):
        ICRReranker(model, tokenizer, max_doc_tokens=False)
    for bad in (dict(reverse_order="no"), dict(calibrate=0), dict(progress=None)):  # "no" would count as true
        with pytest.raises(TypeError, match=next(iter(bad))):
            ICRReranker(model, tokenizer, chat="none", **bad)
    with pytest.raises(TypeError, match="progress"):
        BlockRankReranker(model, tokenizer, chat="none", progress="yes")
    for cls in (ICRReranker, BlockRankReranker):
        with pytest.raises(TypeError, match="model must be"):
            cls(None, tokenizer, chat="none")
        with pytest.raises(TypeError, match="tokenizer must be"):
            cls(model, None, chat="none")
    assert ICRReranker(model, tokenizer, chat="none", calibrate=np.bool_(False)).calibrate is False


def test_capture_sums_layers_of_one_pass_and_refuses_a_second_shape(tokenizer):
    """capture_mass adds every layer's mass into one total: for one prompt, the eager reference; a second pass
    over other keys inside the same capture raises instead of mixing them."""
    from irforge.rerank.attention import capture_mass, use_capture_attention

    model = tiny("llama")
    eager = tiny("llama")
    eager.set_attn_implementation("eager")
    ids = [1, 8, 9, 10, 11, 12, 13, 14]
    with torch.inference_mode(), use_capture_attention(model):
        with capture_mass() as cap:
            model(torch.tensor([ids]))
        assert cap.layers == 3 and cap.mass.shape == (len(ids),)
        # every row is a query row here: the mean over rows of each causal row's probabilities, summed over heads
        out = eager(torch.tensor([ids]), output_attentions=True)
        ref = sum(a[0].double().sum(0).mean(0) for a in out.attentions)
        np.testing.assert_allclose(cap.mass.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match="one forward pass"):
            with capture_mass():
                model(torch.tensor([ids]))
                model(torch.tensor([ids[:5]]))


def test_nan_scores_rank_last():
    from irforge.rerank.icr import _rank

    assert _rank(np.array([0.5, np.nan, 2.0, 0.5]), 4).tolist() == [2, 0, 3, 1]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_blockrank_scores_equal_the_masked_dense_reference(tokenizer, kind):
    from irforge.rerank import BlockRankReranker
    from irforge.rerank.blockrank import blockrank_scores_eager

    model = tiny(kind)
    r = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300)
    got, _ = r.scores("cats sleep", DOCS)
    eager = tiny(kind)
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    ref = blockrank_scores_eager(eager, r, "cats sleep", DOCS)
    np.testing.assert_allclose(got.detach().double().numpy(), ref.numpy(), rtol=1e-4, atol=1e-7)
    assert abs(float(got.detach().sum()) - 1.0) < 1e-5  # a softmax over document tokens
    res = r.rerank("cats sleep", DOCS, k=3)
    assert res.indices.tolist() == np.lexsort((np.arange(5), -ref.numpy()))[:3].tolist()


def test_windows_warn_and_soft_capped_or_sink_logits_raise(tokenizer):
    """BlockRank's layout replaces a sliding window, and says so; attention neither reranker reproduces
    (Gemma 2's soft-capped logits, gpt-oss's sink logits) raises instead of being dropped."""
    from irforge.rerank import BlockRankReranker
    from irforge.rerank.attention import check_attention_kwargs

    with pytest.warns(UserWarning, match="sliding window of 7 tokens"):
        BlockRankReranker(tiny("mistral-window"), tokenizer, chat="none", layer=1, query_offset=300).rerank(
            "cats sleep", DOCS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockRankReranker(tiny("llama"), tokenizer, chat="none", layer=1, query_offset=300).rerank("cats sleep", DOCS)
    model = tiny("gemma2-softcap")
    with pytest.raises(ValueError, match="soft-cap"):
        ICRReranker(model, tokenizer, chat="none").rerank("cats sleep", DOCS)
    with pytest.raises(ValueError, match="soft-cap"):
        BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300).rerank("cats sleep", DOCS)
    with pytest.raises(ValueError, match="sink"):
        check_attention_kwargs({"s_aux": torch.zeros(6)}, "ICR")
    check_attention_kwargs({"softcap": None, "s_aux": None, "sliding_window": 7}, "ICR")


def test_position_range_warns_for_rotary_models_and_raises_for_learned_positions(tokenizer):
    """Prompts past max_position_embeddings: a rotary model runs on with one warning per reranker; learned
    position embeddings (GPT-2) would index outside their table, so ValueError comes before any forward pass."""
    from irforge.rerank import BlockRankReranker

    rotary = tiny("llama")
    rotary.config.max_position_embeddings = 20
    r = ICRReranker(rotary, tokenizer, chat="none")
    with pytest.warns(UserWarning, match="past the model's 20 positions") as seen:
        r.rerank("cats sleep", DOCS)
        r.rerank("fish", DOCS)
    assert sum("positions" in str(w.message) for w in seen) == 1
    with pytest.warns(UserWarning, match="past the model's 20 positions"):
        BlockRankReranker(rotary, tokenizer, chat="none", layer=1, query_offset=300).rerank("cats", DOCS)
    learned = tiny("gpt2")
    learned.config.max_position_embeddings = 20  # GPT-2's n_positions
    for reranker in (ICRReranker(learned, tokenizer, chat="none"),
                     BlockRankReranker(learned, tokenizer, chat="none", layer=1, query_offset=10)):
        with pytest.raises(ValueError, match="learned position embeddings"):
            reranker.rerank("cats sleep", DOCS)
    with warnings.catch_warnings():  # within the range: silent
        warnings.simplefilter("error")
        ICRReranker(tiny("llama"), tokenizer, chat="none").rerank("cats sleep", DOCS)


def test_blockrank_positions_and_bad_input(tokenizer):
    from irforge.rerank import BlockRankReranker

    r = BlockRankReranker(tiny("llama"), tokenizer, chat="none", query_offset=400, max_doc_tokens=3)
    ids, pos, layout, doc_segments, rows, truncated = r.build("cats", DOCS)
    segs = list(layout.segments())
    inst_len = segs[0][1]
    for a, b, kind, _, _ in segs[1:-1]:
        assert pos[0, a].item() == inst_len  # every document restarts right after the instruction
    assert pos[0, segs[-1][0]].item() == 400 and truncated == [1, 3]
    assert r.layer == int(3 * 5 / 8)
    with pytest.raises(ValueError):
        BlockRankReranker(tiny("llama"), tokenizer, layer=3)
    with pytest.raises(IndexError):
        r.loss("cats", DOCS, positive=9)
    with pytest.raises(TypeError, match="positive"):
        r.loss("cats", DOCS, positive=1.0)
    for bad in (0.0, -0.05, float("nan"), float("inf")):  # would give inf or NaN losses
        with pytest.raises(ValueError, match="temperature"):
            r.loss("cats", DOCS, positive=1, temperature=bad)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_blockrank_loss_gradients_equal_the_dense_reference(tokenizer, device):
    """Fine-tuning's gradients: the loss with the default backend ("auto", which under autograd runs the
    PyTorch paths, also on CUDA, where it would otherwise pick the forward-only Triton kernels) against the
    dense float64 reference paths ("naive"), for the attention projections of every layer that runs."""
    from irforge.rerank import BlockRankReranker

    model = tiny("llama").to(device)
    grads = {}
    for backend in ("auto", "naive"):
        r = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=200, backend=backend)
        model.zero_grad()
        r.loss("fish swim", DOCS, positive=2).backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()
                          if any(x in n for x in ("q_proj", "k_proj", "v_proj")) and p.grad is not None}
    assert len(grads["naive"]) == 5  # layer 0, and layer 1 but its v (scores read q and k; layer 2 never runs)
    for name, want in grads["naive"].items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(grads["auto"][name], want, atol=1e-6, rtol=1e-3, msg=name)


def test_blockrank_training_step_lowers_the_contrastive_loss(tokenizer):
    from irforge.rerank import BlockRankReranker

    model = tiny("llama").train()
    r = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=200, backend="torch")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = r.loss("fish swim", DOCS, positive=2)
    before.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = r.loss("fish swim", DOCS, positive=2)
    assert after.item() < before.item()


@pytest.mark.filterwarnings("ignore:BlockRank. position id")  # the default offset past the tiny model's range
@pytest.mark.parametrize("reranker", ["icr", "blockrank"])
def test_cli_eval_with_a_reranker(tokenizer, scifact, tmp_path, capsys, reranker):
    import json

    from irforge.cli import main

    from .conftest import scifact_dir

    model = tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["eval", "--data", str(scifact_dir()), "--reranker", reranker, "--model", str(tmp_path / "m"),
                     "--rerank-depth", "4", "--max-queries", "3", "--max-doc-tokens", "16", "--k", "10"]) == 0
    texts = [str(w.message) for w in seen]
    assert not any("documents cut" in t for t in texts)  # reported in the JSON instead
    # BlockRank's default query offset (8192) lies past the tiny model's 512 positions: said on stderr
    assert any("past the model's 512 positions" in t for t in texts) == (reranker == "blockrank")
    res = json.loads(capsys.readouterr().out)
    assert res["queries"] == 3 and res["reranker"] == reranker and res["rerank_depth"] == 4
    assert {"ndcg@10_before_rerank", "ndcg@10_after_rerank", "rerank_s_per_query"} <= res.keys()
    assert res["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert res["dtype"] == ("bfloat16" if torch.cuda.is_available() else "float32")
    args = ["eval", "--data", str(scifact_dir()), "--reranker", reranker, "--model", str(tmp_path / "m"),
            "--rerank-depth", "4", "--max-queries", "2", "--max-doc-tokens", "16", "--k", "10"]
    assert main(args + ["--device", "cpu", "--dtype", "bf16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16"
    if reranker == "blockrank":
        with warnings.catch_warnings():  # an offset within the model's 512 positions: no warning
            warnings.simplefilter("error")
            assert main(args + ["--query-offset", "200", "--layer", "1"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["query_offset"] == 200 and res["layer"] == 1
        with pytest.raises(SystemExit, match="layer"):
            main(args + ["--layer", "7"])
    with pytest.raises(SystemExit, match="dtype"):
        main(args + ["--dtype", "int8"])
    with pytest.raises(SystemExit, match="device"):
        main(args + ["--device", "tpu9"])


def test_device_and_dtype_choices(tokenizer):
    """device/dtype move and cast the model in place; bfloat16 and float16 score within a thousandth of the
    largest float32 score; bad choices are clear errors before anything runs."""
    from irforge.rerank import BlockRankReranker

    for cls, kw in ((ICRReranker, {}), (BlockRankReranker, dict(layer=1, query_offset=300))):
        ref = cls(tiny("llama"), tokenizer, chat="none", **kw).rerank("cats sleep", DOCS)
        for name, dtype in (("bf16", torch.bfloat16), (torch.float16, torch.float16), ("float32", torch.float32)):
            r = cls(tiny("llama"), tokenizer, chat="none", device="cpu", dtype=name, **kw)
            assert next(r.model.parameters()).dtype == dtype
            got = r.rerank("cats sleep", DOCS)
            np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=1e-3 * np.abs(ref.scores).max())
        for bad, err in ((dict(dtype="int8"), ValueError), (dict(dtype=torch.int64), ValueError),
                         (dict(dtype=torch.float64), ValueError), (dict(dtype=3), TypeError),
                         (dict(device="tpu9"), ValueError), (dict(device=3), TypeError)):
            with pytest.raises(err, match="device|dtype"):
                cls(tiny("llama"), tokenizer, chat="none", **bad, **kw)
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="no CUDA device"):
                cls(tiny("llama"), tokenizer, chat="none", device="cuda", **kw)


def test_rerank_batch_for_both_rerankers(tokenizer):
    from irforge.rerank import BlockRankReranker

    for r in (ICRReranker(tiny("llama"), tokenizer, chat="none", progress=True),
              BlockRankReranker(tiny("llama"), tokenizer, chat="none", query_offset=300, progress=True)):
        out = r.rerank_batch(["cats", "fish swim"], [DOCS, DOCS[:2]], k=2)
        assert [len(x.indices) for x in out] == [2, 2]
        assert out[1].indices.tolist() == r.rerank("fish swim", DOCS[:2], k=2).indices.tolist()
        with pytest.raises(ValueError, match="2 queries but 1"):
            r.rerank_batch(["a", "b"], [DOCS])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_blockrank_packed_batches_equal_one_prompt_at_a_time(tokenizer, kind):
    """Prompts packed into one forward pass (several per pack, and a budget that splits them) score exactly as
    they do alone: the block-sparse layout keeps the prompts apart and positions restart per prompt."""
    from irforge.rerank import BlockRankReranker

    model = tiny(kind)
    queries = ["cats sleep", "fish swim", "birds", "dogs bark loudly"]
    lists = [DOCS, DOCS[:2], [], DOCS[1:4]]
    alone = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300, batch_tokens=0)
    for budget in (10**6, 60):
        packed = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300, batch_tokens=budget)
        got = packed.rerank_batch(queries, lists)
        ref = alone.rerank_batch(queries, lists)
        for q, d, g, r in zip(queries, lists, got, ref):
            assert g.indices.tolist() == r.indices.tolist()
            np.testing.assert_allclose(g.scores, r.scores, rtol=1e-5, atol=1e-7)
            if d:
                single = alone.rerank(q, d)
                np.testing.assert_allclose(g.scores, single.scores, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="batch_tokens"):
        BlockRankReranker(model, tokenizer, batch_tokens=-1)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen2-window"])
def test_icr_batches_equal_one_prompt_at_a_time(tokenizer, kind):
    """Prompts of different lengths run together (left-padded prefixes, right-padded queries, the N/A round on
    the same KV cache) score as they do alone, under budgets that hold every prompt, some, or one."""
    model = tiny(kind)
    queries = ["cats sleep", "fish swim", "birds", "dogs bark loudly", "energy"]
    lists = [DOCS, DOCS[:2], [], DOCS[1:4], ["physics"]]
    alone = ICRReranker(model, tokenizer, chat="none", batch_tokens=0)
    for budget in (10**6, 150, 0):
        for calibrate in (True, False):
            batched = ICRReranker(model, tokenizer, chat="none", batch_tokens=budget, calibrate=calibrate)
            alone.calibrate = calibrate
            got = batched.rerank_batch(queries, lists, k=3)
            for q, d, g in zip(queries, lists, got):
                ref = alone.rerank(q, d, k=3)
                assert g.indices.tolist() == ref.indices.tolist()
                assert np.isfinite(g.scores).all()
                np.testing.assert_allclose(g.scores, ref.scores, rtol=1e-4, atol=1e-7)
    prompts = [alone.build_prompt(d)[0] for d in (DOCS, DOCS[:1])]
    masses = alone.token_masses(prompts, [["cats", "N/A"], ["fish swim loudly", "N/A"]])
    for p, q, m in zip(prompts, ["cats", "fish swim loudly"], masses):
        np.testing.assert_allclose(m[0], alone.token_mass(p, [q])[0], rtol=1e-4, atol=1e-7)
        assert m[0].shape == (len(p.ids),)
    with pytest.raises(ValueError, match="one list of queries per prompt"):
        alone.token_masses(prompts, [["cats"]])
    with pytest.raises(ValueError, match="batch_tokens"):
        ICRReranker(model, tokenizer, batch_tokens=2.5)


def test_retrieve_rerank_pipeline(tokenizer):
    """BM25's top ``depth`` reordered by the reranker: the hits are the reranker's ranking of exactly those
    documents, with its scores; search_batch (one first-stage batch, one rerank_batch) equals search query by
    query, including a query that retrieves nothing; a first-stage hit without text raises KeyError naming it."""
    from irforge import BM25Index
    from irforge.pipeline import RetrieveRerank

    corpus = {f"d{i}": t for i, t in enumerate(DOCS + ["cats and dogs", "fish and birds fly", "the cats swim"])}
    index = BM25Index.build(list(corpus.values()), ids=list(corpus), stemmer=None, stopwords=None)
    r = ICRReranker(tiny("llama"), tokenizer, chat="none")
    pipe = RetrieveRerank(index, r, corpus, depth=3)
    queries = ["cats", "fish swim", "quantum", "n/a"]  # the last retrieves nothing
    alone = [pipe.search(q, k=2) for q in queries]
    for q, hits in zip(queries, alone):
        first = index.search(q, k=3)
        if len(first) == 0:
            assert len(hits) == 0
            continue
        ref = r.rerank(q, [corpus[i] for i in first.ids], k=2)
        assert list(hits.ids) == [first.ids[i] for i in ref.indices]
        np.testing.assert_allclose(hits.scores, ref.scores, rtol=1e-6)
        assert set(hits.docnos) <= set(first.docnos) and len(hits) == min(2, len(first))
    for got, ref in zip(pipe.search_batch(queries, k=2, threads=1), alone):
        assert list(got.ids) == list(ref.ids)
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-7)
    by_function = RetrieveRerank(index, r, corpus.__getitem__, depth=3)
    assert list(by_function.search("cats", k=2).ids) == list(alone[0].ids)
    with pytest.raises(KeyError, match="'d0'"):
        RetrieveRerank(index, r, {k: v for k, v in corpus.items() if k != "d0"}, depth=3).search("cats sleep")
    with pytest.raises(ValueError, match="k must be positive"):
        pipe.search("cats", k=0)
    with pytest.raises(TypeError, match="single string"):
        pipe.search_batch("cats")
    with pytest.raises(ValueError, match="depth"):
        RetrieveRerank(index, r, corpus, depth=0)
    with pytest.raises(TypeError, match="texts"):
        RetrieveRerank(index, r, ["cats"], depth=3)
    with pytest.raises(TypeError, match="reranker must have a rerank"):  # not an AttributeError at the first query
        RetrieveRerank(index, None, corpus, depth=3)
    with pytest.raises(TypeError, match="retriever must have a search"):
        RetrieveRerank(corpus, r, corpus, depth=3)


def test_cli_eval_seal_with_a_model(tokenizer, scifact, tmp_path, capsys):
    import json

    from irforge.cli import main

    from .conftest import scifact_dir

    model = tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert main(["eval", "--data", str(scifact_dir()), "--retriever", "ngram", "--model", str(tmp_path / "m"),
                 "--max-queries", "2", "--k", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["queries"] == 2 and "constrained beam search" in res["retriever"] and 0.0 <= res["ndcg@10"] <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen2-window"])
def test_rerankers_on_cuda_equal_the_cpu(tokenizer, kind):
    """On a GPU (fp32 weights; the Triton kernels' fp32 dot products run in TF32, hence the tolerance): ICR
    through the attention hook and the attention-mass kernel (with sliding-window layers too), and BlockRank
    through the block-sparse kernel, score as on the CPU, one prompt at a time and batched (batch_tokens
    defaults to 16,384 on a GPU)."""
    from irforge.rerank import BlockRankReranker

    cpu, gpu = tiny(kind), tiny(kind).cuda()
    queries = ["cats sleep", "fish swim", "dogs bark loudly"]
    lists = [DOCS, DOCS[:2], DOCS[1:4]]
    for cls, kw in ((ICRReranker, {}), (BlockRankReranker, dict(layer=1, query_offset=300))):
        ref = cls(cpu, tokenizer, chat="none", batch_tokens=0, **kw)
        dev = cls(gpu, tokenizer, chat="none", **kw)
        assert dev.batch_tokens == 16384
        for got in (dev.rerank_batch(queries, lists), [dev.rerank(q, d) for q, d in zip(queries, lists)]):
            for q, d, g in zip(queries, lists, got):
                r = ref.rerank(q, d)
                assert sorted(g.indices.tolist()) == list(range(len(d)))
                np.testing.assert_allclose(g.scores, r.scores, rtol=2e-2, atol=1e-4)


def test_odd_reranker_arguments_raise_only_the_promised_exceptions(tokenizer):
    """The odd-value matrix of tests/test_odd_arguments.py, on both rerankers' constructors and calls."""
    from irforge.rerank import BlockRankReranker

    from .test_odd_arguments import escaped

    model = tiny("llama")
    icr = ICRReranker(model, tokenizer, chat="none")
    br = BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=300)
    named = [("ICRReranker(model)", lambda w: ICRReranker(w, tokenizer, chat="none")),
             ("ICRReranker(max_doc_tokens)", lambda w: ICRReranker(model, tokenizer, chat="none", max_doc_tokens=w)),
             ("ICRReranker(calibrate)", lambda w: ICRReranker(model, tokenizer, chat="none", calibrate=w)),
             ("ICRReranker(chat)", lambda w: ICRReranker(model, tokenizer, chat=w)),
             ("BlockRankReranker(layer)", lambda w: BlockRankReranker(model, tokenizer, chat="none", layer=w)),
             ("BlockRankReranker(query_offset)",
              lambda w: BlockRankReranker(model, tokenizer, chat="none", layer=1, query_offset=w))]
    for name, r in (("icr", icr), ("blockrank", br)):
        named += [(f"{name}.rerank(query)", lambda w, r=r: r.rerank(w, DOCS[:2])),
                  (f"{name}.rerank(docs)", lambda w, r=r: r.rerank("cats", w)),
                  (f"{name}.rerank(k)", lambda w, r=r: r.rerank("cats", DOCS[:2], k=w)),
                  (f"{name}.rerank_batch", lambda w, r=r: r.rerank_batch(["cats"], [w]))]
    broken = escaped(named)
    assert not broken, "\n".join(broken)
