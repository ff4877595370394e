"""SRT and WebVTT cut by word timestamps (`SubtitleOptions`, `mmkit transcribe --highlight-words --max-line-width
--max-line-count --max-words-per-line`) are openai-whisper's: for hand-made transcripts (punctuation, words over the
width, pauses and gaps, several segments, an empty one, times past an hour, words without spaces) and every option
alone and together, mmkit's srt, vtt, tsv and txt are the bytes openai's `whisper.utils.get_writer` writes for the
same result, but for two documented differences: mmkit's WebVTT times always carry the hours, and "-->" never
appears in a cue's text. The CLI writes what the writers give on a tiny random openai-format model."""
from __future__ import annotations

import io
import json
import re
from dataclasses import asdict

import pytest
import soundfile as sf
import torch

from mmkit.audio import SAMPLE_RATE
from mmkit.cli.bench.speech_inputs import synth_speechlike
from mmkit.cli.transcribe import _layout_problems, _parser, main
from mmkit.inference.subtitles import SubtitleOptions, write_outputs, write_srt, write_vtt
from mmkit.inference.transcript import Segment, Transcript, Word

whisper = pytest.importorskip("whisper")
from whisper.utils import get_writer  # noqa: E402

FORMATS = ("srt", "vtt", "tsv", "txt")


def _segment(*words: tuple[str, float, float], text: str | None = None) -> Segment:
    """A segment of `words` (text, start, end) that starts and ends with them, as openai's moves it."""
    w = [Word(word, start, end, 0.5) for word, start, end in words]
    return Segment(w[0].start if w else 0.0, w[-1].end if w else 0.0,
                   "".join(x.word for x in w) if text is None else text, words=w)


SENTENCES = Transcript("talk.wav", segments=[  # punctuation, gaps between words, a pause over 3 s
    _segment((" Hello,", 0.0, 0.42), (" world.", 0.5, 0.9), (" This", 1.2, 1.4), (" is", 1.4, 1.5),
             (" a", 1.5, 1.56), (" longer", 1.6, 2.0), (" sentence,", 2.0, 2.7), (" isn't", 2.8, 3.1),
             (" it?", 3.1, 3.4)),
    _segment((" (Yes", 7.5, 7.9), (" indeed.)", 7.9, 8.6), (" Numbers:", 8.6, 9.0), (" 1,234.5", 9.0, 9.9)),
    _segment((" \"Quoted\"", 10.0, 10.4), (" words", 10.4, 10.8), (" end.", 10.8, 11.2)),
])
LONG_WORDS = Transcript("long.wav", segments=[  # words longer than any width here, and a line exactly 20 wide
    _segment((" Supercalifragilisticexpialidocious", 0.0, 1.5), (" is", 1.5, 1.6),
             (" antidisestablishmentarianism's", 1.6, 3.0), (" rival.", 3.0, 3.3), (" abcdefghijklm", 3.3, 3.5),
             (" ok", 3.5, 3.6)),
    _segment((" Pneumonoultramicroscopicsilicovolcanoconiosis!", 4.0, 6.0)),
])
MANY_SEGMENTS = Transcript("many.wav", segments=[  # an empty segment (no words, as openai's zero-length ones)
    _segment((" One", 0.0, 0.3), (" two", 0.3, 0.6), (" three", 0.6, 1.0)),
    _segment(),
    _segment((" four", 1.0, 1.3), (" five", 1.3, 1.3), (" six", 1.3004, 1.6)),  # equal in milliseconds: no gap cue
    _segment((" seven", 5.0, 5.2), (" eight", 5.2, 5.4), (" nine", 5.4, 5.6), (" ten", 5.6, 5.9),
             (" eleven", 5.9, 6.3), (" twelve.", 6.3, 6.9)),
    _segment((" Late", 3600.0, 3600.5), (" words", 3601.25, 3601.5), (" past", 3601.5, 3601.7),
             (" the", 3601.7, 3601.8), (" hour.", 3601.8, 3602.0)),  # WebVTT hours in openai's output too
])
NO_SPACES = Transcript("ja.wav", segments=[  # words without leading spaces, widths in code points
    _segment(("こんにちは", 0.0, 0.8), ("、", 0.8, 0.9), ("世界", 0.9, 1.4), ("。", 1.4, 1.5),
             ("今日は", 2.0, 2.5), ("いい", 2.5, 2.8), ("天気", 2.8, 3.2), ("ですね。", 3.2, 3.9)),
])
WORDLESS_FIRST = Transcript("plain.wav", segments=[  # the first without words: openai writes the segments
    Segment(0.0, 1.0, " Said without word timing."), *SENTENCES.segments[1:]])
ODD_WORDS = Transcript("odd.wav", segments=[  # merged punctuation with a space, line breaks in and after words
    _segment((' " Quoted"', 0.0, 0.5), (" said\n", 0.5, 0.9), (" line\nbreak", 0.9, 1.3), (" end. ", 1.3, 1.8),
             ("  ", 1.8, 1.9), (" last", 1.9, 2.4)),
])
TRANSCRIPTS = {"sentences": SENTENCES, "long_words": LONG_WORDS, "many_segments": MANY_SEGMENTS,
               "no_spaces": NO_SPACES, "odd_words": ODD_WORDS, "wordless_first": WORDLESS_FIRST}

OPTIONS = {  # openai's keyword arguments; each alone and combined
    "none": {},
    "highlight": {"highlight_words": True},
    "width": {"max_line_width": 20},
    "width_1": {"max_line_width": 1},
    "count_alone": {"max_line_count": 1},
    "words": {"max_words_per_line": 3},
    "width_count": {"max_line_width": 20, "max_line_count": 2},
    "width_count_1": {"max_line_width": 12, "max_line_count": 1},
    "width_words": {"max_line_width": 12, "max_words_per_line": 4},
    "width_count_words": {"max_line_width": 16, "max_line_count": 2, "max_words_per_line": 2},
    "highlight_width": {"highlight_words": True, "max_line_width": 20},
    "highlight_width_count": {"highlight_words": True, "max_line_width": 20, "max_line_count": 2},
    "highlight_words": {"highlight_words": True, "max_words_per_line": 2},
    "all": {"highlight_words": True, "max_line_width": 14, "max_line_count": 3, "max_words_per_line": 5},
}


def _openai(result: dict, fmt: str, options: dict, tmp_path) -> str:
    """What openai-whisper's CLI writer writes for `result`, its WebVTT times given their hours as mmkit's."""
    get_writer(fmt, str(tmp_path))(result, str(tmp_path / "audio.wav"), **options)
    text = (tmp_path / f"audio.{fmt}").read_text(encoding="utf-8")
    if fmt == "vtt":  # openai leaves out a zero hour ("00:01.500"); mmkit always writes it ("00:00:01.500")
        text = re.sub(r"(?m)^(\d\d:\d\d\.\d{3}|\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d\.\d{3}|\d\d:\d\d:\d\d\.\d{3})$",
                      lambda m: " --> ".join(s if s.count(":") == 2 else "00:" + s for s in m.groups()), text)
    return text


def _ours(t: Transcript, fmt: str, options: dict, tmp_path) -> str:
    (path,) = write_outputs(t, "ours", tmp_path, [fmt], SubtitleOptions(**options))
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_subtitles_are_openais(name, options, tmp_path):
    t = TRANSCRIPTS[name]
    for fmt in FORMATS:
        assert _ours(t, fmt, options, tmp_path) == _openai(t.to_dict(), fmt, options, tmp_path), fmt


def test_the_options_cut_and_highlight(tmp_path):
    """The cases above reach each rule (against a reference that could share a blind spot, this shows they act)."""
    plain, cut, lit = (_ours(SENTENCES, "srt", o, tmp_path) for o in ({}, {"max_line_width": 20},
                                                                        {"highlight_words": True}))
    assert plain.count("-->") == 3 and "\n" not in plain.split("\n")[2]
    assert max(len(line) for line in cut.splitlines() if "-->" not in line) <= 20 and cut.count("-->") == 3
    assert "\nHello, world. This\nis a longer\nsentence, isn't it?\n\n" in cut
    assert lit.count("<u>") == 16 and "1\n00:00:00,000 --> 00:00:00,420\n<u>Hello,</u> world." in lit
    assert "00:00:00,420 --> 00:00:00,500\nHello, world." in lit  # the gap between two words: plain text
    paged = _ours(SENTENCES, "srt", {"max_line_width": 20, "max_line_count": 2}, tmp_path)
    assert "\nHello, world. This\nis a longer\n\n" in paged  # full at two lines
    assert "\nsentence, isn't it?\n\n" in paged  # a line free, but a pause of 4.4 s before "(Yes"
    long = _ours(LONG_WORDS, "srt", {"max_line_width": 20}, tmp_path)
    assert "\nSupercalifragilisticexpialidocious\nis\n" in long  # a word over the width: a line of its own
    assert "\nrival. abcdefghijklm\nok\n" in long  # a line may reach the width, not pass it
    words = _ours(MANY_SEGMENTS, "srt", {"max_words_per_line": 2}, tmp_path)
    assert "\nOne two\n" in words and "\nthree\n" in words and "\nfour five\n" in words


def test_a_later_segment_without_words_gives_the_segments(tmp_path):
    """openai reads the words only when the first segment has them (and fails on a later one without); mmkit uses
    them when every segment has them, else writes the segments, options or not: what openai writes without words."""
    t = Transcript("mixed.wav", segments=[*SENTENCES.segments[:2], Segment(12.0, 13.0, " No words here.")])
    no_words = {**t.to_dict(), "segments": [{k: v for k, v in s.items() if k != "words"} for s in t.to_dict()
                                            ["segments"]]}
    for fmt in FORMATS:
        for options in (OPTIONS["none"], OPTIONS["all"]):
            assert _ours(t, fmt, options, tmp_path) == _openai(no_words, fmt, {}, tmp_path)
    assert "No words here." in _ours(t, "srt", OPTIONS["all"], tmp_path)


def test_no_arrow_in_a_cue(tmp_path):
    """A word holding "-->" would end a cue's text for an SRT or WebVTT reader: "->", as mmkit's segment text
    (openai writes the words as they are)."""
    t = Transcript("arrow.wav", segments=[_segment((" a", 0.0, 0.5), (" -->", 0.5, 1.0), (" b", 1.0, 1.5))])
    for fmt in ("srt", "vtt"):
        for options in (OPTIONS["none"], OPTIONS["highlight"], OPTIONS["width_1"]):
            ours = _ours(t, fmt, options, tmp_path)
            cue_text = [line for line in ours.splitlines() if line and " --> " not in line]
            assert not any("-->" in line for line in cue_text) and any("->" in line for line in cue_text)
            assert ours == re.sub(r"(?m)^(?!\d\d:)(.*)-->", r"\1->", _openai(t.to_dict(), fmt, options, tmp_path))


def test_writers_take_the_options_directly():
    layout = SubtitleOptions(highlight_words=True, max_line_width=20)
    for write in (write_srt, write_vtt):
        f, default = io.StringIO(), io.StringIO()
        write(SENTENCES, f, layout)
        write(SENTENCES, default)
        assert f.getvalue() != default.getvalue() and "<u>" in f.getvalue() and "<u>" not in default.getvalue()


@pytest.mark.parametrize("kwargs, error", [
    ({"max_line_width": 0}, ValueError), ({"max_line_count": -1}, ValueError), ({"max_words_per_line": 2.0}, TypeError),
    ({"max_line_width": True}, TypeError)])
def test_option_values_are_checked(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        SubtitleOptions(**kwargs)


# ---- the command line ----

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random openai-format checkpoint whose scaled timestamp and end logits give several short segments
    per window (as tests/tasks/test_transcribe_sequential.py builds it)."""
    from whisper.model import ModelDimensions
    from whisper.tokenizer import get_tokenizer

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.manual_seed(0)
    model, ref = whisper.model.Whisper(dims), get_tokenizer(True)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.2)
        model.decoder.token_embedding.weight.normal_(0, 0.5)
        model.decoder.token_embedding.weight[ref.timestamp_begin:] *= 3.0
        model.decoder.token_embedding.weight[ref.eot] *= 5.0
    path = tmp_path_factory.mktemp("subtitle_words") / "tiny.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: intra-op threads only fight for the cores
    yield
    torch.set_num_threads(before)


EXACT = ["--temperature", "0", "--no-speech-threshold", "none", "--logprob-threshold", "none",
         "--compression-ratio-threshold", "none", "--no-repetition-guard", "--language", "en", "--quiet"]


def _transcript(data: dict) -> Transcript:
    """The Transcript a json output holds."""
    segments = [Segment(**{k: v for k, v in s.items() if k not in ("id", "words")},
                        words=[Word(**w) for w in s["words"]]) for s in data["segments"]]
    return Transcript(data["file"], data["text"], segments, data["language"], data["duration"])


def test_cli_writes_the_writers_subtitles(tiny_model, tmp_path, one_thread):
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), synth_speechlike(6, seed=3), SAMPLE_RATE, subtype="FLOAT")
    assert main([str(wav), "--model", str(tiny_model), *EXACT, "--long-form", "sequential", "--word-timestamps",
                 "--highlight-words", "--max-line-width", "20", "-f", "srt", "vtt", "json", "-o", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "clip.json").read_text(encoding="utf-8"))
    t = _transcript(data)
    assert sum(len(s.words) for s in t.segments) > 3
    options = {"highlight_words": True, "max_line_width": 20}
    for fmt, write in (("srt", write_srt), ("vtt", write_vtt)):
        f = io.StringIO()
        write(t, f, SubtitleOptions(**options))
        written = (tmp_path / f"clip.{fmt}").read_text(encoding="utf-8")
        assert written == f.getvalue() == _openai(data, fmt, options, tmp_path)
        assert "<u>" in written
    srt = (tmp_path / "clip.srt").read_text(encoding="utf-8")
    assert any(len(cue.splitlines()) > 3 for cue in srt.split("\n\n"))  # a subtitle of lines cut at the width


def test_word_options_without_words_are_one_line(tmp_path, capsys):
    """openai's parser error: the subtitle options need --word-timestamps (checked before any model is read)."""
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), synth_speechlike(1), SAMPLE_RATE)
    assert main([str(wav), "--model", str(tmp_path / "none.pt"), "--highlight-words", "--max-line-width", "20",
                 "-f", "srt", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--highlight-words and --max-line-width need --word-timestamps" in err
    with pytest.raises(SystemExit) as stopped:  # argparse's usage error
        main([str(wav), "--model", str(tmp_path / "none.pt"), "--max-line-width", "0"])
    assert stopped.value.code == 2 and "--max-line-width: must be >= 1, got 0" in capsys.readouterr().err


def test_options_without_effect_are_warned_in_one_line(tmp_path, caplog):
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), synth_speechlike(1), SAMPLE_RATE)
    with caplog.at_level("WARNING", logger="mmkit.cli.transcribe"):  # warned before the model is read (none here)
        assert main([str(wav), "--model", str(tmp_path / "none.pt"), "--long-form", "sequential",
                     "--word-timestamps", "--max-line-count", "2", "-o", str(tmp_path)]) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "mmkit.cli.transcribe"] == [
        "--max-line-count has no effect without --max-line-width"]


@pytest.mark.parametrize("extra, warnings", [
    (["--max-line-count", "2"], ["--max-line-count has no effect without --max-line-width"]),
    (["--max-line-width", "20", "--max-line-count", "2", "--max-words-per-line", "3"],
     ["--max-words-per-line has no effect with --max-line-width and --max-line-count"]),
    (["--max-line-width", "20", "--max-words-per-line", "3"], []),  # it still cuts every 3 words (openai warns)
    (["--highlight-words", "--max-line-width", "20", "--max-line-count", "2"], []),
])
def test_options_without_effect_are_warned(extra, warnings):
    args = _parser().parse_args(["a.wav", "--model", "m", "--long-form", "sequential", "--word-timestamps", *extra])
    assert _layout_problems(args) == (None, warnings)
