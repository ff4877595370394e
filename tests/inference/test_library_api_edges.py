"""What a library user (used to timm, open_clip, Hugging Face pipelines) meets calling the inference API directly,
from an audit of it: each test names what went wrong before."""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from _clip import save_tiny_clip
from _gpt import write_tiny_gpt2
from _text_tools import write_text_tool_models
from PIL import Image

from mmkit.core import GenerationOptions
from mmkit.inference import Classifier
from mmkit.inference.clip_loader import load_clip
from mmkit.inference.embed import Embedder
from mmkit.inference.encoder import load_encoder
from mmkit.inference.fill_mask import fill_mask
from mmkit.inference.text_classify import TextClassifierPredictor
from mmkit.inference.text_generation import load_text_generator
from mmkit.inference.transcriber import load_transcriber
from mmkit.inference.zero_shot import NonFiniteScores, ZeroShotClassifier, zero_shot_classifier
from mmkit.models import ViT
from tests.tasks.whisper_fixtures import synth_speechlike, write_hf_checkpoint


def _photo(seed: int = 0, size: tuple[int, int] = (40, 50)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vit") / "vit32"
    ViT(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2, num_classes=3).save_pretrained(directory)
    return directory


def test_an_export_without_metadata_is_read_at_the_models_resolution(vit_dir):
    """`save_pretrained` without metadata (README's own example): the inputs were resized to timm's 224 px, the
    32-px model's positions resampled, other probabilities."""
    clf = Classifier.from_pretrained(vit_dir)
    assert clf.transform.image_size == 32


def test_an_int8_model_is_not_saved_over_a_good_export(vit_dir):
    before = {p.name: p.read_bytes() for p in vit_dir.iterdir()}
    clf = Classifier.from_pretrained(vit_dir, quantize="int8")
    with pytest.raises(ValueError, match="holds int8 layers .* save the fp32 model"):
        clf.model.save_pretrained(vit_dir)  # wrote a checkpoint without its Linear weights: unloadable
    assert {p.name: p.read_bytes() for p in vit_dir.iterdir()} == before


def test_a_model_cast_to_bf16_runs_with_int8(vit_dir):
    """Int8Linear's fp32 result met the bf16 LayerNorm: "mixed dtype (CPU)" from deep inside."""
    fp32 = Classifier.from_pretrained(vit_dir).predict_images([_photo()], 3)
    model = ViT.from_pretrained(vit_dir).to(torch.bfloat16)
    (labels, probs), = Classifier(model, ["0", "1", "2"], {}, quantize="int8").predict_images([_photo()], 3)
    assert labels[0] == fp32[0][0][0] and np.allclose(probs, fp32[0][1], atol=0.02)


def test_predict_paths_keeps_the_order_of_the_files(vit_dir, tmp_path):
    """Unreadable files came back at once, readable ones when their batch was full: zip(paths, results) paired
    the wrong labels."""
    good = tmp_path / "good.png"
    _photo().save(good)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths = [good, tmp_path / "missing.png", good, tmp_path / "bad.png", good]
    clf = Classifier.from_pretrained(vit_dir)
    for batch_size in (1, 2, 32):
        got = list(clf.predict_paths(paths, batch_size=batch_size))
        assert [p.path for p in got] == [str(p) for p in paths]
        assert [p.error is None for p in got] == [True, False, True, False, True]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        list(clf.predict_paths(paths, batch_size=0))


def test_a_lone_image_is_one_image(vit_dir, tmp_path):
    clf = Classifier.from_pretrained(vit_dir)
    assert clf.predict_images(_photo(), 2) == clf.predict_images([_photo()], 2)
    assert clf.predict_images((im for im in [_photo()]), 2) == clf.predict_images([_photo()], 2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    directory = save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")
    return load_clip(str(directory))


def test_labels_given_as_one_string_are_refused(clip):
    model, tokenizer = clip
    with pytest.raises(TypeError, match="labels must be a list of names, not one string"):
        zero_shot_classifier(model, tokenizer, "cat")  # was one label per letter: c, a, t


def test_nan_scores_are_an_error_not_a_label(clip):
    model, tokenizer = clip
    zs = ZeroShotClassifier(model, tokenizer, precision="fp32")
    assert len(zs.predict_images(_photo(), ["cat", "dog"])) == 1  # a lone image
    broken = ZeroShotClassifier(copy.deepcopy(model), tokenizer, precision="fp32")
    with torch.no_grad():
        broken.model.logit_scale.fill_(float("nan"))
    with pytest.raises(NonFiniteScores):
        broken.predict_images([_photo()], ["cat", "dog"])  # was [('cat', nan), ('dog', nan)]


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    return write_text_tool_models(tmp_path_factory.mktemp("text"))


def test_bert_tools_run_in_eval_mode_whatever_the_model_was_left_in(text_models):
    """After `model.train()` (tuning in the same process) dropout stayed on: embeddings moved by up to 0.16,
    the same text's class and fill-mask's best token changed from call to call."""
    texts = ["the cat sees the moon.", "a dog"]
    enc = load_encoder(text_models["embed"])
    eval_embeddings = Embedder(enc).embed(texts)
    [eval_fill] = fill_mask(enc, "the cat [MASK] the moon.", top_k=3)
    enc.model.train()
    assert np.array_equal(Embedder(enc).embed(texts), eval_embeddings)
    enc.model.train()
    assert fill_mask(enc, "the cat [MASK] the moon.", top_k=3)[0].candidates == eval_fill.candidates
    clf = load_encoder(text_models["classify-text"])
    first = TextClassifierPredictor(clf).predict(texts)
    clf.model.train()
    assert TextClassifierPredictor(clf).predict(texts) == first


def test_closing_a_stream_stops_its_decoding(tmp_path):
    """The worker thread decoded on to max_new_tokens after the consumer had gone (a client disconnected)."""
    write_tiny_gpt2(tmp_path, seed=1)
    generator = load_text_generator(tmp_path)
    steps, forward = [], generator.model.forward

    def slow_forward(*args, **kwargs):  # 50 steps take over a second: the wait below would see ~25 if not stopped
        steps.append(1)
        time.sleep(0.02)
        return forward(*args, **kwargs)

    generator.model.forward = slow_forward
    options = GenerationOptions(max_new_tokens=50)
    stream = generator.stream("A dog", options)
    next(stream)
    stream.close()
    time.sleep(0.5)  # the worker stops at its next piece
    stopped = len(steps)
    time.sleep(0.3)
    assert len(steps) == stopped < 10
    steps.clear()
    assert "".join(generator.stream("A dog", options)) == generator.generate("A dog", options)


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory):
    tr = load_transcriber(write_hf_checkpoint(tmp_path_factory.mktemp("whisper")))
    tr.options = replace(tr.options, max_new_tokens=8)
    return tr


def test_one_waveforms_transcription_raises_the_models_failure(transcriber, monkeypatch):
    """A single call returned text '' with `error` set (the traceback in the debug log only); files go on."""
    audio = synth_speechlike(1.0, seed=1)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(transcriber.model, "encode", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        transcriber.transcribe(audio)


def test_a_sample_rate_is_not_taken_for_the_name(transcriber):
    with pytest.raises(TypeError, match="name must be a string, got 44100"):
        transcriber.transcribe(synth_speechlike(1.0, seed=1), 44100)  # was transcribed as 16 kHz, named 44100


def test_texts_that_are_not_text_are_one_line(text_models, tmp_path):
    """None, numbers or lone surrogates failed deep in the tokenizer ("TextEncodeInput must be ...", an
    AttributeError); a list given as one prompt likewise."""
    from mmkit.inference.translator import load_translator

    enc = load_encoder(text_models["embed"])
    for call in (lambda t: Embedder(enc).embed(t),
                 lambda t: TextClassifierPredictor(load_encoder(text_models["classify-text"])).predict(t),
                 lambda t: load_translator(text_models["translate"]).translate(t)):
        with pytest.raises(TypeError, match=r"^texts\[1\] must be a string, got NoneType$"):
            call(["a dog", None])
        with pytest.raises(ValueError, match=r"^texts\[0\] is not valid text: a lone surrogate at character 1$"):
            call(["a\ud800b"])
    write_tiny_gpt2(tmp_path, seed=1)
    generator = load_text_generator(tmp_path)
    with pytest.raises(TypeError, match="prompt must be a string"):
        generator.generate(["A dog", "A cat"])
    with pytest.raises(ValueError, match="prompt.* lone surrogate"):
        generator.generate("A \udcff dog")
    with pytest.raises(ValueError, match=r"top-k must be an integer >= 1, got 2.5"):
        fill_mask(enc, "the cat [MASK] the moon.", top_k=2.5)
    with pytest.raises(TypeError, match="text must be a string, got list"):
        fill_mask(enc, ["the cat [MASK] the moon."])


def test_odd_inputs_get_their_own_reason(tmp_path, vit_dir):
    """A 0-pixel image was a ZeroDivisionError; a FIFO was "zero-byte file" (images) or "file not found" (audio);
    big-endian int16 samples were refused as not int16."""
    import os

    from mmkit.audio.io import AudioLoadError, stream_audio
    from mmkit.data.images import ImageLoadError, load_image
    from mmkit.inference.transcriber import mono_waveform

    with pytest.raises(ImageLoadError, match="an empty image"):
        Classifier.from_pretrained(vit_dir).predict_images([Image.new("RGB", (0, 5))])
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path / "pipe.png")
    with pytest.raises(AudioLoadError, match="not a regular file"):
        next(stream_audio(tmp_path / "pipe.png"))
    pcm = (np.sin(np.arange(1600) / 10) * 10_000).astype(np.int16)
    assert np.array_equal(mono_waveform(pcm.astype(">i2"), "x"), mono_waveform(pcm, "x"))
