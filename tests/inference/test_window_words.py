"""Word timestamps in the default `long_form="windows"`: one window of 30 s gives the words (and the segments they
move) of openai's `transcribe(word_timestamps=True)` and of mmkit's sequential long form, on a tiny random
openai-format checkpoint with scripted window text (punctuation, three segments); the batched alignment pass equals
one window at a time, and files of different lengths transcribed in one batch get the words each gets alone
(increasing, within the file; with and without `audio_context`); the CLI writes them; the options that move seeks
stay sequential-only."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))  # the sequential tests' models, as there
from test_transcribe_sequential import EXACT, NO_CHECKS, _openai_model, _pair  # noqa: E402
from whisper_fixtures import synth_speechlike, write_wav  # noqa: E402

from mmkit.audio import log_mel_spectrogram  # noqa: E402
from mmkit.cli.transcribe import main  # noqa: E402
from mmkit.core import KVCache  # noqa: E402
from mmkit.data.char_tokenizer import CharTokenizer  # noqa: E402
from mmkit.inference import DecodingOptions, Transcriber  # noqa: E402
from mmkit.inference.transcript import Decoded  # noqa: E402
from mmkit.inference.window_decoder import WindowDecoder  # noqa: E402
from mmkit.inference.word_timing import align_windows  # noqa: E402
from mmkit.models import Whisper  # noqa: E402

whisper = pytest.importorskip("whisper")
from whisper.decoding import DecodingResult  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/inference/conftest.py)


@pytest.fixture(scope="module")
def seeking(tmp_path_factory):
    """(openai model, its .pt file, the mmkit model imported from it, tokenizer)."""
    return _pair(_openai_model(), tmp_path_factory.mktemp("window-words") / "seeking.pt")


@pytest.fixture(scope="module")
def wordy(tmp_path_factory):
    """The same with milder timestamp and <|endoftext|> logits: windows of several words (18 in 45 s of audio)."""
    return _pair(_openai_model(2.0, 3.0), tmp_path_factory.mktemp("window-words") / "wordy.pt")


def _options(**extra) -> DecodingOptions:
    return DecodingOptions(**{"temperatures": (0.0,), "repetition_guard": False, "language": "en",
                              "word_timestamps": True, **NO_CHECKS, **extra})


def _full(transcript) -> list[tuple]:
    """Segments with their words (text, start, end), times exact; probabilities apart."""
    return [(s.start, s.end, s.text, s.tokens, [(w.word, w.start, w.end) for w in s.words or ()])
            for s in transcript.segments]


def _probabilities(transcript) -> list[float]:
    return [w.probability for s in transcript.segments for w in s.words]


def _scripted(reference, tok, tokens, monkeypatch) -> None:
    """openai's decoder and mmkit's window decoder (both long forms) give `tokens` for every window; the
    alignment pass runs the real models."""
    def openai_decode(mel, options):
        return DecodingResult(audio_features=mel, language="en", tokens=list(tokens), text=tok.decode(tokens),
                              avg_logprob=-0.1, no_speech_prob=0.01, temperature=0.0, compression_ratio=1.0)

    def our_decode(self, context, cache, prompts, max_index, no_speech, audios):
        return [Decoded(list(tokens), -0.1 * (len(tokens) + 1), 0.0, False, tok.decode(tokens), -0.1, 1.0)
                for _ in audios]

    monkeypatch.setattr(reference, "decode", openai_decode)
    monkeypatch.setattr(WindowDecoder, "decode", our_decode)


@pytest.mark.parametrize("n", [1, 2], ids=["30s", "60s"])
def test_windows_of_30s_give_openais_and_sequential_words(seeking, monkeypatch, n):
    """Windows of 30 s whose first and last second are digital silence, the same audio in each: both long forms
    then compute the same features (openai slices a window's features from the whole file's and pads a shorter
    one's with zeros, the windows long form computes them from the window's audio alone), and each window ends with
    a single timestamp, so that sequential starts the next one 30 s on, as the windows long form. Text with
    punctuation (a random model decodes none): merged as openai's; segment boundaries moved to the words; the
    second window's words placed after the first one's last word, in one batch or in two."""
    reference, _, model, tok = seeking
    ts, e = tok.timestamp_begin, tok.encode
    tokens = [ts, *e(' "Hello, world."'), ts + 150, ts + 150, *e(" (This) is it, ok?"), ts + 400, ts + 400,
              *e(" More words -here."), ts + 1400]
    _scripted(reference, tok, tokens, monkeypatch)
    carried = _spy_last_speech(monkeypatch)
    window = synth_speechlike(30, seed=5)
    window[:16000] = window[-16000:] = 0
    audio = np.tile(window, n)
    sequential = Transcriber(model, tok, _options(long_form="sequential")).transcribe(audio)
    openais, carried[:] = list(carried), []
    assert len(openais) == n and openais[0] == 0.0 and (n == 1 or openais[1] > 20)  # the first window's last word
    expected = whisper.transcribe(reference, audio, language="en", fp16=False, word_timestamps=True)
    theirs = [(round(s["start"], 3), round(s["end"], 3), s["text"], s["tokens"],
               [(w["word"], round(w["start"], 3), round(w["end"], 3)) for w in s["words"]])
              for s in expected["segments"]]
    assert _full(sequential) == theirs and len(theirs) == 3 * n
    for batch_size in (1, 8):
        windows = Transcriber(model, tok, _options(), batch_size=batch_size).transcribe(audio)
        assert _full(windows) == _full(sequential) and windows.text == sequential.text
        assert np.allclose(_probabilities(windows), _probabilities(sequential), atol=1e-6, rtol=0)
        assert carried == openais
        carried.clear()
    assert np.allclose(_probabilities(windows), [w["probability"] for s in expected["segments"] for w in s["words"]],
                       atol=1e-4, rtol=0)
    words = [w.word for s in windows.segments for w in s.words]
    assert ' "Hello,' in words and ' world."' in words and " (This)" in words and " ok?" in words
    plain = Transcriber(model, tok, _options(word_timestamps=False)).transcribe(audio)
    # the random model's attention puts the last segment's words at 29.98 s: instantaneous, so cleared, as openai's
    assert windows.segments[2].start == windows.segments[2].end and windows.segments[2].tokens == []
    assert [s.tokens for s in plain.segments[:2]] == [s.tokens for s in windows.segments[:2]]
    assert [(s.start, s.end) for s in plain.segments] != [(s.start, s.end) for s in windows.segments]


def _spy_last_speech(monkeypatch) -> list[float]:
    """The `last_speech_timestamp` each window's word placement gets, in both long forms."""
    from mmkit.inference import sequential, transcriber

    seen: list[float] = []
    for module in (sequential, transcriber):
        def spy(segments, alignment, eot, offset, last_speech, *rest, place=module.add_word_timestamps):
            seen.append(last_speech)
            return place(segments, alignment, eot, offset, last_speech, *rest)

        monkeypatch.setattr(module, "add_word_timestamps", spy)
    return seen


def _same_words(a: list[list], b: list[list]) -> bool:
    return ([[(w.word, w.tokens, w.start, w.end) for w in ws] for ws in a]
            == [[(w.word, w.tokens, w.start, w.end) for w in ws] for ws in b]
            and np.allclose([w.probability for ws in a for w in ws], [w.probability for ws in b for w in ws],
                            atol=1e-6, rtol=0))


def test_alignment_batch_equals_one_window_at_a_time(seeking):
    """Texts of different lengths (right-padded in the batch) and an empty one, in one decoder pass; with the
    cross-attention keys/values decoding cached, and over a shorter encoder context (`audio_context`)."""
    _, _, model, tok = seeking
    audio = torch.from_numpy(np.stack([synth_speechlike(30, seed=s) for s in (6, 7, 8, 9)]))
    mel = log_mel_spectrogram(audio, n_mels=80)
    texts = [tok.encode(" one two three four five six seven"), tok.encode(" yes, ok."), [],
             tok.encode(" a much longer text: it runs on, and on, for quite a few more words than the rest.")]
    sot = tok.sot_sequence("en", "transcribe")
    frames = [3000, 1200, 3000, 2111]
    with torch.no_grad():
        context = model.encode(mel)  # (4, 1500, 64)
        cache = KVCache()
        model(torch.tensor([[tok.sot]] * 4), context, cache)  # decoding's first pass: the keys/values, a prefix
    batch = align_windows(model, tok, [sot] * 4, texts, context, frames, ["en"] * 4)
    alone = [align_windows(model, tok, [sot], [t], context[b: b + 1], [frames[b]], ["en"])[0]
             for b, t in enumerate(texts)]
    assert _same_words(batch, alone)
    assert _same_words(align_windows(model, tok, [sot] * 4, texts, context, frames, ["en"] * 4, cache=cache), alone)
    assert batch[2] == [] and len(batch[0]) == 7 and max(w.end for w in batch[1]) <= 1200 / 100
    with torch.no_grad():
        short = model.encode(mel[:2, :, :1200], partial=True)  # (2, 600, 64): 12 s of audio
    batch = align_windows(model, tok, [sot] * 2, texts[:2], short, [1200, 1000], ["en"] * 2)
    alone = [align_windows(model, tok, [sot], [t], short[b: b + 1], [f], ["en"])[0]
             for b, (t, f) in enumerate(zip(texts[:2], [1200, 1000]))]
    assert _same_words(batch, alone) and len(batch[0]) == 7 and max(w.end for w in batch[1]) <= 10


LENGTHS = (12, 45, 70, 33)  # seconds: 1, 2, 3 and 2 windows


@pytest.mark.parametrize("audio_context, language", [(None, "en"), (10.0, None)], ids=["exact-en", "context-detected"])
def test_batched_files_get_their_words_alone(wordy, tmp_path, audio_context, language):
    """Four files, 8 windows, in batches of 4 (the 70-s file's windows in two batches: its words carry the last word
    end across them), against each file alone one window at a time."""
    _, _, model, tok = wordy
    files = [write_wav(tmp_path / f"{i}.wav", synth_speechlike(s, seed=i), subtype="FLOAT")
             for i, s in enumerate(LENGTHS)]
    options = _options(audio_context=audio_context, language=language)
    together = list(Transcriber(model, tok, options, batch_size=4).transcribe_files(files))
    alone = [next(Transcriber(model, tok, options, batch_size=1).transcribe_files([f])) for f in files]
    assert [_full(t) for t in together] == [_full(t) for t in alone]
    assert np.allclose(sum(map(_probabilities, together), []), sum(map(_probabilities, alone), []), atol=1e-6, rtol=0)
    assert sum(len(_probabilities(t)) for t in together) > 30
    plain = list(Transcriber(model, tok, _options(audio_context=audio_context, language=language,
                                                  word_timestamps=False), batch_size=4).transcribe_files(files))
    for t, p, seconds in zip(together, plain, LENGTHS):
        assert t.error is None and t.duration == seconds and t.text == p.text
        assert [s.tokens for s in t.segments] == [s.tokens for s in p.segments]
        times = [x for s in t.segments for w in s.words for x in (w.start, w.end)]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= seconds
        for s in t.segments:
            assert "".join(w.word for w in s.words) == s.text  # every token in a word, punctuation merged
            if s.words:
                assert s.start <= s.words[0].start and s.words[-1].end <= s.end + 1e-9


def test_cli_writes_windows_words(wordy, tmp_path):
    _, pt, model, tok = wordy
    audio = synth_speechlike(45, seed=1)
    wav = write_wav(tmp_path / "clip.wav", audio, subtype="FLOAT")
    assert main([str(wav), "--model", str(pt), *EXACT, "--word-timestamps", "--append-punctuations", ".", "-f",
                 "json", "-o", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "clip.json").read_text())
    api = Transcriber(model, tok, _options(append_punctuations=".")).transcribe(audio)
    assert out == api.to_dict() | {"file": str(wav)}
    assert sum(len(s["words"]) for s in out["segments"]) > 5
    assert set(out["segments"][0]["words"][0]) == {"word", "start", "end", "probability"}


@pytest.mark.parametrize("extra, message", [
    (["--clip-timestamps", "1,2"], "clip_timestamps needs long_form='sequential'"),
    (["--word-timestamps", "--hallucination-silence-threshold", "2"],
     "hallucination_silence_threshold needs long_form='sequential'"),
])
def test_options_that_move_seeks_stay_sequential(seeking, tmp_path, capsys, extra, message):
    _, pt, _, _ = seeking
    wav = write_wav(tmp_path / "clip.wav", synth_speechlike(1))
    assert main([str(wav), "--model", str(pt), *extra, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_word_timestamps_need_timestamp_tokens():
    assert DecodingOptions(word_timestamps=True).long_form == "windows"
    with pytest.raises(ValueError, match="hallucination_silence_threshold needs long_form='sequential'"):
        DecodingOptions(word_timestamps=True, hallucination_silence_threshold=1.0)
    tok = CharTokenizer.build(["hello world"])
    model = Whisper(n_audio_ctx=50, n_text_ctx=16, vocab_size=tok.vocab_size, dim=32, encoder_depth=1,
                    decoder_depth=1, num_heads=2)
    with pytest.raises(ValueError, match="word_timestamps needs a Whisper tokenizer"):
        Transcriber(model, tok, DecodingOptions(word_timestamps=True))
