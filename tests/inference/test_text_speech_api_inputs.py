"""What the text and speech inference classes take (API audit s13, findings 2, 3, 4, 9 and 11): a lone str (or
path) where a list is expected is one item, not one per character; `Transcriber.transcribe` reads int16/int32/
uint8 PCM, tensors and lists as the float waveform they stand for and refuses stereo, batched and non-finite
audio in one line; a Whisper cast to float64 or bf16 transcribes as the fp32 one; the options dataclasses refuse
wrong types and the early_stopping values a translation cannot run, at construction. Models are tiny and random:
the tests compare tokens, not words."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from _bert import write_tiny_bert
from _gpt import write_tiny_gpt2

from mmkit.audio import SAMPLE_RATE, AudioLoadError
from mmkit.core import GenerationOptions
from mmkit.inference.embed import Embedder
from mmkit.inference.encoder import load_encoder
from mmkit.inference.text_classify import TextClassifierPredictor
from mmkit.inference.text_generation import load_text_generator
from mmkit.inference.transcriber import Transcriber, load_transcriber
from mmkit.inference.transcript import DecodingOptions, Transcript
from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator
from tests.inference._translation_fixtures import write_native_export
from tests.tasks.whisper_fixtures import synth_speechlike, write_hf_checkpoint


def _tokens(t: Transcript) -> list[list[int]]:
    assert t.error is None, t.error
    return [s.tokens for s in t.segments]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Transcriber, np.ndarray, Transcript]:
    """(greedy transcriber, 16 tokens a window, over the tiny random Whisper of the transcription tests, whose
    tokens follow its input; 2 s of speech-like tones; their transcript)."""
    tr = load_transcriber(write_hf_checkpoint(tmp_path_factory.mktemp("whisper")))
    tr.options = replace(tr.options, max_new_tokens=16, language="en")  # the bf16 check compares English tokens
    audio = synth_speechlike(2.0, seed=1)
    return tr, audio, tr.transcribe(audio)


# --- finding 2: a lone str or path is one item ---------------------------------------------------------------

def test_transcribe_files_takes_one_path_as_one_file(speech, tmp_path):
    tr, audio, expected = speech
    wav = tmp_path / "talk.wav"
    sf.write(str(wav), audio, SAMPLE_RATE, subtype="FLOAT")  # the same samples
    for one in (str(wav), wav):  # was: one transcript per character of the str; a Path is not iterable
        got = list(tr.transcribe_files(one))
        assert [t.path for t in got] == [str(wav)] and _tokens(got[0]) == _tokens(expected)


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    write_tiny_bert(d, "classify")
    return load_encoder(d)


def test_embed_and_classify_take_one_text_as_one_row(bert_classifier):
    text = "the cat sees the moon."
    vectors = Embedder(bert_classifier).embed(text)  # was: one row per character
    assert vectors.shape == (1, bert_classifier.model.config["dim"])
    np.testing.assert_array_equal(vectors, Embedder(bert_classifier).embed([text]))
    predictor = TextClassifierPredictor(bert_classifier)
    assert predictor.predict(text) == predictor.predict([text]) and len(predictor.predict(text)) == 1


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    return load_translator(write_native_export(tmp_path_factory.mktemp("translator")))


def test_translate_takes_one_text_as_one_translation(translator):
    got = translator.translate("twenty one")  # was: one Translation per character
    assert [t.source for t in got] == ["twenty one"]
    assert [t.tokens for t in got] == [t.tokens for t in translator.translate(["twenty one"])]


def test_a_stop_string_is_one_string_not_its_characters(tmp_path):
    write_tiny_gpt2(tmp_path)
    gen = load_text_generator(tmp_path)
    options = GenerationOptions(max_new_tokens=12)
    full = gen.generate("the cat sees", options)
    assert len(full) > 2, full
    # a stop string whose first character is in the text but which never occurs: nothing is cut (a str used to
    # be iterated as stop strings 'x', 'Q', 'Q', 'Q', so the text stopped at the first 'x')
    stop = full[1] + "\x00QQQ"
    assert gen.generate("the cat sees", options, stop=stop) == full
    assert "".join(gen.stream("the cat sees", options, stop=stop)) == full
    # and one that occurs cuts there, as a list of one does
    stop = full[1:3]
    assert gen.generate("the cat sees", options, stop=stop) == gen.generate("the cat sees", options, [stop]) \
        == full[: full.find(stop)]


# --- finding 3: the waveforms `transcribe` takes -------------------------------------------------------------

@pytest.mark.parametrize("dtype, to_float", [
    (np.int16, lambda x: x.astype(np.float32) / 32768),
    (np.int32, lambda x: x.astype(np.float32) / 2 ** 31),
    (np.uint8, lambda x: (x.astype(np.float32) - 128) / 128),
])
def test_integer_pcm_is_scaled_to_full_scale(speech, dtype, to_float):
    tr, audio, _ = speech
    info = np.iinfo(dtype)
    pcm = np.clip(np.round(audio * (info.max - info.min) / 2 + (info.max + info.min + 1) / 2), info.min,
                  info.max).astype(dtype)
    expected = _tokens(tr.transcribe(to_float(pcm)))
    assert _tokens(tr.transcribe(pcm)) == expected  # was: the integers read as floats, 32767 times full scale
    if dtype == np.int16:  # which gives other tokens: the test can tell the two apart
        assert _tokens(tr.transcribe(pcm.astype(np.float32))) != expected


def test_tensors_and_lists_are_waveforms(speech):
    tr, audio, expected = speech
    # were: a TypeError (len() of a 0-d tensor), and a stream of one-sample blocks
    assert _tokens(tr.transcribe(torch.from_numpy(audio))) == _tokens(expected)
    assert _tokens(tr.transcribe(audio.tolist())) == _tokens(expected)


@pytest.mark.parametrize("layout, axis", [(lambda a: np.stack([a, a], 1), 1), (lambda a: np.stack([a, a]), 0),
                                          (lambda a: torch.from_numpy(a)[None], 0)])
def test_stereo_or_batched_audio_is_refused_with_its_downmix(speech, layout, axis):
    tr, audio, _ = speech
    with pytest.raises(ValueError, match=rf"mono \(N,\) waveform; got shape .*audio\.mean\(axis={axis}\)"):
        tr.transcribe(layout(audio))  # was: an 86 GiB allocation, or an error Transcript


@pytest.mark.parametrize("samples, reason", [
    (np.full(16000, np.nan, np.float32), "16000 non-finite"),
    (np.r_[np.zeros(100, np.float32), np.inf], "1 non-finite"),
    (np.full(16000, 1e13), "samples reach 1e\\+13, far beyond full scale"),
])
def test_non_finite_or_unscaled_samples_are_refused(speech, samples, reason):
    tr = speech[0]
    with pytest.raises(AudioLoadError, match=f"clip: {reason}"):
        tr.transcribe(samples, name="clip")  # was: text '!!!!'


@pytest.mark.parametrize("audio, error, message", [
    (np.zeros(16000, np.int64), TypeError, "samples of dtype int64: give float samples"),
    (np.zeros(16000, bool), TypeError, "samples of dtype bool"),
    ("talk.wav", TypeError, "expected a waveform .*, got str"),
    (np.zeros(()), ValueError, r"expected a mono \(N,\) waveform; got shape \(\)$"),
])
def test_other_inputs_are_one_line_errors(speech, audio, error, message):
    with pytest.raises(error, match=message):
        speech[0].transcribe(audio)


# --- finding 4: a model cast to another dtype --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_cast_whisper_transcribes_as_the_fp32_one(speech, dtype):
    tr, audio, expected = speech
    cast = Transcriber(copy.deepcopy(tr.model).to(dtype), tr.tokenizer, tr.options)
    got = cast.transcribe(audio)  # was: error 'decoding failed (RuntimeError: Input type (float) and bias ...'
    assert got.error is None and got.text
    if dtype == torch.float64:
        assert _tokens(got) == _tokens(expected) and got.text == expected.text
    else:  # bf16 keeps 8 bits of mantissa: the first tokens agree (all 16 on the machine that wrote this)
        assert [t[:6] for t in _tokens(got)] == [t[:6] for t in _tokens(expected)]


# --- findings 9 and 11: options refused at construction -----------------------------------------------------

@pytest.mark.parametrize("value", [None, "x", 1, 0, "True"])
def test_translation_early_stopping_is_what_translate_can_run(value):
    with pytest.raises(TranslatorError, match=r"early_stopping must be True, False or 'never', got"):
        TranslationOptions(beam_size=2, early_stopping=value)  # None was accepted, then failed in translate


@pytest.mark.parametrize("value", [True, False, "never"])
def test_translation_early_stopping_values_run(translator, value):
    options = TranslationOptions(beam_size=2, early_stopping=value)
    assert [t.error for t in translator.translate(["twenty one", "three"], options)] == [None, None]


@pytest.mark.parametrize("field, value", [("batch_size", "2"), ("beam_size", 2.0), ("beam_size", True),
                                          ("max_new_tokens", 2.5), ("length_offset", "10"), ("length_ratio", "2"),
                                          ("length_penalty", None)])
def test_translation_options_refuse_wrong_types(field, value):
    with pytest.raises(TypeError, match=rf"TranslationOptions: {field} must be"):
        TranslationOptions(**{field: value})


@pytest.mark.parametrize("field, value", [("beam_size", "3"), ("beam_size", 2.0), ("best_of", True),
                                          ("max_new_tokens", 2.5), ("seed", "x"), ("audio_context", "10"),
                                          ("no_speech_threshold", "0.6"), ("temperatures", 0.5),
                                          ("temperatures", ("0.0",))])
def test_decoding_options_refuse_wrong_types(field, value):
    with pytest.raises(TypeError, match=rf"DecodingOptions: {field} must be"):
        DecodingOptions(**{field: value})


def test_options_keep_their_valid_values():
    assert DecodingOptions(max_new_tokens=None, no_speech_threshold=None, audio_context=None, beam_size=np.int64(2),
                           temperatures=[0, 0.5], seed=2 ** 64 - 1).beam_size == 2
    assert TranslationOptions(max_new_tokens=None, length_ratio=1, length_penalty=-0.5).limit(4, 100) == 14


def test_fallback_seeds_wrap_past_the_largest_seed():
    """Attempt k samples with seed + k; the largest seed, 2**64 - 1, wraps to 0 rather than failing the
    fallback attempt with 'seed must be in [0, 2**64 - 1]'."""
    from mmkit.inference.transcript import DecodingOptions

    options = DecodingOptions(seed=2**64 - 1, temperatures=(0.0, 0.2, 0.4))
    assert [options.generation(k, 8).seed for k in range(3)] == [2**64 - 1, 0, 1]
