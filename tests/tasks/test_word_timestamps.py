"""Word timestamps (`DecodingOptions(word_timestamps=True)`, `mmkit transcribe --word-timestamps`) are openai-whisper's
`transcribe(word_timestamps=True)`: on a tiny random openai-format checkpoint imported by mmkit, 70 s of synthetic
audio give openai's segments (moved to their words), words (text, start, end, probability) and seeks, with openai's
default alignment heads and with others set on both sides, for a space language and one split by characters; scripted
windows of real English text reach punctuation merging and the seek to the last word of a truncated window. The
parts (DTW, median filter, word split) are compared with openai's own functions, and importers read the heads."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_transcribe_sequential import EXACT, NO_CHECKS, _openai_model, _ours, _pair, _rows
from whisper_fixtures import synth_speechlike, write_wav

from mmkit.audio import log_mel_spectrogram
from mmkit.cli.transcribe import main
from mmkit.inference import DecodingOptions, Transcriber
from mmkit.inference.sequential import clips_past_end, sequential_transcripts
from mmkit.inference.transcript import Decoded
from mmkit.inference.word_timing import dtw, find_alignment, median_filter, split_to_words
from mmkit.models import Whisper

whisper = pytest.importorskip("whisper")
from whisper.decoding import DecodingResult  # noqa: E402
from whisper.timing import dtw_cpu  # noqa: E402
from whisper.timing import median_filter as openai_median_filter  # noqa: E402
from whisper.tokenizer import get_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

HEADS = [[0, 2], [1, 0], [1, 3]]  # not openai's default (all heads of layer 1)


@pytest.fixture(scope="module")
def seeking(tmp_path_factory):
    """(openai model, its .pt file, the mmkit model imported from it, tokenizer)."""
    return _pair(_openai_model(), tmp_path_factory.mktemp("words") / "seeking.pt")


@pytest.fixture(scope="module")
def audio():
    return synth_speechlike(70, seed=1)


def _with_heads(reference, model, heads):
    """The same models with alignment heads `heads` on both sides (openai's as its sparse mask buffer)."""
    mask = torch.zeros(reference.dims.n_text_layer, reference.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    reference.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    ours = Whisper.build({**model.config, "alignment_heads": heads}).eval()
    ours.load_state_dict(model.state_dict())
    return ours


def _words(segments) -> list[list[tuple]]:
    return [[(w["word"], round(w["start"], 3), round(w["end"], 3)) for w in s["words"]] for s in segments]


def _our_words(transcript) -> list[list[tuple]]:
    return [[(w.word, w.start, w.end) for w in s.words] for s in transcript.segments]


def _check(ours, expected) -> None:
    """openai's segments, text and words: text and times exact (at mmkit's millisecond), probabilities to 1e-4."""
    assert _ours(ours) == _rows(expected["segments"]) and ours.segments
    assert ours.text == expected["text"].strip()
    assert _our_words(ours) == _words(expected["segments"])
    ours_p = [w.probability for s in ours.segments for w in s.words]
    theirs = [w["probability"] for s in expected["segments"] for w in s["words"]]
    assert len(ours_p) > 5 and np.allclose(ours_p, theirs, atol=1e-4, rtol=0)


def _transcribe(model, tok, audio, language, **extra):
    return Transcriber(model, tok, DecodingOptions(
        temperatures=(0.0,), repetition_guard=False, language=language, long_form="sequential",
        **{"word_timestamps": True, **NO_CHECKS, **extra})).transcribe(audio)


@pytest.mark.parametrize("language, heads", [("en", None), (None, HEADS), ("ja", None)],
                         ids=["en-default-heads", "detected-other-heads", "ja-split-by-characters"])
def test_word_timestamps_are_openais(seeking, audio, language, heads):
    reference, _, model, tok = seeking
    if heads is not None:
        model = _with_heads(reference, model, heads)
    try:
        expected = whisper.transcribe(reference, audio, temperature=0.0, language=language, fp16=False,
                                      word_timestamps=True, **NO_CHECKS)
    finally:
        reference.register_buffer("alignment_heads", _with_default_heads(reference), persistent=False)
    ours = _transcribe(model, tok, audio, language)
    _check(ours, expected)
    assert ours.language == expected["language"]
    if heads is None:  # without word timestamps: no "words", and other segment times (the words moved them)
        plain = _transcribe(model, tok, audio, language, word_timestamps=False)
        assert plain.segments[0].words is None and "words" not in plain.to_dict()["segments"][0]
        assert [(s.start, s.end) for s in plain.segments] != [(s.start, s.end) for s in ours.segments]
    else:  # the heads were read: openai's default heads place the same words elsewhere
        mel = log_mel_spectrogram(torch.from_numpy(audio[:30 * 16000]), 80)
        text = tok.encode(" one two three four five six seven eight")
        times = [[(w.start, w.end) for w in find_alignment(m, tok, tok.sot_sequence("en", "transcribe"), text, mel,
                                                           3000, "en")]
                 for m in (model, seeking[2])]
        assert times[0] != times[1] and len(times[0]) == 8


def _with_default_heads(reference):
    mask = torch.zeros(reference.dims.n_text_layer, reference.dims.n_text_head, dtype=torch.bool)
    mask[reference.dims.n_text_layer // 2:] = True
    return mask.to_sparse()


def _scripts(tok) -> list[list[int]]:
    """Window outputs of real English with punctuation (a random model decodes none)."""
    ts, e = tok.timestamp_begin, tok.encode
    return [
        # text after the last pair: dropped, and the next window starts at the last word's end, not at 8.00 s
        [ts, *e(' "Hello, world."'), ts + 150, ts + 150, *e(" (This) is it"), ts + 400, ts + 400, *e(" gone")],
        [ts + 10, *e(" ¿Qué? It's a test!"), ts + 300, *e(" tail, end.")],  # no pair: one segment
        [ts, *e(" More words -here."), ts + 200, ts + 200, *e(" Yes: 'quoted'"), ts + 900],  # single ending
        [*e(" No timestamps at all, here...")],
    ]


def test_punctuation_and_the_seek_to_the_last_word_are_openais(seeking, monkeypatch):
    """Both decoders replaced by the same scripted windows (the alignment pass runs the real models)."""
    reference, _, model, tok = seeking
    audio = synth_speechlike(130, seed=2)
    scripts = _scripts(tok)
    offsets = _script(reference, tok, scripts, monkeypatch)
    expected = whisper.transcribe(reference, audio, language="en", fp16=False, word_timestamps=True)
    ours = _transcribe(model, tok, audio, "en")
    _check(ours, expected)
    words = [w.word for s in ours.segments for w in s.words]
    assert ' "Hello,' in words and " world.\"" in words and " (This)" in words and " ¿Qué?" in words
    last = ours.segments[1].words[-1].end  # the first window's last kept word
    assert offsets[1] == pytest.approx(round(last * 100) / 100) and offsets[1] != 8.0
    assert len(offsets) > len(scripts)  # every script ran


def _script(reference, tok, scripts, monkeypatch) -> list[float]:
    """Both decoders give `scripts` in turn; returns the list our windows' offsets are appended to."""
    theirs, offsets = [], []

    def openai_decode(mel, options):
        theirs.append(None)
        tokens = scripts[(len(theirs) - 1) % len(scripts)]
        return DecodingResult(audio_features=mel, language="en", tokens=tokens, text=tok.decode(tokens),
                              avg_logprob=-0.1, no_speech_prob=0.01, temperature=0.0, compression_ratio=1.0)

    def our_decode(self, context, ws, languages, prefix, max_index, cache=None):
        offsets.append(ws[0].offset)
        tokens = scripts[(len(offsets) - 1) % len(scripts)]
        return [(Decoded(tokens, -0.1 * (len(tokens) + 1), 0.0, False, tok.decode(tokens), -0.1, 1.0), 0.01)]

    monkeypatch.setattr(reference, "decode", openai_decode)
    monkeypatch.setattr(Transcriber, "decode_context", our_decode)
    return offsets


def test_hallucination_silence_skip_is_openais(seeking, monkeypatch):
    """Scripted windows of repeated words (probable) and other text (improbable to a random model: anomalies):
    openai's skips around likely hallucinations, decoding again after the silence."""
    reference, _, model, tok = seeking
    ts, e = tok.timestamp_begin, tok.encode
    offsets = _script(reference, tok, [
        [ts, *e(" organised" * 8), ts + 250, ts + 250, *e(" Hello there, world."), ts + 600, ts + 600,
         *e(" tadi" * 6), ts + 1400, ts + 1400, *e(" gone")],
        [ts + 500, *e(" tadi" * 10), ts + 900, ts + 1000, *e(" organised" * 5), ts + 1450],
    ], monkeypatch)
    audio = synth_speechlike(100, seed=2)
    expected = whisper.transcribe(reference, audio, language="en", fp16=False, word_timestamps=True,
                                  hallucination_silence_threshold=2.0)
    ours = _transcribe(model, tok, audio, "en", hallucination_silence_threshold=2.0)
    _check(ours, expected)
    windows = len(offsets)
    plain = _transcribe(model, tok, audio, "en")
    assert len(plain.segments) > len(ours.segments) and windows > len(offsets) - windows  # skipped, re-decoded


@pytest.mark.parametrize("words, clips, language", [(True, [5.0, 20.0, 40.0], "en"),
                                                    (False, [3.5, 50.0, 55.0, 62.0], None)],
                         ids=["words-open-end", "segments-two-clips-detected"])
def test_clip_timestamps_are_openais(seeking, audio, words, clips, language):
    """Clips, the last one to the audio's end where their count is odd; the language is detected on the file's
    first 30 s (not on the first clip's), as openai's."""
    reference, _, model, tok = seeking
    expected = whisper.transcribe(reference, audio, temperature=0.0, language=language, fp16=False,
                                  word_timestamps=words, clip_timestamps=clips, **NO_CHECKS)
    ours = _transcribe(model, tok, audio, language, word_timestamps=words, clip_timestamps=tuple(clips))
    assert ours.language == expected["language"]
    if words:
        _check(ours, expected)
    else:
        assert _ours(ours) == _rows(expected["segments"]) and ours.text == expected["text"].strip()
    assert ours.segments and ours.segments[0].start >= clips[0]
    assert _ours(ours) != _ours(_transcribe(model, tok, audio, language, word_timestamps=words))


SHORT = 12.3  # seconds of audio: 1230 Mel frames


@pytest.fixture(scope="module")
def short_audio():
    return synth_speechlike(SHORT, seed=3)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_clips_past_the_audios_end_are_named_and_the_others_transcribed_as_before(seeking, short_audio, caplog):
    """A clip that starts at or past the audio's end (seconds typed wrong) is empty: mmkit names those clips in
    one warning and transcribes the others exactly as without them."""
    _, _, model, tok = seeking
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        ours = _transcribe(model, tok, short_audio, "en", clip_timestamps=(2.0, 8.0, 20.0, 30.0, 40.0))
    assert _warnings(caplog) == ["<audio>: clip_timestamps: 2 of 3 clips (20-30 s, from 40 s) start at or past the "
                                 "audio's end (12.3 s): nothing is transcribed there"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        alone = _transcribe(model, tok, short_audio, "en", clip_timestamps=(2.0, 8.0))
    assert not _warnings(caplog)
    assert ours.error is None and ours.segments and ours.duration == SHORT
    assert _ours(ours) == _ours(alone) and _our_words(ours) == _our_words(alone) and ours.text == alone.text


def test_clips_past_the_end_are_counted_in_mel_frames(caplog):
    """A clip holds audio while its first Mel frame (`round(seconds * 100)`, as `seek_clips`) is one of the
    audio's; the whole audio (no clips, or openai's default 0) is never said to be past it."""
    frames = round(SHORT * 100)
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        for clips in ((), (0,), (12.29,), (0.0, 12.294), (12.0, 50.0)):
            assert clips_past_end("a.wav", clips, frames) is None, clips
        assert not _warnings(caplog)
        assert clips_past_end("a.wav", (12.296,), frames) == (
            "clip_timestamps: the clip from 12.296 s starts at or past the audio's end (12.3 s): nothing to transcribe")
        assert clips_past_end("a.wav", (1.0, 2.0, 12.3, 13.0), frames) is None
    assert _warnings(caplog) == ["a.wav: clip_timestamps: 1 of 2 clips (12.3-13 s) starts at or past the audio's "
                                 "end (12.3 s): nothing is transcribed there"]
    assert "(3600 s)" in clips_past_end("a.wav", (4000.0,), 360_000)


def test_a_file_that_no_clip_reaches_fails_alone_in_one_line(seeking, short_audio, caplog):
    """Every clip past the audio's end: the file fails with that error (the run goes on to the next file, which
    the same clips reach), nothing else said; a single waveform's call raises it."""
    _, _, model, tok = seeking
    tr = Transcriber(model, tok, DecodingOptions(temperatures=(0.0,), language="en", long_form="sequential",
                                                 clip_timestamps=(20.0, 30.0, 40.0), **NO_CHECKS))
    error = ("clip_timestamps: every clip (20-30 s, from 40 s) starts at or past the audio's end (12.3 s): "
             "nothing to transcribe")
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        late, reached = sequential_transcripts(tr, [("late.wav", short_audio), ("long.wav", synth_speechlike(45))])
    assert not _warnings(caplog)
    assert late.error == error and late.segments == [] and late.text == "" and late.duration == SHORT
    assert reached.error is None and reached.segments and reached.segments[0].start >= 20.0
    with pytest.raises(ValueError) as raised:
        tr.transcribe(short_audio)
    assert str(raised.value) == error


def test_cli_reports_clips_past_the_end_and_a_file_no_clip_reaches(seeking, short_audio, tmp_path, caplog):
    """The CLI: the warning as the API's, and a file no clip reaches is one error line, not written, exit 1
    (nothing transcribed), as any file that fails."""
    _, pt, model, tok = seeking
    wav = write_wav(tmp_path / "short.wav", short_audio, subtype="FLOAT")
    run = [str(wav), "--model", str(pt), *EXACT, "--long-form", "sequential", "-f", "json", "--clip-timestamps"]
    with caplog.at_level(logging.WARNING):
        assert main([*run, "20,30", "-o", str(tmp_path / "none")]) == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == [
        ("ERROR", f"{wav}: clip_timestamps: the clip 20-30 s starts at or past the audio's end (12.3 s): nothing to "
                  "transcribe"),
        ("WARNING", f"transcribed and wrote 0 of 1 files; failed: {wav}")]
    assert not (tmp_path / "none").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*run, "2,8,20,30", "-o", str(tmp_path / "some")]) == 0
    assert _warnings(caplog) == [f"{wav}: clip_timestamps: 1 of 2 clips (20-30 s) starts at or past the audio's end "
                                 "(12.3 s): nothing is transcribed there"]
    out = json.loads((tmp_path / "some" / "short.json").read_text())
    api = _transcribe(model, tok, short_audio, "en", word_timestamps=False, clip_timestamps=(2.0, 8.0))
    assert out == api.to_dict() | {"file": str(wav)} and out["segments"]


def test_dtw_and_median_filter_are_openais():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (12, 40), (30, 9)]:
        x = rng.normal(size=shape)
        ties = rng.integers(0, 3, size=shape).astype(np.float64)  # many equal paths: openai's tie-break
        for m in (x, ties):
            rows, cols = dtw(m)
            assert np.array_equal(np.stack([rows, cols]), dtw_cpu(m))
    w = torch.randn(3, 5, 40)
    for frames in (2, 3, 4, 40):
        assert torch.equal(median_filter(w[..., :frames], 7), openai_median_filter(w[..., :frames], 7))


@pytest.mark.parametrize("language, text", [
    ("en", ' "Hello, world." It\'s a naïve test -- ok?! (yes) 3.14'),
    ("ja", "こんにちは、世界。テストです！"),
    ("zh", "你好，世界。"),
])
def test_words_are_split_as_openais(seeking, language, text):
    tok = seeking[3]
    ref = get_tokenizer(True, language=language)
    tokens = tok.encode(text) + [tok.eot]
    ours_words, ours_tokens = split_to_words(tok, tokens, language)
    ref_words, ref_tokens = ref.split_to_word_tokens(tokens)
    assert ours_words[:-1] == ref_words[:-1] and ours_tokens == ref_tokens  # the last word: <|endoftext|>


def test_cli_word_timestamps_are_the_api(seeking, tmp_path):
    _, pt, model, tok = seeking
    audio = synth_speechlike(35, seed=4)
    wav = write_wav(tmp_path / "clip.wav", audio, subtype="FLOAT")
    assert main([str(wav), "--model", str(pt), *EXACT, "--long-form", "sequential", "--word-timestamps",
                 "--append-punctuations", ".", "-f", "json", "-o", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "clip.json").read_text())
    api = _transcribe(model, tok, audio, "en", append_punctuations=".")
    assert out == api.to_dict() | {"file": str(wav)}
    assert any(s["words"] for s in out["segments"]) and set(out["segments"][0]) >= {"words", "text"}
    assert main([str(wav), "--model", str(pt), *EXACT, "--long-form", "sequential", "--word-timestamps",
                 "--clip-timestamps", "4,20", "--hallucination-silence-threshold", "2", "-f", "json", "-o",
                 str(tmp_path / "clipped")]) == 0
    out = json.loads((tmp_path / "clipped" / "clip.json").read_text())
    api = _transcribe(model, tok, audio, "en", clip_timestamps=(4.0, 20.0), hallucination_silence_threshold=2.0)
    assert out == api.to_dict() | {"file": str(wav)}


@pytest.mark.parametrize("extra, message", [
    (["--word-timestamps", "--hallucination-silence-threshold", "2"],
     "hallucination_silence_threshold needs long_form='sequential'"),
    (["--clip-timestamps", "1,2"], "clip_timestamps needs long_form='sequential'"),
    (["--long-form", "sequential", "--hallucination-silence-threshold", "2"],
     "hallucination_silence_threshold needs word_timestamps"),
])
def test_options_that_cannot_work_are_one_line(seeking, tmp_path, capsys, extra, message):
    _, pt, _, _ = seeking
    wav = write_wav(tmp_path / "clip.wav", synth_speechlike(1))
    assert main([str(wav), "--model", str(pt), *extra, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_option_values_are_checked():
    with pytest.raises(ValueError, match="hallucination_silence_threshold needs long_form='sequential'"):
        DecodingOptions(word_timestamps=True, hallucination_silence_threshold=2.0)
    with pytest.raises(TypeError, match="prepend_punctuations must be a string"):
        DecodingOptions(long_form="sequential", word_timestamps=True, prepend_punctuations=None)
    with pytest.raises(ValueError, match="clip_timestamps must be seconds >= 0"):
        DecodingOptions(long_form="sequential", clip_timestamps=(1.0, -2.0))
    with pytest.raises(ValueError, match="hallucination_silence_threshold must be seconds >= 0"):
        DecodingOptions(long_form="sequential", word_timestamps=True, hallucination_silence_threshold=float("nan"))
    for spans in ((10.0, 5.0), (5.0, 5.0), (0.0, 20.0, 30.0, 25.0)):  # openai transcribes nothing there, silently
        with pytest.raises(ValueError, match="ends before it starts"):
            DecodingOptions(long_form="sequential", clip_timestamps=spans)
    assert DecodingOptions(clip_timestamps=(0,)).clip_timestamps == (0,)  # openai's default: the whole audio
    with pytest.raises(ValueError, match="clip_timestamps needs long_form='sequential'"):
        DecodingOptions(clip_timestamps=(5.0,))


def test_importers_read_the_alignment_heads(tmp_path):
    from mmkit.cli.bench.transcribe import write_toy_checkpoint

    hf = write_toy_checkpoint(tmp_path / "hf", d_model=32, encoder_layers=1, decoder_layers=2, heads=2,
                              n_text_tokens=300, multilingual=False, n_audio_ctx=50)
    assert Whisper.from_hf(hf).alignment_heads is None  # none named: openai's default
    generation = json.loads((hf / "generation_config.json").read_text())
    (hf / "generation_config.json").write_text(json.dumps({**generation, "alignment_heads": [[1, 1], [0, 0]]}))
    model = Whisper.from_hf(hf)
    assert model.alignment_heads == [[1, 1], [0, 0]]
    model.save_pretrained(tmp_path / "native")
    assert Whisper.from_pretrained(tmp_path / "native").alignment_heads == [[1, 1], [0, 0]]
    ct2 = pytest.importorskip("ctranslate2")
    ct2.converters.TransformersConverter(str(hf)).convert(str(tmp_path / "ct2"), force=True)
    assert Whisper.from_ctranslate2(tmp_path / "ct2").alignment_heads == [[1, 1], [0, 0]]
    (hf / "generation_config.json").write_text(json.dumps({**generation, "alignment_heads": [[2, 0]]}))
    with pytest.raises(Exception, match="alignment_heads' must be \\[layer, head\\] pairs within the 2 decoder"):
        Whisper.from_hf(hf)
    with pytest.raises(ValueError, match="alignment_heads must be"):
        Whisper(n_audio_ctx=50, n_text_ctx=16, vocab_size=100, dim=32, encoder_depth=1, decoder_depth=2,
                num_heads=2, alignment_heads=[[0, 2]])
