"""Speech recognition demo: upload or record audio, read the transcript with segment timestamps,
download it as SRT subtitles. Thin over `mmkit.tasks.transcribe.Transcriber` (built by
`mmkit.tasks.load_transcriber`), the same path as the Python API.

`python -m demos.speech --model runs/whisper_espeak/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import gradio as gr

from mmkit.tasks.transcribe import Transcript, format_timestamp, write_srt

SEGMENT_HEADERS = ["start", "end", "text"]


def segment_rows(transcript: Transcript) -> list[list[str]]:
    """[start, end, text] per segment, times as HH:MM:SS.mmm."""
    return [[format_timestamp(s.start), format_timestamp(s.end), s.text.strip()] for s in transcript.segments]


def build_app(transcribe_fn: Callable[[str], Transcript], title: str = "mmkit speech recognition") -> gr.Blocks:
    """A Blocks app: audio in (upload or microphone), transcript, segments and an SRT file out.

    Args:
        transcribe_fn: audio file path -> `Transcript` (e.g. `lambda p: next(t.transcribe_files([p]))`
            for a `Transcriber` t).
    """
    srt_dir = Path(tempfile.mkdtemp(prefix="mmkit-srt-"))

    def run(path: str | None) -> tuple[str, list[list[str]], str]:
        if not path:
            raise gr.Error("Upload or record audio first.")
        t = transcribe_fn(path)
        if t.error is not None:
            raise gr.Error(f"Could not transcribe this audio: {t.error}")
        srt = srt_dir / f"{Path(path).stem or 'audio'}.srt"
        with open(srt, "w", encoding="utf-8") as f:
            write_srt(t, f)
        return t.text, segment_rows(t), str(srt)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\nUpload an audio file or record from the microphone, then press Transcribe.")
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
        button.click(run, audio, [text, segments, srt])
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.speech", description="Serve the speech demo.")
    parser.add_argument("--model", default="runs/whisper_espeak/export",
                        help="checkpoint directory (mmkit char/BPE export, mmkit or Hugging Face Whisper)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if not (Path(args.model).expanduser() / "config.json").is_file():
        print(f"no checkpoint at {args.model}; train one with `mmkit fit --config configs/whisper_espeak.yaml`",
              file=sys.stderr)
        return 2
    from mmkit.demo_harness import serve
    from mmkit.tasks import load_transcriber

    transcriber = load_transcriber(args.model)
    serve(build_app(lambda path: next(transcriber.transcribe_files([path]))), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
