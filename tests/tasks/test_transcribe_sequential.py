"""`long_form="sequential"` is openai-whisper's `transcribe()`: on a tiny random openai-format checkpoint imported
by mmkit, 70 s of synthetic audio give openai's segments (start, end, text, tokens), text and language, greedy and
beam 5, with and without the previous text and an initial prompt, with and without timestamps; the spies assert
that windows started at a timestamp short of 30 s (seek) and were prompted with the previous windows' tokens."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from whisper_fixtures import synth_speechlike, write_wav

from mmkit.cli.transcribe import main
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.inference import DecodingOptions, Transcriber, load_speech_model
from mmkit.inference.transcript import Decoded, is_silence
from mmkit.models import Whisper

whisper = pytest.importorskip("whisper")
from whisper.decoding import DecodingResult  # noqa: E402
from whisper.model import ModelDimensions  # noqa: E402
from whisper.tokenizer import get_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "Glossary: mmkit, Whisper, tiktoken, CTranslate2, faster-whisper; names are spelled as written here."
NO_CHECKS = dict(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)


def _openai_model(timestamp_scale: float = 3.0, eot_scale: float = 5.0,
                  no_speech_scale: float = 1.0) -> whisper.model.Whisper:
    """Tiny random openai-whisper model (30 s windows, n_text_ctx 64: prompts of 31 tokens, and a long prompt
    leaves fewer than 32 tokens to decode) whose timestamp and <|endoftext|> logits are scaled up, so that windows
    hold several timestamped segments and end early (a random model's run to the token limit without any)."""
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims)
    ref = get_tokenizer(True)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.2)  # torch.empty in openai's code
        model.decoder.token_embedding.weight.normal_(0, 0.5)  # peaked logits: no near-ties in argmax
        model.decoder.token_embedding.weight[ref.timestamp_begin:] *= timestamp_scale
        model.decoder.token_embedding.weight[ref.eot] *= eot_scale
        model.decoder.token_embedding.weight[ref.no_speech] *= no_speech_scale
    return model.eval()


def _pair(model: whisper.model.Whisper, path: Path):
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)  # as openai's files
    return model, path, *load_speech_model(path)


@pytest.fixture(scope="module")
def seeking(tmp_path_factory):
    """(openai model, its .pt file, the mmkit model imported from it, tokenizer)."""
    return _pair(_openai_model(), tmp_path_factory.mktemp("sequential") / "seeking.pt")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same without scaled logits: text without timestamp tokens, every window to the token limit (the
    scaled model emits timestamp tokens even with <|notimestamps|>, and openai then seeks on them)."""
    return _pair(_openai_model(1.0, 1.0), tmp_path_factory.mktemp("sequential") / "plain.pt")


@pytest.fixture(scope="module")
def audio():
    return synth_speechlike(70, seed=1)


@pytest.fixture
def windows(monkeypatch):
    """Every window `Transcriber.decode_context` decodes: (offset in seconds, prompt prefix, decoded tokens,
    silent)."""
    seen: list[tuple[float, list[int], list[int], bool]] = []
    decode_context = Transcriber.decode_context

    def spy(self, context, ws, languages, prefixes, max_index, cache=None):
        out = decode_context(self, context, ws, languages, prefixes, max_index, cache)
        seen.extend((w.offset, list(f), d.tokens, is_silence(self.options, d, p))
                    for w, f, (d, p) in zip(ws, prefixes, out))
        return out

    monkeypatch.setattr(Transcriber, "decode_context", spy)
    return seen


def _rows(segments) -> list[tuple]:
    return [(round(s["start"], 3), round(s["end"], 3), s["text"], s["tokens"]) for s in segments]


def _ours(transcript) -> list[tuple]:
    return [(s.start, s.end, s.text, s.tokens) for s in transcript.segments]


def _contains(tokens: list[int], part: list[int]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


CASES = {  # id: (beam size, condition_on_previous_text, initial prompt, language, without timestamps)
    "greedy-previous-detect": (1, True, None, None, False),
    "greedy-independent": (1, False, None, "en", False),
    "greedy-prompt-previous": (1, True, PROMPT, None, False),
    "greedy-prompt-independent": (1, False, PROMPT, "en", False),
    "greedy-notimestamps": (1, True, None, "en", True),
    "beam5-previous": (5, True, None, "en", False),
    "beam5-prompt-previous": (5, True, PROMPT, None, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sequential_is_openais_transcribe(request, audio, windows, case):
    beam, previous, prompt, language, no_ts = CASES[case]
    reference, _, model, tok = request.getfixturevalue("plain" if no_ts else "seeking")
    expected = whisper.transcribe(reference, audio, temperature=0.0, condition_on_previous_text=previous,
                                  initial_prompt=prompt, language=language, without_timestamps=no_ts, fp16=False,
                                  beam_size=beam if beam > 1 else None, **NO_CHECKS)
    ours = Transcriber(model, tok, DecodingOptions(
        temperatures=(0.0,), beam_size=beam, condition_on_previous_text=previous, initial_prompt=prompt,
        language=language, without_timestamps=no_ts, repetition_guard=False, long_form="sequential",
        **NO_CHECKS)).transcribe(audio)
    assert _ours(ours) == _rows(expected["segments"]) and ours.segments
    assert ours.text == expected["text"].strip() and ours.text
    assert ours.language == expected["language"]
    offsets = [w[0] for w in windows]
    assert {round(s["seek"] * 0.01, 3) for s in expected["segments"]} <= set(offsets)  # the same windows
    keep = model.n_text_ctx // 2 - 1
    initial = tok.encode(" " + prompt.strip())[-keep:] if prompt else []
    assert windows[0][1] == ([tok.sot_prev, *initial] if prompt else [])
    later = [w[1] for w in windows[1:]]
    if no_ts:  # openai seeks by whole windows when no timestamp token was decoded
        assert offsets == [0.0, 30.0, 60.0]
    else:  # a window ended at a timestamp short of its 30 s, and the next began there
        assert any(round(b - a, 3) < 30 for a, b in zip(offsets, offsets[1:]))
    if previous:  # later windows read the previous windows' tokens (after the initial prompt's, while it fits)
        flat = initial + [t for s in ours.segments for t in s.tokens]
        assert later and all(p[0] == tok.sot_prev and len(p) > 1 and _contains(flat, p[1:]) for p in later)
        assert any(p[1:] != initial for p in later)  # not the initial prompt alone: text decoded since
    else:
        assert later and all(p == [] for p in later)


def test_default_ladder_skips_silent_windows_as_openai(tmp_path, audio, windows):
    """openai's default temperature ladder, logprob and no-speech checks (the compression check off: random text
    repeats, and sampled fallbacks draw from openai's global generator): the windows judged silent are skipped whole."""
    reference, _, model, tok = _pair(_openai_model(no_speech_scale=8.0), tmp_path / "silent.pt")
    checks = dict(compression_ratio_threshold=None, logprob_threshold=-0.45, no_speech_threshold=0.6)
    expected = whisper.transcribe(reference, audio, language="en", fp16=False, **checks)
    ours = Transcriber(model, tok, DecodingOptions(language="en", repetition_guard=False, long_form="sequential",
                                                   **checks)).transcribe(audio)
    assert DecodingOptions().temperatures == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the ladder is openai's default
    assert _ours(ours) == _rows(expected["segments"]) and ours.segments
    assert ours.text == expected["text"].strip()
    skipped = [w for w in windows if w[3]]
    assert skipped and len(skipped) < len(windows)  # some windows decoded, some skipped
    offsets = [w[0] for w in windows]
    for (offset, _, _, silent), after in zip(windows, offsets[1:]):
        if silent:  # a skipped window moves on by its whole length
            assert after == pytest.approx(offset + 30)


def test_a_window_decoded_hot_resets_the_prompt_as_openai(seeking, audio, windows, monkeypatch):
    """Above temperature 0.5 the text is not worth conditioning on: the next window's prompt starts afresh. The
    first window is reported as decoded at 0.8 on both sides (a real fallback samples from openai's global
    generator, which no other decoder can reproduce)."""
    reference, _, model, tok = seeking
    prompts = []
    decode = reference.decode

    def hot_first(mel, options):
        prompts.append(list(options.prompt))
        result = decode(mel, options)
        return replace(result, temperature=0.8) if len(prompts) == 1 else result

    monkeypatch.setattr(reference, "decode", hot_first)
    decode_context = Transcriber.decode_context  # the spy

    def hot_first_ours(self, context, ws, languages, prefix, max_index, cache=None):
        out = decode_context(self, context, ws, languages, prefix, max_index, cache)
        return [(replace(d, temperature=0.8), p) for d, p in out] if len(windows) == 1 else out

    monkeypatch.setattr(Transcriber, "decode_context", hot_first_ours)
    expected = whisper.transcribe(reference, audio, temperature=0.0, language="en", fp16=False, **NO_CHECKS)
    ours = Transcriber(model, tok, DecodingOptions(temperatures=(0.0,), repetition_guard=False, language="en",
                                                   long_form="sequential", **NO_CHECKS)).transcribe(audio)
    assert _ours(ours) == _rows(expected["segments"]) and ours.text == expected["text"].strip()
    assert [s.temperature for s in ours.segments] == [s["temperature"] for s in expected["segments"]]
    assert ours.segments[0].temperature == 0.8 and ours.segments[-1].temperature == 0.0
    assert prompts[1] == [] and windows[1][1] == []  # reset after the hot window ...
    assert len(windows) > 2 and windows[2][1] and prompts[2]  # ... and the next one conditions again


def _scripts(tok) -> list[list[int]]:
    """Window outputs that reach every branch of openai's split and seek (a random model reaches few of them)."""
    ts, hello, world = tok.timestamp_begin, tok.encode(" hello"), tok.encode(" world")
    return [
        [ts, *hello, ts + 40, ts + 40, *world],  # text after the last pair: dropped, on from 0.80 s
        [ts + 20, *tok.encode(" "), ts + 30, ts + 30, *hello, ts + 35, ts + 35],  # a blank segment, emptied
        [ts + 9, *hello, ts + 9, ts + 9],  # a zero-length segment with text (start = end), emptied
        [ts, *hello, ts + 50, ts + 50, *world, ts + 100],  # pairs and a single final timestamp: on by the window
        [ts + 10, *hello, ts + 60],  # no pair: one segment to its last timestamp, on by the window
        [*hello, *world],  # no timestamp: the whole window
        [],  # nothing: one empty segment
        [*hello, ts],  # a lone <|0.00|>: the whole window
    ]


def test_every_split_and_seek_branch_is_openais(seeking, monkeypatch):
    """Both decoders replaced by the same scripted window outputs: the segments, the text, the seeks and every
    window's prompt are openai's."""
    reference, _, model, tok = seeking
    audio = np.zeros(250 * 16000, np.float32)  # long enough for every script, twice for some
    scripts, theirs, ours_prompts = _scripts(tok), [], []

    def openai_decode(mel, options):
        theirs.append(list(options.prompt))
        tokens = scripts[(len(theirs) - 1) % len(scripts)]
        return DecodingResult(audio_features=mel, language="en", tokens=tokens, text=tok.decode(tokens),
                              avg_logprob=-0.1, no_speech_prob=0.01, temperature=0.0, compression_ratio=1.0)

    def our_decode(self, context, ws, languages, prefixes, max_index, cache=None):
        (prefix,) = prefixes  # one window at a time: one file
        ours_prompts.append(list(prefix))
        tokens = scripts[(len(ours_prompts) - 1) % len(scripts)]
        return [(Decoded(tokens, -0.1 * (len(tokens) + 1), 0.0, False, tok.decode(tokens), -0.1, 1.0), 0.01)]

    monkeypatch.setattr(reference, "decode", openai_decode)
    monkeypatch.setattr(Transcriber, "decode_context", our_decode)
    expected = whisper.transcribe(reference, audio, language="en", fp16=False, initial_prompt="Names.")
    ours = Transcriber(model, tok, DecodingOptions(language="en", long_form="sequential",
                                                   initial_prompt="Names.")).transcribe(audio)
    assert _ours(ours) == _rows(expected["segments"]) and ours.text == expected["text"].strip()
    keep = model.n_text_ctx // 2 - 1
    assert ours_prompts == [[tok.sot_prev, *p[-keep:]] if p else [] for p in theirs]
    assert len(theirs) > len(scripts)  # every script ran
    assert any(s["text"] == "" and s["tokens"] == [] for s in expected["segments"])  # emptied segments kept


@pytest.mark.parametrize("samples, prompt", [(12 * 16000, None), (12 * 16000, ""), (100, None)],
                         ids=["12s", "12s-empty-prompt", "under-a-frame"])
def test_short_audio_and_an_empty_prompt_are_openais(seeking, samples, prompt):
    """Under 30 s, openai detects the language on features with the file's padding, not the window's zeros; its
    initial prompt "" is a prompt (the token " "); under one Mel frame it decodes nothing."""
    reference, _, model, tok = seeking
    audio = synth_speechlike(12, seed=3)[:samples]
    expected = whisper.transcribe(reference, audio, temperature=0.0, fp16=False, initial_prompt=prompt, **NO_CHECKS)
    ours = Transcriber(model, tok, DecodingOptions(temperatures=(0.0,), repetition_guard=False, initial_prompt=prompt,
                                                   long_form="sequential", **NO_CHECKS)).transcribe(audio)
    assert (ours.language, _ours(ours), ours.text) == (expected["language"], _rows(expected["segments"]),
                                                       expected["text"].strip())
    assert bool(ours.segments) == (samples > 100)


EXACT = ["--temperature", "0", "--no-speech-threshold", "none", "--logprob-threshold", "none",
         "--compression-ratio-threshold", "none", "--no-repetition-guard", "--language", "en", "--quiet"]


def test_cli_long_form_sequential_is_the_api(seeking, audio, tmp_path):
    _, pt, model, tok = seeking
    wav = write_wav(tmp_path / "clip.wav", audio, subtype="FLOAT")  # float samples: the API's audio exactly
    out = {}
    for form in ("sequential", "windows"):
        assert main([str(wav), "--model", str(pt), *EXACT, "--long-form", form, "-f", "json", "-o",
                     str(tmp_path / form)]) == 0
        out[form] = json.loads((tmp_path / form / "clip.json").read_text())
    api = Transcriber(model, tok, DecodingOptions(temperatures=(0.0,), repetition_guard=False, language="en",
                                                  long_form="sequential", **NO_CHECKS)).transcribe(audio)
    assert out["sequential"] == api.to_dict() | {"file": str(wav)}
    assert out["windows"]["segments"] != out["sequential"]["segments"]  # the flag reached the transcriber
    assert main([str(wav), "--model", str(pt), *EXACT, "--long-form", "sequential", "--condition-on-previous-text",
                 "false", "-f", "json", "-o", str(tmp_path / "independent")]) == 0
    independent = json.loads((tmp_path / "independent" / "clip.json").read_text())
    assert independent["segments"] != out["sequential"]["segments"]  # the previous text changed the decoding


@pytest.mark.parametrize("extra, message", [
    (["--condition-on-previous-text", "true"], "condition_on_previous_text needs long_form='sequential'"),
    (["--long-form", "sequential", "--audio-context", "10"], "audio_context needs long_form='windows'"),
])
def test_combinations_that_cannot_work_are_one_line(seeking, tmp_path, capsys, extra, message):
    _, pt, _, _ = seeking
    wav = write_wav(tmp_path / "clip.wav", synth_speechlike(1))
    assert main([str(wav), "--model", str(pt), *extra, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "clip.txt").exists()


def test_refusals_in_the_api():
    assert DecodingOptions(condition_on_previous_text=False).long_form == "windows"  # what windows do anyway
    with pytest.raises(ValueError, match="long_form must be 'windows' or 'sequential'"):
        DecodingOptions(long_form="seek")
    with pytest.raises(TypeError, match="condition_on_previous_text must be True, False or None"):
        DecodingOptions(long_form="sequential", condition_on_previous_text="false")
    tok = CharTokenizer.build(["hello world"])
    model = Whisper(n_audio_ctx=50, n_text_ctx=16, vocab_size=tok.vocab_size, dim=32, encoder_depth=1,
                    decoder_depth=1, num_heads=2)
    with pytest.raises(ValueError, match="long_form='sequential' needs a Whisper tokenizer"):
        Transcriber(model, tok, DecodingOptions(long_form="sequential"))


def test_unreadable_audio_fails_its_file_only(seeking, tmp_path, audio):
    _, _, model, tok = seeking
    good = write_wav(tmp_path / "good.wav", audio[: 16000 * 5], subtype="FLOAT")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    tr = Transcriber(model, tok, DecodingOptions(temperatures=(0.0,), language="en", long_form="sequential",
                                                 max_new_tokens=5, **NO_CHECKS))
    first, second = tr.transcribe_files([bad, good])
    assert first.error and not first.segments
    assert second.error is None and second.segments and second.duration == 5.0
    assert _ours(second) == _ours(tr.transcribe(np.asarray(audio[: 16000 * 5])))
