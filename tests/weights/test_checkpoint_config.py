"""A native checkpoint's config.json is validated before anything is built (issue 9 #6, #9, #15):
wrong types, out-of-range sizes, NaN, null or lists where objects belong, and dimensions that
disagree with the tensor shapes in the safetensors header are one line naming the file and the
field, with no tensor read and nothing allocated; a pickle that names code is refused in one line
that says how to convert a trusted file."""
from __future__ import annotations

import json

import pytest
import torch

from mmkit.models import BERT, CLIP, GPT, ViT, Whisper
from mmkit.models.vit import PretrainedViT
from mmkit.weights import WeightsError, read_state_dict
from mmkit.weights import native

_GPT = dict(vocab_size=50, max_len=16, dim=32, depth=1, num_heads=4)
_CLIP = dict(visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=1, num_heads=4),
             text=dict(embed_dim=16, vocab_size=60, max_len=12, dim=32, depth=1, num_heads=4))


def _saved(tmp_path, model, edit):
    """Save `model`, then rewrite its config.json with `edit(doc)` (in place)."""
    directory = model.save_pretrained(tmp_path / "ckpt")
    doc = json.loads((directory / "config.json").read_text())
    edit(doc)
    (directory / "config.json").write_text(json.dumps(doc))  # json.dumps writes NaN as NaN
    return directory


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in parts), message


def _set(**fields):
    return lambda doc: doc["config"].update(fields)


@pytest.mark.parametrize("fields, named", [
    ({"num_heads": 0}, "'num_heads' must be positive"),
    ({"dim": -32}, "'dim' must be positive"),
    ({"mlp_ratio": float("nan")}, "'mlp_ratio' must be finite"),
    ({"dim": "32"}, "'dim' must be an integer"),
    ({"depth": 1.5}, "'depth' must be an integer"),
    ({"qkv_bias": "yes"}, "'qkv_bias' must be true or false"),  # truthy: today it builds silently
    ({"dropout": 2.0}, "'dropout' must be in [0, 1)"),
    ({"num_heads": 5}, "'dim' (32) is not divisible by 'num_heads' (5)"),
    ({"vocab_size": None}, "'vocab_size' must be an integer"),
    ({"n_layer": 2}, "unknown field(s) 'n_layer'"),
])
def test_bad_gpt_fields_are_one_line_naming_file_and_field(tmp_path, fields, named):
    directory = _saved(tmp_path, GPT(**_GPT), _set(**fields))
    with pytest.raises(WeightsError) as err:
        GPT.from_pretrained(directory)
    _one_line(err, str(directory / "config.json"), named)


@pytest.mark.parametrize("edit, named", [
    (lambda doc: doc.update(config=[1, 2]), "expected an object of constructor arguments, found a list"),
    (lambda doc: doc.update(config=None), "found null"),
    (lambda doc: doc["config"].update(global_pool="max"), "'global_pool' must be one of 'token', 'avg', 'map'"),
    (lambda doc: doc["config"].update(patch_size=0), "'patch_size' must be positive"),
])
def test_bad_vit_configs(tmp_path, edit, named):
    directory = _saved(tmp_path, ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, num_heads=4), edit)
    for load in (ViT.from_pretrained, PretrainedViT):  # the recipe class reads the same file
        with pytest.raises(WeightsError) as err:
            load(str(directory))
        _one_line(err, "config.json", named)


@pytest.mark.parametrize("edit, named", [
    (lambda doc: doc["config"].update(visual=None), "config.visual: expected an object"),
    (lambda doc: doc["config"]["text"].update(num_heads=0), "config.text: field 'num_heads' must be positive"),
    (lambda doc: doc["config"].update(init_logit_scale=float("inf")), "'init_logit_scale' must be finite"),
])
def test_bad_clip_tower_configs(tmp_path, edit, named):
    directory = _saved(tmp_path, CLIP.from_config(_CLIP), edit)
    with pytest.raises(WeightsError) as err:
        CLIP.from_pretrained(directory)
    _one_line(err, "config.json", named)


def test_whisper_zero_context_is_refused(tmp_path):
    tiny = dict(n_mels=8, n_audio_ctx=10, n_text_ctx=16, vocab_size=50, dim=32, encoder_depth=1, decoder_depth=1,
                num_heads=4)
    directory = _saved(tmp_path, Whisper(**tiny), _set(n_audio_ctx=0))
    with pytest.raises(WeightsError) as err:
        Whisper.from_pretrained(directory)
    _one_line(err, "config.json", "'n_audio_ctx' must be positive")


def test_config_disagreeing_with_the_weights_fails_before_reading_or_building(tmp_path, monkeypatch):
    directory = _saved(tmp_path, GPT(**_GPT), _set(vocab_size=50_000_000))  # 6.4 GB if it were built

    def no_tensors(*args, **kwargs):
        raise AssertionError("tensors were read before the config was checked against the header")

    monkeypatch.setattr(native, "read_state_dict", no_tensors)
    with pytest.raises(WeightsError) as err:
        GPT.from_pretrained(directory)
    _one_line(err, str(directory / "config.json"), "field vocab_size=50000000", "tok_embed.weight is (50, 32)")


def test_clip_tower_field_is_named_on_a_shape_disagreement(tmp_path, monkeypatch):
    directory = _saved(tmp_path, CLIP.from_config(_CLIP), lambda doc: doc["config"]["text"].update(max_len=20))
    monkeypatch.setattr(native, "read_state_dict", lambda *a, **k: pytest.fail("tensors read"))
    with pytest.raises(WeightsError) as err:
        CLIP.from_pretrained(directory)
    _one_line(err, "field text.max_len=20", "text.pos_embed.weight")


def test_corrupt_safetensors_header_is_one_line(tmp_path):
    directory = GPT(**_GPT).save_pretrained(tmp_path / "ckpt")
    (directory / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError) as err:
        GPT.from_pretrained(directory)
    _one_line(err, "model.safetensors: not a readable safetensors file")


class _Code:
    def __reduce__(self):
        return (print, ("ran",))


def test_pickled_code_is_refused_in_one_line_with_the_conversion(tmp_path):
    path = tmp_path / "hostile.bin"
    torch.save({"w": torch.zeros(2), "x": _Code()}, path)
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    _one_line(err, str(path), "holds pickled Python code (print) that mmkit will not run",
              "weights_only=False", str(tmp_path / "hostile.safetensors"))


def test_a_clip_directory_for_label_is_checked_against_its_weights_before_building(tmp_path, monkeypatch):
    """`mmkit label`'s loader (`load_clip`) read the weights and built the model straight from config.json:
    a tampered mlp_ratio asked for 655 GB and died in a traceback."""
    from mmkit.inference.clip_loader import load_clip

    directory = _saved(tmp_path, CLIP.from_config(_CLIP), lambda doc: doc["config"]["visual"].update(mlp_ratio=1e7))
    monkeypatch.setattr(native, "read_state_dict", lambda *a, **k: pytest.fail("tensors read"))
    with pytest.raises(WeightsError) as err:
        load_clip(str(directory))
    _one_line(err, str(directory / "config.json"),
              "visual.encoder.blocks.0.mlp.fc1.weight is (128, 32) in model.safetensors")


def test_a_depth_beyond_the_weights_is_refused_before_any_layer_is_built(tmp_path, monkeypatch):
    directory = _saved(tmp_path, GPT(**_GPT), _set(depth=10**9))  # building it would take hours, even on meta
    monkeypatch.setattr(GPT, "build", classmethod(lambda cls, config: pytest.fail("built")))
    with pytest.raises(WeightsError) as err:
        GPT.from_pretrained(directory)
    _one_line(err, "config.json", "field depth=1000000000 asks for more layers than the weights hold tensors")


def test_an_importers_config_is_checked_against_its_tensors_before_the_real_build(monkeypatch):
    """Importers (HF, open_clip, min-dalle...) build through `from_converted`: a source config disagreeing
    with its own tensors is one line, not a huge allocation or a size-mismatch traceback."""
    state = GPT(**_GPT).state_dict()
    built = []
    monkeypatch.setattr(GPT, "_build_to_load", classmethod(lambda cls, *a: built.append(1)))
    with pytest.raises(WeightsError) as err:
        GPT.from_converted(native.Converted({**_GPT, "dim": 4_000_000, "num_heads": 4}, state, "hf/config.json",
                                            False))
    _one_line(err, "hf/config.json: field dim=4000000 disagrees with the weights", "in the weights but")
    assert not built


@pytest.mark.parametrize("pad_id, named", [
    (99999, "field 'pad_id' holds id 99999, outside the vocabulary (0..49)"),  # was torch's AssertionError
    (-1, "field 'pad_id' holds id -1, outside the vocabulary (0..49)"),  # was accepted
])
def test_token_ids_outside_the_vocabulary_are_refused(tmp_path, pad_id, named):
    bert = BERT(vocab_size=50, max_len=16, dim=32, depth=1, num_heads=4, mlm_head=True)
    directory = _saved(tmp_path, bert, _set(pad_id=pad_id))
    with pytest.raises(WeightsError) as err:
        BERT.from_pretrained(directory)
    _one_line(err, str(directory / "config.json"), named)
