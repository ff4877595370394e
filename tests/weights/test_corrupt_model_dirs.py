"""Corrupt or tampered BERT and Whisper model directories are refused at load in one line naming the
file and the field, never a traceback or a failure per file at run time: ids outside the vocabulary,
wrong JSON types, a non-UTF-8 vocab.txt or config.json, a config.json that names no model, an export
of a newer format, class names that do not match the classifier."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from mmkit.cli import main as mmkit_main
from mmkit.data.whisper_toy_tokenizer import write_toy_tokenizer
from mmkit.inference.encoder import load_encoder, save_encoder
from mmkit.inference.speech_checkpoints import load_speech_model, save_speech_checkpoint
from mmkit.models import BERT, Whisper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bert import tiny_wordpiece  # noqa: E402


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and len(message.splitlines()[0]) and all(p in message for p in parts), message


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    doc = edit(doc) or doc
    path.write_text(json.dumps(doc))  # json.dumps writes NaN as NaN, as a hostile file may


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "copy"))


# --- BERT ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    tok = tiny_wordpiece()
    torch.manual_seed(0)
    model = BERT(vocab_size=tok.vocab_size, max_len=16, dim=32, depth=1, num_heads=4, num_classes=3)
    return save_encoder(model, tok, tmp_path_factory.mktemp("bert") / "export", ["a", "b", "c"])


@pytest.mark.parametrize("names, named", [
    (["a", "b"], "class_names has 2 names for a 3-class head"),
    ("abc", "class_names must be a list of non-empty strings"),
    (["a", 2, "c"], "class_names must be a list of non-empty strings"),
    (["a", "b", "a"], "class_names repeats ['a']"),
])
def test_class_names_that_do_not_fit_the_classifier_are_refused(bert_export, tmp_path, names, named):
    directory = _copy(bert_export, tmp_path)
    _edit_json(directory / "config.json", lambda doc: doc["metadata"].update(class_names=names))
    with pytest.raises(ValueError) as err:
        load_encoder(directory)
    _one_line(err, str(directory / "config.json"), named)


@pytest.mark.parametrize("pad_id", [99999, -1])
def test_a_bert_pad_id_outside_the_vocabulary_is_refused(bert_export, tmp_path, pad_id):
    directory = _copy(bert_export, tmp_path)
    _edit_json(directory / "config.json", lambda doc: doc["config"].update(pad_id=pad_id))
    with pytest.raises(ValueError) as err:
        load_encoder(directory)
    _one_line(err, str(directory / "config.json"), f"field 'pad_id' holds id {pad_id}, outside the vocabulary")


def test_a_non_utf8_vocab_txt_names_the_file(bert_export, tmp_path, capsys):
    directory = _copy(bert_export, tmp_path)
    (directory / "tokenizer.json").unlink()
    (directory / "vocab.txt").write_bytes(b"[PAD]\n\x8b\xff\n")
    with pytest.raises(ValueError) as err:
        load_encoder(directory)
    _one_line(err, f"{directory / 'vocab.txt'}: not UTF-8 text")
    assert mmkit_main(["fill-mask", "--model", str(directory), "a [MASK]"]) == 2
    assert f"{directory / 'vocab.txt'}: not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("version, named", [
    (99, "written by a newer mmkit (format 99; this one reads ≤ 1)"),
    (None, "field 'format_version' must be a positive integer, got None"),
])
def test_an_export_of_a_newer_format_is_refused(bert_export, tmp_path, version, named):
    directory = _copy(bert_export, tmp_path)
    _edit_json(directory / "config.json", lambda doc: doc.update(format_version=version))
    with pytest.raises(ValueError) as err:
        load_encoder(directory)
    _one_line(err, str(directory / "config.json"), named)


def test_the_untampered_bert_export_loads(bert_export):
    assert load_encoder(bert_export).class_names == ["a", "b", "c"]


# --- Whisper ------------------------------------------------------------------------------------

_SMALL = dict(n_mels=16, n_audio_ctx=8, n_text_ctx=16, dim=32, encoder_depth=1, decoder_depth=1, num_heads=4)


@pytest.fixture(scope="module")
def whisper_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    tok = write_toy_tokenizer(root / "tok", n_text_tokens=256, multilingual=False)
    torch.manual_seed(0)
    return save_speech_checkpoint(Whisper(vocab_size=tok.id_count, **_SMALL), tok, root / "export")


@pytest.fixture(scope="module")
def hf_whisper_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_whisper")
    tok = write_toy_tokenizer(root, n_text_tokens=256, multilingual=False)
    config = transformers.WhisperConfig(
        vocab_size=tok.id_count, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=8,
        max_target_positions=16, pad_token_id=tok.eot, bos_token_id=tok.eot, eos_token_id=tok.eot,
        decoder_start_token_id=tok.sot, begin_suppress_tokens=None, suppress_tokens=None)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(root)
    return root


@pytest.mark.parametrize("edit, named", [
    (lambda doc: [1], "expected a JSON object, found a list"),  # was a TypeError in WhisperTokenizer
    (lambda doc: doc.update(suppress_tokens=[99999999]), "field 'suppress_tokens' holds id 99999999"),
    (lambda doc: doc.update(begin_suppress_tokens=[-1]), "'begin_suppress_tokens' list items must not be negative"),
    (lambda doc: doc.update(suppress_tokens=[-2]), "'suppress_tokens' list items must not be negative"),
    (lambda doc: doc.update(max_initial_timestamp_index=math.nan), "'max_initial_timestamp_index' must be an "
                                                                   "integer, got nan"),
    (lambda doc: doc.update(max_initial_timestamp_index=-3), "'max_initial_timestamp_index' must not be negative"),
    (lambda doc: doc.update(suppress_tokens="1,2"), "field 'suppress_tokens' must be a list"),
    (lambda doc: doc.update(lang_to_id={"english": 5}), "field 'lang_to_id' holds 'english'"),
    (lambda doc: doc.update(is_multilingual="no"), "field 'is_multilingual' must be true or false"),
])
def test_bad_generation_settings_are_one_line_at_load(whisper_export, tmp_path, edit, named):
    directory = _copy(whisper_export, tmp_path)
    _edit_json(directory / "generation_config.json", edit)
    with pytest.raises(ValueError) as err:
        load_speech_model(directory)
    _one_line(err, str(directory / "generation_config.json"), named)


@pytest.mark.parametrize("field, value, named", [
    ("d_model", "32", "field 'd_model' must be an integer, got '32'"),  # was a TypeError in the converter
    ("num_mel_bins", math.nan, "field 'num_mel_bins' must be an integer, got nan"),  # was "divisible by groups"
    ("num_mel_bins", 0, "field 'num_mel_bins' must be positive"),
    ("encoder_attention_heads", None, "field 'encoder_attention_heads' must be an integer"),
])
def test_bad_transformers_whisper_config_fields_are_one_line(hf_whisper_dir, tmp_path, field, value, named):
    directory = _copy(hf_whisper_dir, tmp_path)
    _edit_json(directory / "config.json", lambda doc: doc.update({field: value}))
    with pytest.raises(ValueError) as err:
        load_speech_model(directory)
    _one_line(err, str(directory / "config.json"), named)


@pytest.mark.parametrize("edit, named", [
    (lambda path: path.write_bytes(b"\x8b\xff" * 100), "not UTF-8 text"),
    (lambda path: _edit_json(path, lambda doc: doc.pop("architecture") and None), "missing field 'architecture'"),
    (lambda path: _edit_json(path, lambda doc: doc.update(format_version=99)), "written by a newer mmkit (format 99"),
])
def test_a_broken_whisper_config_json_is_named(whisper_export, tmp_path, edit, named):
    directory = _copy(whisper_export, tmp_path)
    edit(directory / "config.json")
    with pytest.raises(ValueError) as err:
        load_speech_model(directory)
    _one_line(err, str(directory / "config.json"), named)


def test_the_untampered_whisper_directories_load(whisper_export, hf_whisper_dir):
    for directory in (whisper_export, hf_whisper_dir):
        model, tok = load_speech_model(directory)
        assert model.vocab_size == tok.id_count


@pytest.fixture(scope="module")
def sharded_whisper_dir(hf_whisper_dir, tmp_path_factory):
    """`hf_whisper_dir` saved in shards (model.safetensors.index.json and the files its weight_map names)."""
    import transformers

    directory = Path(shutil.copytree(hf_whisper_dir, tmp_path_factory.mktemp("sharded") / "dir"))
    (directory / "model.safetensors").unlink()
    transformers.WhisperForConditionalGeneration.from_pretrained(hf_whisper_dir).save_pretrained(
        directory, max_shard_size="40KB")
    assert len(set(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    return directory


def test_a_sharded_transformers_checkpoint_loads_as_the_whole_one(hf_whisper_dir, sharded_whisper_dir):
    whole, sharded = load_speech_model(hf_whisper_dir)[0], load_speech_model(sharded_whisper_dir)[0]
    for (name, a), (_, b) in zip(whole.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("edit, named", [
    (lambda doc: [1], "expected a JSON object, found a list"),
    (lambda doc: doc.pop("weight_map") and None, "no \"weight_map\" object"),  # was a KeyError traceback
    (lambda doc: doc.update(weight_map={"a": "../model.safetensors"}), "names '../model.safetensors', not a file "
                                                                       "beside the index"),
    (lambda doc: doc.update(weight_map={"a": 3}), "names 3, not a file"),
])
def test_a_broken_weights_index_is_one_line(sharded_whisper_dir, tmp_path, edit, named):
    directory = _copy(sharded_whisper_dir, tmp_path)
    _edit_json(directory / "model.safetensors.index.json", edit)
    with pytest.raises(ValueError) as err:
        load_speech_model(directory)
    _one_line(err, str(directory / "model.safetensors.index.json"), named)


def test_json_files_are_read_as_utf8_whatever_the_locale(hf_whisper_dir, tmp_path):
    """A config.json with non-ASCII text loads in a process whose locale's encoding is ASCII (LC_ALL=C, UTF-8 mode
    off: it was read with that encoding, a UnicodeDecodeError); one that is not UTF-8 is named with the byte."""
    import subprocess

    directory = _copy(hf_whisper_dir, tmp_path)
    _edit_json(directory / "config.json", lambda doc: doc.update(_name_or_path="Modèle – größer"))
    code = ("import sys; from mmkit.inference.speech_checkpoints import load_speech_model; "
            "load_speech_model(sys.argv[1])")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code, str(directory)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (directory / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError) as err:
        load_speech_model(directory)
    _one_line(err, str(directory / "config.json"), "not UTF-8 text (byte 7)")
