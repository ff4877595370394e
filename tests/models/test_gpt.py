"""GPT: contract tests (shape, backward, tied head, causality, cached = uncached, save/load)
and exact parity with transformers' GPT2LMHeadModel through `GPT.from_hf` (minGPT's test)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmkit.core import BeamSearch, Greedy, KVCache, generate
from mmkit.models import GPT
from mmkit.weights import WeightsError

VOCAB = 50


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=VOCAB, max_len=32, dim=32, depth=2, num_heads=4).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))


def test_forward_shape_backward_and_finite(gpt, tokens):
    gpt.train()
    logits = gpt(tokens)
    assert logits.shape == (2, 11, VOCAB) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
    no_grad = [n for n, p in gpt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_head_is_tied_to_token_embedding(gpt, tokens):
    assert not any(k.startswith("head") for k in gpt.state_dict())
    hidden = {}
    gpt.decoder.register_forward_hook(lambda m, a, out: hidden.setdefault("x", out))
    with torch.no_grad():
        logits = gpt(tokens)
        torch.testing.assert_close(logits, hidden["x"] @ gpt.tok_embed.weight.T)


def test_uses_tanh_gelu_and_gpt2_layer_norm_eps(gpt):
    blk = gpt.decoder.blocks[0]
    assert isinstance(blk.mlp.act, torch.nn.GELU) and blk.mlp.act.approximate == "tanh"
    assert blk.norm1.eps == gpt.decoder.norm.eps == 1e-5


def test_rejects_context_and_sequences_past_max_len(gpt):
    with pytest.raises(ValueError, match="decoder-only"):
        gpt(torch.zeros(1, 3, dtype=torch.long), context=torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="max_len 32"):
        gpt(torch.zeros(1, 33, dtype=torch.long))


def test_causal_gradients(gpt, tokens):
    emb = {}

    def keep(module, args, out):
        out.retain_grad()
        emb["x"] = out
        return out

    gpt.tok_embed.register_forward_hook(keep)
    logits = gpt(tokens[:1])
    T = tokens.shape[1]
    probe = torch.randn(VOCAB)
    for t in range(T):
        (g,) = torch.autograd.grad(logits[0, t] @ probe, emb["x"], retain_graph=True)
        norms = g[0].norm(dim=-1)
        assert norms[t + 1 :].sum() == 0 and (norms[: t + 1] > 0).all(), t


def test_cached_logits_step_by_step_equal_full_forward(gpt, tokens):
    with torch.no_grad():
        full = gpt(tokens)
        cache = KVCache()
        steps = [gpt(tokens[:, :3], cache=cache)] + [gpt(tokens[:, t : t + 1], cache=cache) for t in range(3, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(beam_size=3)], ids=["greedy", "beam"])
def test_generate_cached_equals_uncached(gpt, tokens, strategy):
    a = generate(gpt, tokens[:, :4], 12, strategy, use_cache=True)
    b = generate(gpt, tokens[:, :4], 12, strategy, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)


def test_save_load_round_trip(gpt, tokens, tmp_path):
    gpt.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path).eval()
    assert loaded.config == gpt.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), gpt(tokens), rtol=0, atol=0)


# --- transformers parity ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    # GPT-2's N(0, 0.02) init keeps activations so small that tanh-vs-erf GELU or a misplaced
    # norm shows up below 1e-4; larger random weights make the comparison discriminating.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_gain = p.ndim == 1 and ".ln_" in name and name.endswith("weight")
            p.normal_(1.0 if is_gain else 0.0, 0.5 if "wte" in name else 0.2)
    return model


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))


def test_from_hf_logits_match_transformers(hf_gpt2, prompt):
    model = GPT.from_hf(hf_gpt2)
    assert not model.training
    with torch.no_grad():
        ref = hf_gpt2(prompt).logits
        assert ref.std() > 1  # a non-degenerate reference
        torch.testing.assert_close(model(prompt), ref, atol=1e-4, rtol=0)


def test_from_hf_greedy_generation_matches_transformers(hf_gpt2, prompt):
    model = GPT.from_hf(hf_gpt2)
    ref = hf_gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                           pad_token_id=0)
    ours = generate(model, prompt, 10, Greedy())
    assert ref.shape == (2, 17)
    assert torch.equal(ours.tokens, ref)


def test_from_hf_reads_sizes_from_config():
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_inner=48, layer_norm_epsilon=1e-2, vocab_size=40, n_positions=16,
        bos_token_id=None, eos_token_id=None)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model = GPT.from_hf(hf)
    assert model.config["mlp_ratio"] == 1.5 and model.decoder.norm.eps == 1e-2 and model.max_len == 16
    x = torch.randint(0, 40, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


def test_from_hf_directory_safetensors(hf_gpt2, prompt, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    model = GPT.from_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), hf_gpt2(prompt).logits, atol=1e-4, rtol=0)


def test_from_hf_directory_original_hub_layout(hf_gpt2, prompt, tmp_path):
    # The original hub files: no "transformer." prefix, causal-mask buffers, pytorch_model.bin.
    hf_gpt2.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf_gpt2.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = GPT.from_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), hf_gpt2(prompt).logits, atol=1e-4, rtol=0)


def _broken_checkpoint(hf_gpt2, tmp_path, edit) -> str:
    hf_gpt2.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return str(path)


def test_from_hf_missing_key_names_file_and_key(hf_gpt2, tmp_path):
    path = _broken_checkpoint(hf_gpt2, tmp_path, lambda s: s.pop("transformer.h.1.mlp.c_proj.bias"))
    with pytest.raises(WeightsError) as err:
        GPT.from_hf(tmp_path)
    assert path in str(err.value) and "missing keys: decoder.blocks.1.mlp.fc2.bias" in str(err.value)


def test_from_hf_wrong_shape_names_file_and_key(hf_gpt2, tmp_path):
    def edit(s):
        s["transformer.h.0.attn.c_attn.weight"] = s["transformer.h.0.attn.c_attn.weight"][:, :96].contiguous()

    path = _broken_checkpoint(hf_gpt2, tmp_path, edit)
    with pytest.raises(WeightsError) as err:
        GPT.from_hf(tmp_path)
    msg = str(err.value)
    assert msg == f"{path}: decoder.blocks.0.attn.qkv.weight is (96, 64) in the weights but (192, 64) by the config"


def test_from_hf_unknown_key_is_refused(hf_gpt2, tmp_path):
    path = _broken_checkpoint(hf_gpt2, tmp_path, lambda s: s.update({"transformer.h.0.attn.q_norm.weight": s[
        "transformer.ln_f.weight"].clone()}))
    with pytest.raises(WeightsError, match="no mapping: transformer.h.0.attn.q_norm.weight") as err:
        GPT.from_hf(tmp_path)
    assert path in str(err.value)


def test_from_hf_refuses_untied_head_and_other_variants(hf_gpt2):
    import transformers

    untied = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8, tie_word_embeddings=False))
    with pytest.raises(WeightsError, match="untied lm_head"):
        GPT.from_hf(untied)
    relu = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8, activation_function="relu"))
    with pytest.raises(WeightsError, match="activation_function='relu'"):
        GPT.from_hf(relu)


def test_from_hf_refuses_a_head_that_differs_from_the_embedding(hf_gpt2, tmp_path):
    hf_gpt2.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in hf_gpt2.state_dict().items()}
    state["lm_head.weight"] += 1e-3
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="lm_head.weight differs from (transformer\\.)?wte.weight") as err:
        GPT.from_hf(tmp_path)
    assert str(tmp_path / "pytorch_model.bin") in str(err.value)


def test_gpt2_from_mmkit_is_the_inverse_of_from_hf(gpt, tokens):
    """An mmkit GPT as transformers' GPT-2 (the twin `mmkit bench text --model EXPORT` times): same logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mmkit.weights.from_hf import gpt2_from_mmkit

    config, state = gpt2_from_mmkit(gpt.config, gpt.state_dict())
    config.pop("model_type")
    twin = GPT2LMHeadModel(GPT2Config(**config)).eval()
    twin.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (twin(tokens).logits - gpt.eval()(tokens)).abs().max() <= 1e-4
    back = GPT.from_hf(twin)
    assert all(torch.equal(v, gpt.state_dict()[k]) for k, v in back.state_dict().items())
    # dropout as mmkit's, and an end of text inside the vocabulary or none (was 50256)
    assert (config["embd_pdrop"], config["attn_pdrop"], config["resid_pdrop"]) == (
        gpt.config["dropout"], gpt.config["attn_dropout"], gpt.config["resid_dropout"])
    assert config["eos_token_id"] is None and gpt2_from_mmkit(gpt.config, gpt.state_dict(), 7)[0]["eos_token_id"] == 7


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_an_imported_gpt2_trains_with_transformers_dropout(attn_implementation):
    """GPT2Config's embedding, attention and residual dropout (0.1 each) come with the import (only the
    embeddings' did, as 0): in training mode, from the same seed, the same logits and gradients as transformers'
    (its residual dropout after each output projection, none after the MLP's activation); and back."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mmkit.weights.from_hf import gpt2_from_mmkit

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.2,
                                    attn_implementation=attn_implementation)).train()
    gpt = GPT.from_hf(hf).train()
    assert (gpt.config["dropout"], gpt.config["attn_dropout"], gpt.config["resid_dropout"]) == (0.1, 0.1, 0.2)
    tokens = torch.randint(0, 97, (2, 12))
    torch.manual_seed(1)
    theirs = hf(tokens).logits
    theirs.square().mean().backward()
    torch.manual_seed(1)
    mine = gpt(tokens)
    mine.square().mean().backward()
    assert not torch.equal(mine, gpt.eval()(tokens))  # dropout acted
    assert (mine - theirs).abs().max() <= 1e-5
    assert (gpt.tok_embed.weight.grad - hf.transformer.wte.weight.grad).abs().max() <= 1e-6
    config, _ = gpt2_from_mmkit(gpt.config, gpt.state_dict())
    assert (config["embd_pdrop"], config["attn_pdrop"], config["resid_pdrop"]) == (0.1, 0.1, 0.2)


def test_gpt2_from_mmkit_refuses_what_gpt2_cannot_express():
    from mmkit.weights.from_hf import gpt2_from_mmkit

    model = GPT(vocab_size=50, max_len=8, dim=16, depth=1, num_heads=2, qkv_bias=False)
    with pytest.raises(WeightsError, match="qkv_bias=False"):
        gpt2_from_mmkit(model.config, model.state_dict())
