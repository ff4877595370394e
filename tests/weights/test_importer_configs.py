"""The importers and loaders refuse a bad config.json, or the wrong kind of path, in one WeightsError line
naming the file and the field: a tampered transformers GPT-2, BERT, MarianMT or T5 config (a missing field,
a wrong type, zero heads, a negative size, a non-numeric epsilon) never reaches a constructor as a
KeyError, TypeError or ZeroDivisionError; an mmkit export given to `from_hf`, a transformers directory
given to `from_pretrained`, a file where a directory is expected (and the reverse) say which is which."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from mmkit.models import BERT, GPT, T5, VQGAN, Seq2Seq, ViT, Whisper
from mmkit.weights import Converted, WeightsError
from tests.models._seq2seq_refs import tiny_marian, tiny_t5

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bert import write_tiny_bert  # noqa: E402
from _gpt import write_tiny_gpt2  # noqa: E402


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert err.type is WeightsError and "\n" not in message and all(p in message for p in parts), message


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-init transformers checkpoints, written once: GPT-2, BERT, MarianMT and T5."""
    root = tmp_path_factory.mktemp("hf")
    write_tiny_gpt2(root / "gpt")
    write_tiny_bert(root / "bert", kind="base")
    tiny_marian().save_pretrained(root / "marian")
    tiny_t5().save_pretrained(root / "t5")
    return {name: root / name for name in ("gpt", "bert", "marian", "t5")}


IMPORTERS = {"gpt": GPT.from_hf, "bert": BERT.from_hf, "marian": Seq2Seq.from_hf, "t5": T5.from_hf}
_DELETE = object()


def _tampered(source: Path, tmp_path: Path, field: str, value) -> Path:
    directory = Path(shutil.copytree(source, tmp_path / source.name))
    doc = json.loads((directory / "config.json").read_text())
    if value is _DELETE:
        del doc[field]
    else:
        doc[field] = value
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


@pytest.mark.parametrize("kind, field, value, named", [
    ("gpt", "n_head", _DELETE, "missing field(s) 'n_head'"),  # was KeyError: 'n_head'
    ("gpt", "n_layer", "2", "field 'n_layer' must be an integer, got '2'"),  # was a TypeError
    ("gpt", "n_embd", 32.0, "field 'n_embd' must be an integer"),
    ("gpt", "n_head", 0, "field 'n_head' must be positive, got 0"),  # was ZeroDivisionError
    ("gpt", "n_head", None, "field 'n_head' must be an integer"),
    ("gpt", "n_head", 3, "field 'n_embd' (32) is not divisible by 'n_head' (3)"),  # was a bare ValueError
    ("gpt", "n_positions", -1, "field 'n_positions' must be positive, got -1"),  # was a RuntimeError
    ("gpt", "layer_norm_epsilon", "x", "field 'layer_norm_epsilon' must be a number, got 'x'"),  # was accepted
    ("gpt", "layer_norm_epsilon", -1e-5, "field 'layer_norm_epsilon' must not be negative"),
    ("gpt", "n_inner", -4, "field 'n_inner' must be positive"),
    ("bert", "hidden_size", _DELETE, "missing field(s) 'hidden_size'"),  # was KeyError: 'hidden_size'
    ("bert", "vocab_size", "x", "field 'vocab_size' must be an integer, got 'x'"),  # was a TypeError
    ("bert", "num_attention_heads", 0, "field 'num_attention_heads' must be positive"),  # was ZeroDivisionError
    ("bert", "intermediate_size", -1, "field 'intermediate_size' must be positive"),
    ("bert", "max_position_embeddings", -1, "field 'max_position_embeddings' must be positive"),
    ("bert", "layer_norm_eps", "x", "field 'layer_norm_eps' must be a number"),
    ("bert", "hidden_dropout_prob", 5, "field 'hidden_dropout_prob' must be in [0, 1)"),
    ("bert", "attention_probs_dropout_prob", 1.0, "field 'attention_probs_dropout_prob' must be in [0, 1)"),
    ("bert", "classifier_dropout", "0.1", "field 'classifier_dropout' must be a number"),
    ("bert", "pad_token_id", 10_000, "field 'pad_token_id' holds id 10000, outside the vocabulary"),
    ("bert", "is_decoder", "false", "field 'is_decoder' must be true or false"),
    ("marian", "d_model", "32", "field 'd_model' must be an integer, got '32'"),  # was a TypeError
    ("marian", "encoder_layers", _DELETE, "missing field(s) 'encoder_layers'"),  # was KeyError
    ("marian", "encoder_attention_heads", 0, "field 'encoder_attention_heads' must be positive"),
    ("marian", "vocab_size", None, "field 'vocab_size' must be an integer, got None"),
    ("marian", "encoder_ffn_dim", -48, "field 'encoder_ffn_dim' must be positive"),
    ("marian", "max_position_embeddings", 0, "field 'max_position_embeddings' must be positive"),
    ("marian", "dropout", "x", "field 'dropout' must be a number"),
    ("marian", "attention_dropout", -0.1, "field 'attention_dropout' must be in [0, 1)"),
    ("marian", "activation_dropout", "x", "field 'activation_dropout' must be a number"),
    ("marian", "decoder_layerdrop", 1.5, "field 'decoder_layerdrop' must be in [0, 1)"),
    ("marian", "encoder_attention_heads", 5, "field 'd_model' (32) is not divisible by 'encoder_attention_heads'"),
    ("t5", "d_model", "30", "field 'd_model' must be an integer, got '30'"),
    ("t5", "num_heads", _DELETE, "missing field(s) 'num_heads'"),
    ("t5", "num_heads", 0, "field 'num_heads' must be positive"),
    ("t5", "d_kv", 0, "field 'd_kv' must be positive"),
    ("t5", "d_ff", -1, "field 'd_ff' must be positive"),
    ("t5", "num_decoder_layers", "3", "field 'num_decoder_layers' must be an integer"),
    ("t5", "relative_attention_num_buckets", 0, "field 'relative_attention_num_buckets' must be positive"),
    ("t5", "dropout_rate", "x", "field 'dropout_rate' must be a number"),
    ("t5", "layer_norm_epsilon", "x", "field 'layer_norm_epsilon' must be a number"),
    ("t5", "feed_forward_proj", 7, "field 'feed_forward_proj' must be a string"),
])
def test_a_bad_transformers_config_field_is_one_line(hf_dirs, tmp_path, kind, field, value, named):
    directory = _tampered(hf_dirs[kind], tmp_path, field, value)
    with pytest.raises(ValueError) as err:
        IMPORTERS[kind](directory)
    _one_line(err, str(directory / "config.json"), named)


@pytest.mark.parametrize("kind, head", [("gpt", "GPT2ForSequenceClassification"), ("marian", "MarianModel"),
                                        ("t5", "T5EncoderModel"), ("bert", "BertForTokenClassification")])
def test_another_heads_directory_is_refused_by_its_class(hf_dirs, tmp_path, kind, head):
    """config.json's `architectures` names the class: another head's folder was refused by the tensors it lacks
    or adds ("no model.shared.weight", "keys with no mapping: score.weight"), which read as a corrupt file."""
    with pytest.raises(WeightsError) as err:
        IMPORTERS[kind](_tampered(hf_dirs[kind], tmp_path, "architectures", [head]))
    _one_line(err, "config.json", f"{head} is not supported")


@pytest.mark.parametrize("kind, named", [("gpt", "GPT2Model"), ("t5", "T5WithLMHeadModel")])
def test_base_and_old_class_names_still_import(hf_dirs, tmp_path, kind, named):
    """GPT2Model's weights are the LM's (its head is tied); T5WithLMHeadModel is what the original t5-small ...
    t5-11b config.json files say (the class's old name)."""
    IMPORTERS[kind](_tampered(hf_dirs[kind], tmp_path, "architectures", [named]))


def test_the_untampered_transformers_directories_import(hf_dirs):
    for kind, load in IMPORTERS.items():
        assert not load(hf_dirs[kind]).training


@pytest.mark.parametrize("load", [GPT.from_hf, BERT.from_hf, Seq2Seq.from_hf, T5.from_hf, Whisper.from_hf])
def test_an_mmkit_export_given_to_from_hf_points_to_from_pretrained(tmp_path, load):
    # was: GPT "activation_function=None", BERT KeyError 'hidden_size', others "model_type=None"
    GPT(vocab_size=50, max_len=16, dim=32, depth=1, num_heads=4).save_pretrained(tmp_path / "export")
    with pytest.raises(ValueError) as err:
        load(tmp_path / "export")
    _one_line(err, str(tmp_path / "export" / "config.json"), "an mmkit GPT checkpoint", "GPT.from_pretrained")


def test_from_converted_checks_every_importers_config():
    """The backstop for importers that check less than the transformers ones: the model class's own
    argument check runs on the converted config, naming the source."""
    bad = Converted(dict(vocab_size=50, max_len=16, dim=32, depth=1, num_heads=0), {}, "somewhere.bin", False)
    with pytest.raises(ValueError) as err:
        GPT.from_converted(bad)
    _one_line(err, "somewhere.bin", "field 'num_heads' must be positive")


# --- native config.json: constructor choices (finding 16) ---------------------------------------

@pytest.mark.parametrize("model, field, named", [
    (Seq2Seq(vocab_size=40, max_len=16, dim=32, encoder_depth=1, decoder_depth=1, num_heads=4), "positions",
     "positions must be one of"),
    (Seq2Seq(vocab_size=40, max_len=16, dim=32, encoder_depth=1, decoder_depth=1, num_heads=4), "activation",
     "unknown activation 'bogus'"),
    (BERT(vocab_size=40, max_len=16, dim=32, depth=1, num_heads=4), "classifier_head", "unknown classifier_head"),
    (T5(vocab_size=40, dim=32, num_heads=4, head_dim=8, mlp_dim=48, encoder_depth=1, decoder_depth=1),
     "feed_forward", "unknown activation 'bogus'"),
    (VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8, codebook_size=16, code_dim=8,
           norm_groups=4), "value_range", "value_range must be one of"),
])
def test_a_bad_constructor_choice_in_a_native_config_names_the_file(tmp_path, model, field, named):
    directory = model.save_pretrained(tmp_path / "export")
    with pytest.raises(ValueError) as err:
        type(model).from_pretrained(directory, **{field: "bogus"})
    _one_line(err, str(directory), "config with overrides", named)
    doc = json.loads((directory / "config.json").read_text())
    doc["config"][field] = "bogus"
    (directory / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as err:  # was a bare ValueError from the constructor
        type(model).from_pretrained(directory)
    _one_line(err, str(directory / "config.json"), named)


# --- the wrong kind of path (finding 14) ---------------------------------------------------------

@pytest.mark.parametrize("cls", [GPT, BERT, ViT])
def test_a_transformers_directory_given_to_from_pretrained_points_to_from_hf(hf_dirs, cls):
    with pytest.raises(ValueError) as err:  # was "holds a None checkpoint, not GPT"
        cls.from_pretrained(hf_dirs["gpt"])
    _one_line(err, str(hf_dirs["gpt"] / "config.json"), "not an mmkit checkpoint", "model_type='gpt2'",
              "import it with GPT.from_hf")  # the importer of what the directory holds, whoever was asked


def test_every_named_importer_exists():
    import mmkit.models
    from mmkit.weights.hf import HF_IMPORTERS

    assert all(callable(getattr(mmkit.models, name).from_hf) for name in HF_IMPORTERS.values())


def test_a_config_file_given_to_from_pretrained_asks_for_its_directory(tmp_path):
    directory = GPT(vocab_size=50, max_len=16, dim=32, depth=1, num_heads=4).save_pretrained(tmp_path / "export")
    with pytest.raises(ValueError) as err:  # was "not an mmkit checkpoint directory (no config.json)"
        GPT.from_pretrained(directory / "config.json")
    _one_line(err, str(directory / "config.json"), "a file", "expects the checkpoint directory")


def test_a_directory_given_for_a_checkpoint_file_says_so(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    from mmkit.models import CLIP

    for load in (lambda: Whisper.from_openai(tmp_path), lambda: CLIP.from_open_clip("ViT-B-32", pretrained=tmp_path),
                 lambda: ViT.from_timm("vit_tiny_patch16_224", checkpoint_path=str(tmp_path))):
        with pytest.raises(ValueError) as err:  # was "checkpoint file not found: <dir>"
            load()
        _one_line(err, str(tmp_path), "a directory", "expected a checkpoint file")


def test_a_file_given_to_load_encoder_says_it_is_a_file(tmp_path):
    from mmkit.inference.encoder import load_encoder

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="a file, not a model directory"):  # was "directory not found"
        load_encoder(tmp_path / "config.json")


# --- taming's YAML (finding 15) -------------------------------------------------------------------

def test_a_bad_taming_yaml_is_named_not_the_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "model.ckpt")
    (tmp_path / "bad.yaml").write_text("model: {params: 3}\n")
    with pytest.raises(ValueError) as err:  # was "model.ckpt: not a taming VQModel config"
        VQGAN.from_taming(tmp_path / "bad.yaml", tmp_path / "model.ckpt")
    _one_line(err, str(tmp_path / "bad.yaml"), "not a taming VQModel config")
    assert "model.ckpt" not in str(err.value)


def test_the_taming_yaml_is_judged_before_the_checkpoint_is_read(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {params: 3}\n")
    with pytest.raises(ValueError) as err:  # the checkpoint is absent: reading it first would fail on that
        VQGAN.from_taming(tmp_path / "bad.yaml", tmp_path / "absent.ckpt")
    _one_line(err, str(tmp_path / "bad.yaml"), "not a taming VQModel config")
