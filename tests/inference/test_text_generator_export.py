"""GPT exports carry the model's own decoding settings: an imported GPT-2's generation config survives
`TextGenerator.export` / `mmkit generate-text --export` (same defaults, fallbacks and tokens), a trained model's
`generation` settings reach its export, and bad settings are one line before anything is written."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from _gpt import write_tiny_gpt2

from mmkit.cli import main as mmkit_main
from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import load_text_generator, save_text_generator
from mmkit.models import GPT
from mmkit.weights.native import WeightsError

PROMPTS = ["The cat sees", "A small bird follows the moon. Our", "Why"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    _, tok = write_tiny_gpt2(directory)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "do_sample": True, "temperature": 1.4, "top_k": 9,
         "repetition_penalty": 1.2}))
    return directory


def _runs(generator, **given):
    """Each prompt's continuation under the model's own settings (`given` over them), seeded alike."""
    out = []
    for n, prompt in enumerate(PROMPTS):
        torch.manual_seed(n)
        out.append(generator.generate(prompt, generator.default_options(max_new_tokens=10, **given)))
    return out


def test_an_imported_gpt2_exports_with_its_generation_config(hf_dir, tmp_path):
    imported = load_text_generator(hf_dir)
    assert imported.defaults == {"temperature": 1.4, "top_k": 9, "repetition_penalty": 1.2}
    export = imported.export(tmp_path / "export")
    assert not (export / "generation_config.json").exists()  # an mmkit export: the settings in config.json
    again = load_text_generator(export)
    assert (again.defaults, again.sampling_fallbacks, again.eos_id) == (imported.defaults,
                                                                        imported.sampling_fallbacks, imported.eos_id)
    for given in ({}, {"temperature": 0}, {"beam_size": 2}, {"top_p": 0.8}):  # the fallbacks (top_k 9) included
        assert _runs(again, **given) == _runs(imported, **given), given
    with pytest.raises(WeightsError, match="holds files already"):
        imported.export(export)


def test_save_text_generator_checks_the_settings_before_writing(hf_dir, tmp_path):
    model, tok = GPT.from_hf(hf_dir), load_text_generator(hf_dir).tokenizer
    saved = load_text_generator(save_text_generator(model, tok, tmp_path / "a", {"top_p": 0.9, "beam_size": 1}))
    assert saved.defaults == {"top_p": 0.9} and saved.default_options().top_p == 0.9  # beam 1 is the default
    for bad, message in (({"beam_size": 0}, r"decoding: a decoding setting mmkit cannot use \(beam_size must be "),
                         ({"num_beams": 3}, r"decoding: 'num_beams' not among the model's own decoding settings"),
                         ({"temperature": 0.5, "beam_size": 2}, "beam search is deterministic")):
        with pytest.raises(ValueError, match=message):
            save_text_generator(model, tok, tmp_path / "bad", bad)
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("metadata, message", [
    ({"decoding": [1]}, "decoding: expected an object of decoding settings, got list"),
    ({"decoding": {"top_k": -1}}, "decoding: a decoding setting mmkit cannot use (top_k must be >= 1"),
    ({"sampling_fallbacks": {"beam_size": 2}}, "sampling_fallbacks: 'beam_size' not among the model's own"),
])
def test_tampered_decoding_settings_are_one_line_at_load(hf_dir, tmp_path, metadata, message):
    export = load_text_generator(hf_dir).export(tmp_path / "export")
    doc = json.loads((export / "config.json").read_text())
    doc["metadata"].update(metadata)
    (export / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError) as err:
        load_text_generator(export)
    assert str(err.value).startswith(f"{export / 'config.json'}: metadata ") and message in str(err.value)


def test_an_export_made_before_decoding_settings_loads_without_them(hf_dir, tmp_path):
    export = load_text_generator(hf_dir).export(tmp_path / "export")
    doc = json.loads((export / "config.json").read_text())
    for key in ("decoding", "sampling_fallbacks"):
        del doc["metadata"][key]
    (export / "config.json").write_text(json.dumps(doc))
    old = load_text_generator(export)
    assert (old.defaults, old.sampling_fallbacks) == ({}, {})


def test_the_cli_exports_alone_or_while_it_generates(hf_dir, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert mmkit_main(["generate-text", "--model", str(hf_dir), "--export", str(tmp_path / "alone")]) == 0
    assert f"saved an mmkit export in {tmp_path / 'alone'}" in caplog.text and capsys.readouterr().out == ""
    assert load_text_generator(tmp_path / "alone").defaults["top_k"] == 9
    args = ["--max-new-tokens", "8", "--temperature", "0"]
    assert mmkit_main(["generate-text", "The cat", "--model", str(hf_dir), *args,
                       "--export", str(tmp_path / "also")]) == 0
    printed = capsys.readouterr().out
    assert mmkit_main(["generate-text", "The cat", "--model", str(tmp_path / "also"), *args]) == 0
    assert capsys.readouterr().out == printed
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "notes.txt").write_text("mine")
    for extra, message in ((["--export", str(tmp_path / "held")], "holds files already"),
                           (["--export", str(tmp_path / "x"), "--quantize", "int8"], "drop --quantize int8"),
                           ([], "give prompts or a .txt/.jsonl file of prompts (or --export OUT)")):
        assert mmkit_main(["generate-text", "--model", str(hf_dir), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert [p.name for p in (tmp_path / "held").iterdir()] == ["notes.txt"] and not (tmp_path / "x").exists()


def test_a_trained_models_generation_settings_reach_its_export(tmp_path):
    from _gpt import tiny_tokenizer

    from mmkit.tasks.language_model import LanguageModel

    task = LanguageModel(GPT(max_len=32, dim=16, depth=1, num_heads=2, vocab_size=300),
                         generation={"temperature": 0.8, "top_k": 40, "max_new_tokens": 12})
    task.tokenizer = tiny_tokenizer()
    generator = load_text_generator(task.export(tmp_path / "export"))
    assert generator.defaults == {"temperature": 0.8, "top_k": 40, "max_new_tokens": 12}
    assert generator.default_options() == GenerationOptions(temperature=0.8, top_k=40, max_new_tokens=12)
    with pytest.raises(ValueError, match=r"model.generation: a decoding setting mmkit cannot use \(top_p"):
        LanguageModel(GPT(max_len=32, dim=16, depth=1, num_heads=2), generation={"top_p": 2.0})


def test_a_models_own_max_new_tokens_is_its_length(tmp_path, capsys, caplog):
    """A GPT-2 generation config's max_new_tokens is the model's own length, as transformers' `generate()` takes it:
    generate-text without --max-new-tokens decodes that many (said), the flag chooses another, the demo's slider
    starts there, and it survives the mmkit export and the GPT-2 folder (`generate()` without arguments gives the
    same tokens). max_length counts the prompt (one limit a prompt): named as not applied. A model's own length
    that leaves no room for a prompt is one line naming it."""
    from transformers import GPT2LMHeadModel

    from mmkit.inference.gpt2_dir import save_gpt2_dir

    directory = tmp_path / "gpt2"
    _, tok = write_tiny_gpt2(directory)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "max_new_tokens": 7, "max_length": 50}))
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        generator = load_text_generator(directory)
    assert "not applied" not in caplog.text  # max_new_tokens wins over max_length in transformers too
    assert generator.defaults == {"max_new_tokens": 7} and generator.default_options().max_new_tokens == 7
    ids = torch.tensor([tok.encode("The cat sees")])
    hub = GPT2LMHeadModel.from_pretrained(directory)
    theirs = hub.generate(ids, attention_mask=torch.ones_like(ids))[0, ids.shape[1]:].tolist()
    assert len(theirs) == 7 and generator.generate("The cat sees") == tok.decode(theirs)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert mmkit_main(["generate-text", "The cat sees", "--model", str(directory)]) == 0
    assert capsys.readouterr().out.rstrip("\n") == "The cat sees" + tok.decode(theirs)
    assert "decoding with the model's own settings: max_new_tokens 7" in caplog.text
    assert mmkit_main(["generate-text", "The cat sees", "--model", str(directory), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == "The cat sees" + tok.decode(theirs[:3])
    again = load_text_generator(generator.export(tmp_path / "export"))
    assert again.defaults == {"max_new_tokens": 7}
    hf = save_gpt2_dir(again, tmp_path / "hf")
    assert json.loads((hf / "generation_config.json").read_text())["max_new_tokens"] == 7
    out = GPT2LMHeadModel.from_pretrained(hf).generate(ids, attention_mask=torch.ones_like(ids))
    assert out[0, ids.shape[1]:].tolist() == theirs
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.eos_id, "max_length": 50}))
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        assert load_text_generator(directory).defaults == {}
    assert "not applied by mmkit (transformers' generate would): max_length 50" in caplog.text
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.eos_id, "max_new_tokens": 64}))
    capsys.readouterr()  # transformers' loading bars above
    assert mmkit_main(["generate-text", "The cat sees", "--model", str(directory)]) == 2
    assert capsys.readouterr().err == (
        "mmkit generate-text: error: max_new_tokens 64 leaves no room for a prompt in the model's context of 64 "
        "tokens\n")
