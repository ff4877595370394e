"""The summary at the end of `make run`: held-out accuracy from the prediction file (the true
class of each digit is its folder's name), a few predictions, where the files are, what to try next.

    python scripts/run_summary.py runs/vit_digits/predictions.csv
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

RUN = Path("runs/vit_digits")


def summary(predictions: Path, shown: int = 4) -> list[str]:
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if not r["error"]]
    right = [r for r in ok if r["label"] == Path(r["path"]).parent.name]
    lines = ["", "== make run: done ==",
             f"held-out accuracy: {100 * len(right) / max(len(ok), 1):.1f}% "
             f"({len(right)} of {len(ok)} test digits never seen in training, top-1)"]
    if len(ok) < len(rows):
        lines.append(f"unreadable inputs: {len(rows) - len(ok)} (see the error column)")
    lines.append("a few predictions (file -> predicted digit, probability):")
    step = max(len(ok) // shown, 1)
    for r in ok[::step][:shown]:
        lines.append(f"  {Path(r['path']).parent.name}/{Path(r['path']).name} -> {r['label']} ({float(r['prob']):.2f})")
    lines += ["files:",
              f"  {RUN / 'export'}                 the trained model (config.json + model.safetensors)",
              f"  {RUN / 'checkpoints'}/last.ckpt  the Lightning checkpoint (resume: --ckpt_path last)",
              f"  {predictions}       every prediction (top-3 labels and probabilities)",
              "next:",
              "  .venv/bin/mmkit demo vit          # upload a digit in the browser: http://127.0.0.1:7860",
              "  .venv/bin/mmkit predict --config configs/vit_digits_predict.yaml "
              "--data.init_args.predict_paths '[my_images/]'",
              "  .venv/bin/mmkit fit --config configs/clip_shapes.yaml   # then zero-shot label a folder:",
              "  .venv/bin/mmkit label my_images/ --labels 'red circle,blue star' "
              "--model runs/clip_shapes/export --out labels.csv",
              "  .venv/bin/mmkit --help            # every command"]
    return lines


if __name__ == "__main__":
    print("\n".join(summary(Path(sys.argv[1] if len(sys.argv) > 1 else RUN / "predictions.csv"))))
