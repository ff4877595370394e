"""`mmkit demo NAME`: serve a Gradio demo from demos/ on 127.0.0.1 (bind elsewhere with --host)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# name -> (help, default checkpoint relative to the repository root, where the recipes export)
DEMOS = {
    "vit": ("image classification with an attention overlay", "runs/vit_digits/export", "make run"),
    "clip": ("zero-shot image labels with CLIP", "runs/clip_shapes/export",
             "mmkit fit --config configs/clip_shapes.yaml"),
    "speech": ("speech to text with segment timestamps and an SRT download", "runs/whisper_espeak/export",
               "mmkit fit --config configs/whisper_espeak.yaml"),
}


def _build(name: str, model: Path, top_k: int):
    if name == "vit":
        from demos.classifier import build_app
        from mmkit.tasks.classify import Classifier

        return build_app(Classifier.from_pretrained(model), top_k=top_k)
    if name == "speech":
        from demos.speech import build_app
        from mmkit.tasks.speech_recognizer import load_transcriber

        transcriber = load_transcriber(model)
        return build_app(lambda path: next(transcriber.transcribe_files([path])))
    from demos.zero_shot import build_app
    from mmkit.tasks.zero_shot import ZeroShotClassifier

    return build_app(ZeroShotClassifier.from_pretrained(model))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmkit demo", description="Serve a Gradio demo in the browser.")
    parser.add_argument("name", choices=list(DEMOS), help="; ".join(f"{k}: {v[0]}" for k, v in DEMOS.items()))
    parser.add_argument("--model", default=None,
                        help="mmkit checkpoint directory (default: the recipe's export); speech also takes "
                             "Hugging Face Whisper directories and openai-whisper .pt files")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    _, default, how = DEMOS[args.name]
    model = Path(args.model or default).expanduser()
    openai_file = args.name == "speech" and model.suffix in (".pt", ".pth") and model.is_file()
    if not openai_file and not (model / "config.json").is_file():
        print(f"mmkit demo: no checkpoint at {model}; train it first with `{how}` or pass --model DIR",
              file=sys.stderr)
        return 2
    from mmkit.demo_harness import serve

    serve(_build(args.name, model, args.top_k), host=args.host, port=args.port)
    return 0
