"""The speech demo (demos/speech.py) in headless Chromium: upload a WAV that espeak-ng spoke, press
Transcribe, and see the transcript, the segment table and an SRT download equal to what the Python
API (`mmkit.inference.load_transcriber`) gives for the same file. The model is a tiny Whisper that
memorised two espeak sentences, so the transcript is the real sentence, not noise.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import soundfile as sf
from playwright.sync_api import expect

from _browser import TIMEOUT_MS, open_app
from _training import fit_single_threaded
from mmkit.audio import SAMPLE_RATE
from mmkit.data.espeak_corpus import espeak_available, synthesize

SENTENCES = ["hello world", "good morning"]

pytestmark = pytest.mark.skipif(not espeak_available(), reason="needs Debian's espeak-ng (scripts/setup.sh)")


@pytest.fixture(scope="module")
def speech_export(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(export dir, wav paths): a dim-32 Whisper after 80 steps on the two spoken sentences."""
    import pytorch_lightning as pl

    from mmkit.data import AudioManifestDataModule
    from mmkit.models import Whisper
    from mmkit.tasks import SpeechRecognizer

    root = tmp_path_factory.mktemp("speech_demo")
    wavs = []
    for i, text in enumerate(SENTENCES):
        wavs.append(root / f"clip{i}.wav")
        sf.write(str(wavs[-1]), synthesize(text, "en-us", speed=175), SAMPLE_RATE, subtype="PCM_16")
    (root / "train.jsonl").write_text("".join(json.dumps({"path": w.name, "text": t}) + "\n"
                                              for w, t in zip(wavs, SENTENCES)))
    pl.seed_everything(0, verbose=False)
    data = AudioManifestDataModule(str(root / "train.jsonl"), batch_size=2)
    model = Whisper(n_audio_ctx=100, n_text_ctx=24, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    task = SpeechRecognizer(model, lr=1e-2, warmup_ratio=0.1, label_smoothing=0.0, export_dir=str(root / "export"))
    trainer = pl.Trainer(accelerator="cpu", max_steps=80, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(root))
    fit_single_threaded(trainer, task, data)
    return root / "export", wavs


def test_demo_shows_the_api_transcript_segments_and_srt(page, serve_blocks, speech_export):
    from demos.speech import build_app, segment_rows
    from mmkit.inference import load_transcriber
    from mmkit.inference.subtitles import write_srt

    export, wavs = speech_export
    transcriber = load_transcriber(export)
    expected = next(transcriber.transcribe_files([wavs[0]]))  # the same file through the Python API
    assert expected.text == SENTENCES[0]  # the tiny model learned it: the demo must show real words
    srt = io.StringIO()
    write_srt(expected, srt)

    open_app(page, serve_blocks(build_app(lambda path: next(transcriber.transcribe_files([path])))))
    page.locator('#input-audio input[type="file"]').set_input_files(str(wavs[0]))
    expect(page.locator("#input-audio audio, #input-audio [data-testid='waveform-Audio']").first).to_be_attached(
        timeout=TIMEOUT_MS)  # uploaded: a click before that sends None
    page.locator("#transcribe").click()

    expect(page.locator("#transcript textarea")).to_have_value(expected.text, timeout=TIMEOUT_MS)
    (start, end, text), = segment_rows(expected)
    table = page.locator("#segments")
    for cell in (start, end, text):
        expect(table.get_by_role("gridcell", name=cell, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    link = page.locator('#srt a[href$=".srt"]')
    expect(link).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#srt")).to_contain_text("clip0")  # named after the upload
    assert page.request.get(link.get_attribute("href")).text() == srt.getvalue()
    assert srt.getvalue().startswith("1\n00:00:00,000 --> 00:00:0") and SENTENCES[0] in srt.getvalue()


def test_demo_without_audio_shows_an_error(page, serve_blocks, speech_export):
    from demos.speech import build_app
    from mmkit.inference import load_transcriber

    transcriber = load_transcriber(speech_export[0])
    open_app(page, serve_blocks(build_app(lambda path: next(transcriber.transcribe_files([path])))))
    page.locator("#transcribe").click()
    expect(page.get_by_text("Upload or record audio first.").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#transcript textarea")).to_have_value("")


def test_each_request_gets_its_own_srt_file_removed_after_it_is_sent(tmp_path):
    """Two uploads of the same name never share a file, and a request's SRT is removed once Gradio has
    taken it (the folder per app build stays empty between requests; it was one file per request, kept)."""
    from demos.speech import build_app
    from mmkit.inference.transcript import Segment, Transcript

    def transcribe(path: str) -> Transcript:
        t = Transcript(path, text=Path(path).parent.name)
        t.segments = [Segment(0.0, 1.0, t.text)]
        return t

    app = build_app(transcribe)
    (run,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clip.wav").write_bytes(b"")
    first, second = run(str(tmp_path / "a" / "clip.wav")), run(str(tmp_path / "b" / "clip.wav"))
    (text_a, _, srt_a), (text_b, _, srt_b) = next(first), next(second)  # both requests in flight
    assert srt_a != srt_b and Path(srt_a).name == Path(srt_b).name == "clip.srt"
    assert text_a in Path(srt_a).read_text() and text_b in Path(srt_b).read_text()
    for request, srt in ((first, srt_a), (second, srt_b)):
        assert next(request, None) is None and not Path(srt).exists() and not Path(srt).parent.exists()
    assert list(Path(srt_a).parent.parent.iterdir()) == []


def test_the_api_endpoint_is_named_transcribe():
    """It was /run, or /run_N after the tabs served before it (`mmkit demo`)."""
    from demos.speech import build_app

    assert [f.api_name for f in build_app(lambda path: None).fns.values()] == ["transcribe"]


def test_no_speech_is_said_and_gives_no_srt_file(monkeypatch):
    """A transcript without segments (silence) showed an empty transcript and offered an empty SRT file."""
    import gradio as gr

    import demos.speech
    from mmkit.inference.transcript import Transcript

    said = []
    monkeypatch.setattr(demos.speech.gr, "Info", said.append)
    app = demos.speech.build_app(lambda path: Transcript(path, text=""))
    (run,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run"]
    assert list(run("silence.wav")) == [(demos.speech.NO_SPEECH, [], None)] and said == [demos.speech.NO_SPEECH]
    notes = " ".join(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown))
    assert "greedy, as `mmkit transcribe --temperature 0`" in notes, notes
