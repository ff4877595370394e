"""`mmkit demo NAME`: serve a Gradio demo from demos/ on 127.0.0.1 (bind elsewhere with --host)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_VIT = "runs/vit_digits/export"  # relative to the repository root, where `make run` writes it


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmkit demo", description="Serve a Gradio demo in the browser.")
    parser.add_argument("name", choices=["vit"], help="vit: image classification with attention overlay")
    parser.add_argument("--model", default=None,
                        help="mmkit checkpoint directory (default: the embedded digits recipe's export)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    model = Path(args.model or DEFAULT_VIT).expanduser()
    if not (model / "config.json").is_file():
        print(f"mmkit demo: no checkpoint at {model}; train the embedded recipe first with `make run` "
              "or pass --model DIR", file=sys.stderr)
        return 2
    from demos.classifier import build_app
    from mmkit.demo_harness import serve
    from mmkit.tasks.classify import Classifier

    serve(build_app(Classifier.from_pretrained(model), top_k=args.top_k), host=args.host, port=args.port)
    return 0
