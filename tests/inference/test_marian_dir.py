"""`save_marian_dir`: an mmkit translator (a native Seq2Seq export, or an imported MarianMT) saved as a transformers
MarianMT directory loads in `MarianMTModel` and `MarianTokenizer` / `AutoTokenizer` with the same logits, token ids
and default `generate()` decoding, reads back through `load_translator` as it was, and what MarianMT cannot hold is
refused in one line before anything is written."""
from __future__ import annotations

import json
import random

import pytest
import torch

from mmkit.inference.marian_dir import save_marian_dir
from mmkit.inference.translator import Translator, load_translator
from mmkit.models import Seq2Seq
from mmkit.weights.native import WeightsError
from mmkit.weights.to_hf_marian import marian_from_mmkit
from tests.inference._export_checks import (
    EXISTING, check_held_folder_refused, check_nothing_left, disk_full, fail_moving_config, one_line,
)
from tests.inference._translation_fixtures import phrases, write_marian_dir, write_native_export

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/inference/conftest.py)

SOURCES = phrases(6)[:8]  # English and German numbers and dates, in the fixtures' vocabulary
TEXTS = SOURCES + ["  two  spaces\n\nand new lines\ttab ", "Hello, world! (a test?) 'quotes' \"too\"",
                   "café naïve façade Ærø", "emoji 😀👍🏽 and CJK 漢字かな한글", "end</s>start <unk> <pad> <s>",
                   "spaced out : a . b , c ! d ? don 't", " lead", ""]


def _widen(translator: Translator, seed: int, eos_scale: float) -> Translator:
    """The translator with weights wide enough that greedy translations vary with the source and some end at EOS
    before their limit (mmkit's and transformers' init repeat one token to the limit): N(0, 0.3) projections,
    N(0, 0.1) embeddings with EOS's row scaled by `eos_scale`, a small logits bias. The seeds and scales were
    picked for that."""
    g = torch.Generator().manual_seed(seed)
    model = translator.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "embed" in name else 0.3))
        model.tok_embed.weight[translator.codec.eos_id] *= eos_scale
        if model.logits_bias is not None:
            model.logits_bias.copy_(torch.randn(model.logits_bias.shape, generator=g) * 0.1)
            model.logits_bias[translator.codec.eos_id] = 0.0
    return translator


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The translate_numbers recipe's layout (interleaved sinusoids, ReLU, tied head, no logits bias) and its
    SentencePiece tokenizer, saved."""
    translator = _widen(load_translator(write_native_export(tmp_path_factory.mktemp("native"))), 2, 3.0)
    return translator, save_marian_dir(translator, tmp_path_factory.mktemp("native-hf") / "marian")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A transformers MarianMT (opus-mt's layout: forced EOS, <pad> banned) read by `load_translator`, saved again."""
    hub = write_marian_dir(tmp_path_factory.mktemp("hub"), forced_eos=True)
    translator = _widen(load_translator(hub), 0, 4.0)
    return translator, save_marian_dir(translator, tmp_path_factory.mktemp("imported-hf") / "marian")


@pytest.fixture(params=["native", "imported"])
def saved(request):
    return request.getfixturevalue(request.param)


def _hf(directory):
    """MarianMTModel and AutoTokenizer on `directory`, after checking that transformers loads every weight and has
    nothing to warn of in the generation config."""
    from transformers import AutoTokenizer, GenerationConfig, MarianMTModel

    model, info = MarianMTModel.from_pretrained(directory, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    GenerationConfig.from_pretrained(directory).validate(strict=True)  # raises where a load would warn
    return model.eval(), AutoTokenizer.from_pretrained(directory)


def _hf_tokens(model, translator: Translator, text: str, **given) -> list[int]:
    """transformers' `generate()` of `text`'s source ids, given only the translator's own length limit for it (and
    `given`), as the translator's tokens: without the start token, cut at EOS."""
    ids = translator.encode_source(text)
    limit = translator.default_options().limit(len(ids), translator.max_target_tokens)
    out = model.generate(torch.tensor([ids]), max_new_tokens=limit, **given)[0, 1:].tolist()
    eos = translator.codec.eos_id
    return out[: out.index(eos)] if eos in out else out


def test_transformers_computes_the_same_logits(saved):
    """MarianMTModel.from_pretrained on the saved directory: every weight loaded, and logits equal to the mmkit
    model's in fp32 for a padded batch of sources and random decoder ids (the recipe's interleaved sinusoids
    reach transformers' [sin | cos] table through a permutation of the model's channels)."""
    translator, directory = saved
    model, _ = _hf(directory)
    sources = [translator.encode_source(t) for t in SOURCES[:4]]
    pad = translator.codec.pad_id
    src = torch.full((len(sources), max(map(len, sources))), pad)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = torch.tensor(ids)
    mask = src != pad
    tokens = torch.randint(0, translator.model.vocab_size, (len(sources), 12),
                           generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = translator.codec.start_id
    with torch.no_grad():
        expected = translator.model(tokens, context=translator.model.encode(src, mask), context_mask=mask)
        logits = model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tokens).logits
    assert (logits - expected).abs().max().item() <= 1e-4


def test_generate_without_arguments_gives_the_translators_tokens(saved):
    """transformers' `generate()` given only max_new_tokens (the translator's length rule for that source) gives the
    tokens `translate` gives without options, varied ones, some ending at EOS before the limit; the tokenizer
    decodes them to its text."""
    translator, directory = saved
    model, tok = _hf(directory)
    results = translator.translate(SOURCES)
    ended = 0
    for text, result in zip(SOURCES, results):
        expected = _hf_tokens(model, translator, text)
        assert result.tokens == expected, text
        assert tok.decode(expected, skip_special_tokens=True) == result.text.strip()
        limit = translator.default_options().limit(len(translator.encode_source(text)), translator.max_target_tokens)
        ended += len(expected) < limit - 1
    assert ended >= 2 and max(len(set(r.tokens)) for r in results) >= 4, [r.tokens for r in results]


@pytest.mark.parametrize("defaults, written", [
    ({"beam_size": 3, "length_penalty": 0.7, "no_repeat_ngram_size": 2, "renormalize_logits": True},
     {"num_beams": 3, "length_penalty": 0.7, "no_repeat_ngram_size": 2, "renormalize_logits": True,
      "do_sample": False}),
    ({"repetition_penalty": 1.3, "min_new_tokens": 6, "encoder_no_repeat_ngram_size": 2,
      "encoder_repetition_penalty": 0.8},
     {"repetition_penalty": 1.3, "min_new_tokens": 6, "encoder_no_repeat_ngram_size": 2,
      "encoder_repetition_penalty": 0.8, "do_sample": False}),
    ({"temperature": 0.8, "top_k": 7}, {"do_sample": True, "temperature": 0.8, "top_k": 7, "top_p": 1.0}),
], ids=["beams", "rules", "sampling"])
def test_the_translators_defaults_decode_alike(saved, tmp_path, monkeypatch, defaults, written):
    """The translator's own decoding settings become generation_config.json under transformers' names (nothing it
    warns of, beside the ids, the forced EOS, the <pad> ban and max_length): `generate()` given only max_new_tokens
    decodes as `translate` without options, sampled tokens too under the same torch seed; `load_translator` reads
    the same settings back."""
    translator, _ = saved
    monkeypatch.setattr(translator, "defaults", defaults)
    directory = save_marian_dir(translator, tmp_path / "marian")
    c = translator.codec
    ids = {"bos_token_id": c.eos_id, "eos_token_id": c.eos_id, "decoder_start_token_id": c.start_id,
           "pad_token_id": c.pad_id, "max_length": translator.max_target_tokens + 1}
    if translator.forced_eos_id is not None:
        ids["forced_eos_token_id"] = translator.forced_eos_id
    if c.suppress:  # opus-mt's <pad> ban
        ids["bad_words_ids"] = [[i] for i in c.suppress]
    assert json.loads((directory / "generation_config.json").read_text()) == {**ids, **written}
    model, _ = _hf(directory)
    for n, text in enumerate(SOURCES):
        torch.manual_seed(n)
        expected = _hf_tokens(model, translator, text)
        torch.manual_seed(n)
        assert translator.translate([text])[0].tokens == expected, text
    assert load_translator(directory).defaults == defaults


@pytest.mark.parametrize("use_auto", [True, False], ids=["AutoTokenizer", "MarianTokenizer"])
def test_the_tokenizer_encodes_and_decodes_as_the_translator(saved, use_auto):
    """The directory's tokenizer encodes sources to the ids the translator feeds its encoder (spaces, new lines,
    punctuation, accents, characters the vocabulary lacks, the special tokens' text) and decodes target ids, the
    special ones among them, to the translator's text (MarianTokenizer strips the ends)."""
    from transformers import AutoTokenizer, MarianTokenizer

    translator, directory = saved
    tok = (AutoTokenizer if use_auto else MarianTokenizer).from_pretrained(directory)
    assert type(tok).__name__ == "MarianTokenizer"
    c = translator.codec
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (c.eos_id, c.pad_id, c.unk_id)
    for text in TEXTS:
        ids = c.encode(text)
        assert tok(text).input_ids == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == c.decode(ids).strip(), text  # " ." and " 't" kept
    assert all(tok(t).input_ids == translator.encode_source(t) for t in SOURCES)
    rng = random.Random(0)
    vocab, special = len(tok), [c.start_id, c.unk_id, c.pad_id, c.eos_id]
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))] + special[: rng.randrange(5)]
        rng.shuffle(ids)
        assert tok.decode(ids, skip_special_tokens=True) == c.decode(ids).strip(), ids


def test_special_tokens_text_in_a_native_source_is_text(native):
    """SentencePiece never reads "</s>" in a source as its EOS: the saved tokenizer encodes it as text too
    (split_special_tokens), where a MarianTokenizer's default would take it for the special token."""
    from transformers import MarianTokenizer

    translator, directory = native
    text = "one</s>two <pad> <unk>"
    ids = translator.codec.encode(text)
    assert ids.count(translator.codec.eos_id) == 1 and MarianTokenizer.from_pretrained(directory)(text).input_ids == ids
    assert MarianTokenizer.from_pretrained(directory, split_special_tokens=False)(text).input_ids != ids


def _runs(translator: Translator) -> list[list[int]]:
    """The translations' tokens under the model's own settings and with beams, n-gram ban and sampling given."""
    options = [translator.default_options(), translator.default_options(beam_size=2, no_repeat_ngram_size=2),
               translator.default_options(temperature=1.3, seed=3)]
    return [r.tokens for o in options for r in translator.translate(SOURCES, o)]


def test_load_translator_reads_it_back(saved):
    """`load_translator` on the saved directory: the same special ids, forced EOS, suppressed ids, defaults and
    translations (text up to the ends MarianTokenizer strips), under options given too; a native model's sampling
    fallbacks come back as transformers' top_k 50 (what the docstring says transformers cannot carry)."""
    translator, directory = saved
    again = load_translator(directory)
    c, a = translator.codec, again.codec
    assert (a.start_id, a.eos_id, a.pad_id, a.unk_id, a.suppress) == (c.start_id, c.eos_id, c.pad_id, c.unk_id,
                                                                        c.suppress)
    assert (again.forced_eos_id, again.defaults, again.max_target_tokens) == (
        translator.forced_eos_id, translator.defaults, translator.max_target_tokens)
    assert again.sampling_fallbacks == {"top_k": 50}
    again.sampling_fallbacks = translator.sampling_fallbacks  # the sampling run below: as the original's
    assert _runs(again) == _runs(translator)
    assert [r.text for r in again.translate(SOURCES)] == [r.text.strip() for r in translator.translate(SOURCES)]


def test_an_mmkit_export_of_an_imported_marian_saves_alike(imported, tmp_path):
    """An imported MarianMT saved as an mmkit export (`Translator.export`: its transformers tokenizer kept) and read
    back saves to the same MarianMT directory as the import itself: the same config, generation config, vocabulary
    and weights."""
    from safetensors.torch import load_file

    translator, directory = imported
    again = save_marian_dir(load_translator(translator.export(tmp_path / "export")), tmp_path / "marian")
    for name in ("config.json", "generation_config.json", "vocab.json", "special_tokens_map.json"):
        assert json.loads((again / name).read_text()) == json.loads((directory / name).read_text()), name
    weights, expected = load_file(again / "model.safetensors"), load_file(directory / "model.safetensors")
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


@pytest.mark.parametrize("config", [
    {"tie_output": False, "activation": "gelu_tanh"},
    {"positions": "halves", "logits_bias": True, "activation": "gelu", "scale_embedding": False, "pad_id": 0},
], ids=["untied-interleaved", "halves-gelu"])
def test_other_seq2seq_layouts_keep_their_logits(native, tmp_path, config):
    """An untied output head (transformers 5 holds the embeddings and lm_head apart), the [sin | cos] layout, GELU
    variants and a logits bias: the same logits and greedy tokens in transformers."""
    source, _ = native
    torch.manual_seed(0)
    model = Seq2Seq(vocab_size=source.model.vocab_size, max_len=48, dim=32, encoder_depth=2, decoder_depth=1,
                    num_heads=4, mlp_ratio=1.5, dropout=0.0, **config)
    translator = _widen(Translator(model, source.codec, max_source_tokens=48, max_target_tokens=47), 1, 3.0)
    hf, _ = _hf(save_marian_dir(translator, tmp_path / "marian"))
    src = torch.tensor([translator.encode_source(SOURCES[0])])
    tokens = torch.randint(0, model.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens, context=model.encode(src))
        assert (hf(input_ids=src, decoder_input_ids=tokens).logits - expected).abs().max().item() <= 1e-4
    for text in SOURCES[:3]:
        assert translator.translate([text])[0].tokens == _hf_tokens(hf, translator, text), text


def test_what_marian_cannot_hold_is_refused_before_anything_is_written(native, t5, tmp_path):
    """An int8 model, a T5 model, a source prefix, an activation MarianMT lacks, a config field the converter does
    not know and a folder holding files are each one line naming the cause, with nothing written (the held
    folder's files untouched)."""
    translator, _ = native
    source_dir = tmp_path / "native"
    write_native_export(source_dir)
    cases = {"int8": (load_translator(source_dir, quantize="int8"), "an int8 model is not exported"),
             "t5": (load_translator(t5), "a T5 translator has no MarianMT layout"),
             "prefix": (load_translator(source_dir, prefix="translate: "), "source prefix 'translate: '")}
    for name, (refused, message) in cases.items():
        with pytest.raises(WeightsError) as err:
            save_marian_dir(refused, tmp_path / name)
        assert message in one_line(err.value) and not (tmp_path / name).exists(), name
    quick = Translator(Seq2Seq(vocab_size=120, max_len=16, dim=8, encoder_depth=1, decoder_depth=1, num_heads=2,
                               activation="quick_gelu"), translator.codec)
    with pytest.raises(WeightsError) as err:
        save_marian_dir(quick, tmp_path / "quick")
    assert "activation='quick_gelu'" in one_line(err.value) and not (tmp_path / "quick").exists()
    model = quick.model
    with pytest.raises(WeightsError) as err:
        marian_from_mmkit({**model.config, "activation": "relu", "norm": "pre"}, model.state_dict(), 2, 3, 0)
    assert "config fields MarianMT has no counterpart for (norm)" in one_line(err.value)
    check_held_folder_refused(lambda out: save_marian_dir(translator, out), tmp_path)


@EXISTING
@pytest.mark.parametrize("stage", ["writing", "moving"])
def test_a_failed_write_leaves_nothing_behind(native, tmp_path, monkeypatch, existing, stage):
    """A full disk met midway (the weights written, the tokenizer not), or a failure moving the last file into
    place (config.json: the other files moved already), is one line naming the folder and takes back what was
    written: a new folder is gone, an empty one is empty again."""
    translator, _ = native
    target = tmp_path / "marian"

    def full_disk(directory):
        assert (directory / "model.safetensors").is_file()
        disk_full()

    if stage == "writing":
        monkeypatch.setattr(translator.codec, "save", full_disk)
    else:
        fail_moving_config(monkeypatch, target, {"model.safetensors", "source.spm", "vocab.json"})
    check_nothing_left(lambda out: save_marian_dir(translator, out), target, existing)
