"""T5 (v1.0 ReLU, v1.1/Flan gated-GELU): logits and generate() tokens against transformers'
T5ForConditionalGeneration (tiny random init, fp32, eager attention), the relative bias as
an additive float mask through the core Attention, cached == uncached, save/load."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmkit.core import BeamSearch, Greedy, KVCache, RelativePositionBias, generate
from mmkit.models import T5
from tests.models._seq2seq_refs import padded_sources, tiny_t5


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_t5_logits_match_transformers(feed_forward):
    ref = tiny_t5(feed_forward, tie=feed_forward == "relu")
    model = T5.from_hf(ref).eval()
    src, mask = padded_sources(0)
    tgt = torch.randint(2, 98, (6, 22), generator=torch.Generator().manual_seed(2))  # past max_distance
    tgt[:, 0] = 0
    with torch.no_grad():
        expected = ref(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        got = model(tgt, context=model.encode(src, mask), context_mask=mask)
    assert (got - expected).abs().max() <= 1e-4
    assert model.config["scale_output"] == (feed_forward == "relu")  # v1.1 does not rescale
    assert model.config["feed_forward"] == {"relu": "relu", "gated-gelu": "gated-gelu_tanh"}[feed_forward]


@pytest.mark.parametrize("num_beams", [1, 4])
def test_t5_tokens_equal_transformers_generate(num_beams):
    ref = tiny_t5("gated-gelu", tie=False, decoder_layers=2)
    with torch.no_grad():
        ref.lm_head.weight[1] *= 4  # EOS (id 1) likely, so rows end at different steps
    model = T5.from_hf(ref).eval()
    src, mask = padded_sources(0, seed=4)
    expected = ref.generate(input_ids=src, attention_mask=mask.long(), num_beams=num_beams, do_sample=False,
                            max_new_tokens=10, early_stopping=False)
    strategy = BeamSearch(num_beams, early_stopping=False) if num_beams > 1 else Greedy()
    got = generate(model, torch.zeros(6, 1, dtype=torch.long), 10, strategy, context=model.encode(src, mask),
                   context_mask=mask, eos_id=1, pad_id=0)
    for row, seq in zip(expected, got.sequences):
        assert row[: len(seq)].tolist() == seq.tolist()
    assert len({len(s) for s in got.sequences}) > 1 or num_beams > 1


def test_t5_step_by_step_equals_full_forward_with_relative_bias():
    model = T5.from_hf(tiny_t5()).eval()
    src, mask = padded_sources(0)
    tgt = torch.randint(2, 98, (6, 25), generator=torch.Generator().manual_seed(3))
    memory = model.encode(src, mask)
    with torch.no_grad():
        full = model(tgt, context=memory, context_mask=mask)
        cache = KVCache()
        steps = [model(tgt[:, :3], context=memory, cache=cache, context_mask=mask)]
        steps += [model(tgt[:, t : t + 1], context=memory, cache=cache, context_mask=mask) for t in range(3, 25)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_relative_buckets_match_t5():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-200, 200)[None, :]
    for bidirectional in (True, False):
        bias = RelativePositionBias(2, num_buckets=32, max_distance=128, bidirectional=bidirectional)
        expected = T5Attention._relative_position_bucket(rel, bidirectional, 32, 128)
        assert torch.equal(bias.bucket(rel), expected)


def test_untied_head_directory_and_save_load(tmp_path):
    ref = tiny_t5("gated-gelu", tie=False)
    ref.save_pretrained(tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"])  # a v1.1 file: separate head
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    model = T5.from_hf(tmp_path / "hf")
    assert not model.training and model.head is not None and model.config["tie_output"] is False
    torch.testing.assert_close(model.head.weight, weights["lm_head.weight"])
    assert config["model_type"] == "t5"
    src, mask = padded_sources(0)
    tgt = torch.zeros(6, 3, dtype=torch.long)
    with torch.no_grad():
        expected = model(tgt, context=model.encode(src, mask), context_mask=mask)
        loaded = T5.from_pretrained(model.save_pretrained(tmp_path / "mm")).eval()
        torch.testing.assert_close(loaded(tgt, context=loaded.encode(src, mask), context_mask=mask), expected)


def _t5_config(**fields):
    from transformers import T5Config

    return T5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
                    attn_implementation="eager", **fields)


def _logit_diff(ref, model) -> float:
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(2, 60, (3, 9), generator=g), torch.randint(2, 60, (3, 16), generator=g)
    with torch.no_grad():
        return (ref(input_ids=src, decoder_input_ids=tgt).logits - model(tgt, context=model.encode(src))).abs().max()


def test_layer_norm_epsilon_is_imported(tmp_path):
    """layer_norm_epsilon was checked and dropped: every import used 1e-6 (0.22 off at 0.1)."""
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    ref = T5ForConditionalGeneration(_t5_config(layer_norm_epsilon=0.1)).eval()
    ref.save_pretrained(tmp_path)
    model = T5.from_hf(tmp_path).eval()
    assert model.config["norm_eps"] == 0.1 and _logit_diff(ref, model) <= 1e-4


def test_mt5_never_rescales_its_outputs(tmp_path):
    """transformers 5 saves an mT5 with tie_word_embeddings true and no scale_decoder_outputs (a fine-tuned one
    too): read as T5 v1.0 it was rescaled by d_model ** -0.5, 16-18 off; MT5ForConditionalGeneration never does."""
    from transformers import MT5Config, MT5ForConditionalGeneration

    torch.manual_seed(0)
    ref = MT5ForConditionalGeneration(MT5Config(**_t5_config().to_diff_dict())).eval()
    ref.save_pretrained(tmp_path)
    model = T5.from_hf(tmp_path).eval()
    assert not model.config["scale_output"] and _logit_diff(ref, model) <= 1e-4


def test_a_bucket_range_t5_cannot_index_is_refused_by_name(tmp_path):
    from transformers import T5ForConditionalGeneration

    from mmkit.weights import WeightsError

    config = _t5_config()
    config.relative_attention_num_buckets, config.relative_attention_max_distance = 16, 4
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="relative_attention_max_distance 4 must exceed half of "
                                           r"relative_attention_num_buckets \(16\)"):
        T5.from_hf(tmp_path)
