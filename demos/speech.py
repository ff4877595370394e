"""Speech recognition demo: upload or record audio, read the transcript with segment timestamps,
download it as SRT subtitles. Thin over `mmkit.inference.Transcriber` (built by
`mmkit.inference.load_transcriber`), the same path as the Python API.

`mmkit demo speech --model runs/whisper_espeak/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from demos.inputs import refused
from mmkit.inference.subtitles import format_timestamp, write_srt
from mmkit.inference.transcript import Transcript

SEGMENT_HEADERS = ["start", "end", "text"]
NO_SPEECH = "No speech found in this audio."


def segment_rows(transcript: Transcript) -> list[list[str]]:
    """[start, end, text] per segment, times as HH:MM:SS.mmm."""
    return [[format_timestamp(s.start), format_timestamp(s.end), s.text.strip()] for s in transcript.segments]


def speech_tab(transcribe_fn: Callable[[str], Transcript]) -> None:
    """Render the speech tab into the enclosing `gr.Blocks`: audio in (upload or microphone),
    transcript, segments and an SRT file out.

    Args:
        transcribe_fn: audio file path -> `Transcript` (e.g. `lambda p: next(t.transcribe_files([p]))`
            for a `Transcriber` t).
    """
    # One folder for this app's SRT files, removed when the app is garbage-collected or Python exits; each
    # request writes into a folder of its own (two uploads of the same name never share a file), removed
    # once Gradio has copied the file to its cache, so the folder stays empty between requests.
    srt_root = tempfile.TemporaryDirectory(prefix="mmkit-srt-")

    def run(path: str | None) -> Iterator[tuple[str, list[list[str]], str | None]]:
        if not path:
            raise refused("Upload or record audio first.")
        t = transcribe_fn(path)
        if t.error is not None:
            raise refused(f"Could not transcribe this audio: {t.error}")
        if not t.segments:  # silence, or noise the model skipped: said so, not an empty SRT to download
            gr.Info(NO_SPEECH)
            yield NO_SPEECH, [], None
            return
        folder = Path(tempfile.mkdtemp(dir=srt_root.name))
        try:
            srt = folder / f"{Path(path).stem or 'audio'}.srt"  # the name the download gets
            with open(srt, "w", encoding="utf-8") as f:
                write_srt(t, f)
            yield t.text, segment_rows(t), str(srt)
        finally:  # Gradio copies an output file to its cache before asking for the next value
            shutil.rmtree(folder, ignore_errors=True)

    with gr.Tab("Speech", elem_id="speech-tab"):
        gr.Markdown("Upload an audio file or record from the microphone, then press Transcribe. Decoding is "
                    "greedy, as `mmkit transcribe --temperature 0` (no beam search, no temperature fallback).")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio",
                                 elem_id="input-audio")
                button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            with gr.Column():
                text = gr.Textbox(label="Transcript", elem_id="transcript", interactive=False)
                segments = gr.Dataframe(headers=SEGMENT_HEADERS, label="Segments", elem_id="segments",
                                        interactive=False)
                srt = gr.File(label="Subtitles (SRT)", elem_id="srt", interactive=False)
        button.click(run, audio, [text, segments, srt], api_name="transcribe")


def build_app(transcribe_fn: Callable[[str], Transcript], title: str = "mmkit speech recognition") -> gr.Blocks:
    """A Blocks app with the speech tab (see `speech_tab`)."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        speech_tab(transcribe_fn)
    return app
