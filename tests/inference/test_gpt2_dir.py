"""`save_gpt2_dir`: an mmkit GPT text generator saved as a transformers GPT-2 directory loads in `GPT2LMHeadModel`,
`AutoTokenizer` and `pipeline("text-generation")` with the same logits, tokens and default decoding, reads back
through `load_text_generator` as it was, and what GPT-2 cannot hold is refused in one line before anything is
written."""
from __future__ import annotations

import json

import pytest
import torch
from _gpt import tiny_tokenizer, write_tiny_gpt2

from mmkit.inference.gpt2_dir import save_gpt2_dir
from mmkit.inference.text_generation import TextGenerator, load_text_generator
from mmkit.models import GPT
from mmkit.weights.native import WeightsError
from tests.inference._export_checks import (
    EXISTING, check_held_folder_refused, check_nothing_left, disk_full, fail_moving_config, one_line,
)

PROMPTS = ["The cat sees", "A small bird follows the moon. Our", "Why"]
TEXTS = ["The cat sees the moon.", "  two  spaces\n\nand new lines\ttab ", "Hello, world! (a test?) 'quotes' \"too\"",
         "café naïve façade Ærø", "emoji 😀👍🏽 and CJK 漢字かな한글", "end<|endoftext|>start <|endoftext|>",
         "spaced out : a . b , c ! d ? don 't", " lead", ""]


def _native_generator(tok=None, seed: int = 0, **config) -> TextGenerator:
    """A random-init mmkit GPT (no transformers involved) with weights wide enough that greedy continuations
    vary, so that a token-by-token comparison means something."""
    tok = tok or tiny_tokenizer()
    torch.manual_seed(seed)
    model = GPT(vocab_size=tok.vocab_size, max_len=64, dim=32, depth=2, num_heads=4, **config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return TextGenerator(model, tok, tok.eos_id)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    generator = _native_generator()
    return generator, save_gpt2_dir(generator, tmp_path_factory.mktemp("native") / "gpt2")


def _hf_tokens(model, tok, prompt: str, max_new_tokens: int, stop: int | None = -1, **given) -> list[int]:
    """transformers' continuation of `prompt` as token ids, cut at `stop` (-1: the end-of-text token; None: not
    cut) as mmkit's text is."""
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, **given)
    new = out[0, ids.shape[1]:].tolist()
    stop = tok.eos_id if stop == -1 else stop
    return new[: new.index(stop)] if stop in new else new


def _check_clean_configs(directory) -> None:
    """transformers loads every weight and has nothing to warn of in the generation config."""
    from transformers import GenerationConfig, GPT2LMHeadModel

    _, info = GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    GenerationConfig.from_pretrained(directory).validate(strict=True)  # raises where a load would warn


def test_transformers_loads_the_same_logits_and_greedy_tokens(native):
    """GPT2LMHeadModel.from_pretrained on the saved directory: every weight loaded (lm_head tied, not stored), logits
    equal to the mmkit model's in fp32, and greedy `generate()` with no decoding argument gives `generate`'s tokens,
    varied ones."""
    from transformers import GPT2LMHeadModel

    generator, directory = native
    tok = generator.tokenizer
    _check_clean_configs(directory)
    hf = GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.randint(0, tok.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - generator.model(ids)).abs().max().item() <= 1e-4
    for prompt in PROMPTS:
        expected = _hf_tokens(hf, tok, prompt, 16)
        assert len(set(expected)) > 3, expected  # varied continuations, not one repeated token
        assert generator.generate(prompt, generator.default_options(max_new_tokens=16)) == tok.decode(expected)


def _pipeline_tokens(pipe, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """A text-generation pipeline's new token ids for `prompt`, cut at the end-of-text token."""
    ids = list(pipe(prompt, max_new_tokens=max_new_tokens, return_tensors=True)[0]["generated_token_ids"])
    new = ids[len(tok.encode(prompt)):]
    return new[: new.index(tok.eos_id)] if tok.eos_id in new else new


def test_the_text_generation_pipeline_continues_as_the_generator(native):
    """`pipeline("text-generation", model=DIR)` reads model and tokenizer from the directory and, with no decoding
    argument, continues a prompt greedily with the generator's tokens (not by its own default, sampling at
    temperature 0.7: the config says do_sample false)."""
    from transformers import pipeline

    generator, directory = native
    tok = generator.tokenizer
    pipe = pipeline("text-generation", model=str(directory), device="cpu")
    for n, prompt in enumerate(PROMPTS):
        torch.manual_seed(n)  # a sampling pipeline would differ from greedy decoding at some seed
        text = tok.decode(_pipeline_tokens(pipe, tok, prompt, 12))
        assert generator.generate(prompt, generator.default_options(max_new_tokens=12)) == text


@pytest.mark.parametrize("use_fast", [True, False])
def test_autotokenizer_encodes_and_decodes_as_the_generators_tokenizer(native, use_fast):
    """AutoTokenizer on the directory gives `tokenizer.encode`'s ids for spaces, new lines, punctuation, accents,
    emoji, CJK and the end-of-text token itself, decodes them back to the text, and knows the end-of-text token and
    the model's context."""
    from transformers import AutoTokenizer

    generator, directory = native
    tok = generator.tokenizer
    hf_tok = AutoTokenizer.from_pretrained(directory, use_fast=use_fast)
    assert (hf_tok.eos_token, hf_tok.eos_token_id, hf_tok.bos_token_id) == ("<|endoftext|>", tok.eos_id, tok.eos_id)
    assert hf_tok.model_max_length == 64 and len(hf_tok) == tok.vocab_size
    for text in TEXTS:
        ids = hf_tok(text)["input_ids"]
        assert ids == tok.encode(text), text
        assert hf_tok.decode(ids) == text
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert tok.encode(TEXTS[5]).count(tok.eos_id) == 2  # the end-of-text token is one token, not its characters


SAMPLING_ALL = {"temperature": 1.5}  # no top_k: mmkit samples among all tokens, transformers by default among 50


@pytest.mark.parametrize("defaults, written", [
    ({"beam_size": 3, "length_penalty": 0.7, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
     {"num_beams": 3, "length_penalty": 0.7, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
      "do_sample": False}),
    ({"temperature": 0.8, "top_k": 7}, {"do_sample": True, "temperature": 0.8, "top_k": 7, "top_p": 1.0}),
    (SAMPLING_ALL, {"do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 1.0}),
    ({"top_p": 0.8, "min_new_tokens": 4, "repetition_penalty": 1.2},
     {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.8, "min_new_tokens": 4, "repetition_penalty": 1.2}),
], ids=["beams", "sampling", "sampling-all-tokens", "nucleus"])
def test_generate_without_arguments_decodes_as_the_models_own_defaults(tmp_path, defaults, written):
    """The model's own decoding settings become generation_config.json (transformers' names, nothing it warns of):
    transformers' `generate()` given only max_new_tokens decodes as `generate` with `default_options` does, sampled
    tokens too under the same torch seed (a sampling model without top_k samples among all tokens there too); so
    does `pipeline("text-generation")`, whose own default (sampling at temperature 0.7) the config overrides."""
    from transformers import GPT2LMHeadModel, pipeline

    generator = _native_generator()
    generator.defaults = defaults
    directory = save_gpt2_dir(generator, tmp_path / "gpt2")
    eos = generator.eos_id
    assert json.loads((directory / "generation_config.json").read_text()) == {
        "bos_token_id": eos, "eos_token_id": eos, **written}
    _check_clean_configs(directory)
    hf, tok = GPT2LMHeadModel.from_pretrained(directory).eval(), generator.tokenizer
    pipe = pipeline("text-generation", model=str(directory), device="cpu")
    for n, prompt in enumerate(PROMPTS):
        torch.manual_seed(n)
        expected = _hf_tokens(hf, tok, prompt, 10)
        torch.manual_seed(n)
        assert generator.generate(prompt, generator.default_options(max_new_tokens=10)) == tok.decode(expected), prompt
        torch.manual_seed(n)
        assert _pipeline_tokens(pipe, tok, prompt, 10) == expected, prompt


GIVEN = ({}, {"temperature": 0}, {"beam_size": 2}, {"top_p": 0.8}, {"temperature": 1.2}, {"top_k": 0})


def _runs(generator, given_options=GIVEN) -> list[str]:
    """Each prompt's continuation under the model's own settings with each of `given_options` over them."""
    out = []
    for given in given_options:
        for n, prompt in enumerate(PROMPTS):
            torch.manual_seed(n)
            out.append(generator.generate(prompt, generator.default_options(max_new_tokens=8, **given)))
    return out


@pytest.mark.parametrize("defaults, fallbacks, back", [
    ({"beam_size": 3, "length_penalty": 0.7, "no_repeat_ngram_size": 2}, {"top_k": 50}, None),
    ({"temperature": 0.8}, {"top_k": 50}, ({"temperature": 0.8, "top_k": 50}, {"temperature": 0.8, "top_k": 50})),
    ({"temperature": 0.8, "top_k": 7}, {}, ({"temperature": 0.8, "top_k": 7}, {"temperature": 0.8, "top_k": 7})),
    ({"top_k": 9, "temperature": 1.4, "repetition_penalty": 1.2}, {"top_k": 9, "temperature": 1.4}, None),
], ids=["beams", "sampling-with-fallback", "sampling", "imported-sampling"])
def test_load_text_generator_reads_back_the_same_decoding(tmp_path, defaults, fallbacks, back):
    """`load_text_generator` on the saved directory: the same eos_id, the model's own settings and sampling
    fallbacks as saved (`back`: where transformers' one config holds them as other fields: the defaults' sampling
    values are its fallbacks), and the same text under every kind of option given over them."""
    generator = _native_generator()
    generator.defaults, generator.sampling_fallbacks = defaults, fallbacks
    again = load_text_generator(save_gpt2_dir(generator, tmp_path / "gpt2"))
    assert (again.defaults, again.sampling_fallbacks) == (back or (defaults, fallbacks))
    assert again.eos_id == generator.eos_id
    assert _runs(again) == _runs(generator)


def test_an_imported_gpt2_goes_back_to_transformers_as_it_came(tmp_path):
    """A transformers GPT-2 directory read by `load_text_generator` (fallback top_k 50) and saved again: the same
    logits, settings, fallbacks and text, and a generation config that decodes alike."""
    hf, tok = write_tiny_gpt2(tmp_path / "hub")
    imported = load_text_generator(tmp_path / "hub")
    assert (imported.defaults, imported.sampling_fallbacks) == ({}, {"top_k": 50})
    directory = save_gpt2_dir(imported, tmp_path / "again")
    again = load_text_generator(directory)
    assert (again.defaults, again.sampling_fallbacks, again.eos_id) == ({}, {"top_k": 50}, tok.eos_id)
    assert _runs(again) == _runs(imported)
    from transformers import GPT2LMHeadModel

    saved = GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.tensor([tok.encode(PROMPTS[1])])
    with torch.no_grad():
        assert (saved(ids).logits - hf(ids).logits).abs().max().item() <= 1e-5
    torch.manual_seed(0)  # a sampling run asked for: transformers' top_k 50 on both sides
    expected = _hf_tokens(saved, tok, PROMPTS[0], 10, do_sample=True, temperature=1.5)
    torch.manual_seed(0)
    assert again.generate(PROMPTS[0], again.default_options(max_new_tokens=10, temperature=1.5)) == tok.decode(expected)


def test_a_native_models_sampling_fallbacks_are_not_carried(tmp_path):
    """What the docstring says GPT-2 cannot hold: a greedy mmkit-native model (no fallbacks: a sampling run samples
    among all tokens) comes back with transformers' top_k 50 for sampling runs, its greedy decoding unchanged; a
    length_penalty without beams is left out (transformers would warn of it)."""
    generator = _native_generator()
    generator.defaults = {"length_penalty": 0.5, "repetition_penalty": 1.2}
    directory = save_gpt2_dir(generator, tmp_path / "gpt2")
    gen = json.loads((directory / "generation_config.json").read_text())
    assert "length_penalty" not in gen and "top_k" not in gen and gen["repetition_penalty"] == 1.2
    again = load_text_generator(directory)
    assert (again.defaults, again.sampling_fallbacks) == ({"repetition_penalty": 1.2}, {"top_k": 50})
    assert _runs(again, GIVEN[:3]) == _runs(generator, GIVEN[:3])


def test_generation_stops_at_the_generators_eos_id_or_none(tmp_path):
    """The eos_id generation stops at is the config's, None too (transformers then runs on past <|endoftext|> as
    mmkit does); the tokenizer names it its end-of-text token only where it is a special token, so an ordinary
    token made the stop still encodes as mmkit's tokenizer does, and both stop there."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    generator = _native_generator()
    tok, stop = generator.tokenizer, None
    for name in ("none", "ordinary"):
        generator.eos_id = stop
        directory = save_gpt2_dir(generator, tmp_path / name)
        config = json.loads((directory / "config.json").read_text())
        assert (config["eos_token_id"], config["bos_token_id"]) == (stop, stop)
        assert load_text_generator(directory).eos_id == stop
        hf_tok = AutoTokenizer.from_pretrained(directory)
        assert hf_tok.eos_token is None and all(hf_tok(t)["input_ids"] == tok.encode(t) for t in TEXTS)
        hf = GPT2LMHeadModel.from_pretrained(directory).eval()
        for prompt in PROMPTS:
            expected = _hf_tokens(hf, tok, prompt, 30, stop=stop)
            assert generator.generate(prompt, generator.default_options(max_new_tokens=30)) == tok.decode(expected)
        if stop is None:
            free = _hf_tokens(hf, tok, PROMPTS[0], 30, stop=None)
            assert len(free) == 30
            stop = next(t for t in free[4:] if t != tok.eos_id)  # an ordinary token the next model stops at
        else:
            assert len(_hf_tokens(hf, tok, PROMPTS[0], 30, stop=None)) < 30  # it did stop there


def test_what_gpt2_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    """An int8 model, a model without q/k/v biases and a folder holding files are each one line, with nothing
    written (the held folder's files untouched)."""
    tok = tiny_tokenizer()
    int8 = _native_generator(tok)
    int8 = TextGenerator(int8.model, tok, tok.eos_id, quantize="int8")
    with pytest.raises(WeightsError) as err:
        save_gpt2_dir(int8, tmp_path / "int8")
    assert "an int8 model is not exported" in one_line(err.value) and not (tmp_path / "int8").exists()
    with pytest.raises(WeightsError) as err:
        save_gpt2_dir(_native_generator(tok, qkv_bias=False), tmp_path / "no-bias")
    assert "qkv_bias=False" in one_line(err.value) and not (tmp_path / "no-bias").exists()
    check_held_folder_refused(lambda out: save_gpt2_dir(_native_generator(tok), out), tmp_path)


@EXISTING
@pytest.mark.parametrize("stage", ["writing", "moving"])
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, existing, stage):
    """A full disk met midway (the weights written, the tokenizer not), or a failure moving the last file into
    place (config.json: the other files moved already), is one line naming the folder and takes back what was
    written: a new folder is gone, an empty one is empty again."""
    generator = _native_generator()
    target = tmp_path / "gpt2"
    if stage == "writing":
        monkeypatch.setattr(generator.tokenizer, "save", disk_full)
    else:
        fail_moving_config(monkeypatch, target, {"model.safetensors", "tokenizer.json"})
    check_nothing_left(lambda out: save_gpt2_dir(generator, out), target, existing)
