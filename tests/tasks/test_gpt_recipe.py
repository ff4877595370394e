"""The shipped GPT recipe (configs/gpt_fortunes.yaml) through `mmkit fit`, shrunk to a dim-32 model
on a tiny generated corpus: it trains, beats the unigram baseline on held-out text, checkpoints in
the recipe's fixed folder, and its export generates text through `mmkit generate-text`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _gpt import tiny_corpus

from mmkit.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "gpt_fortunes.yaml")
GPT = "--model.init_args.model.init_args."
DATA = "--data.init_args."


def test_recipe_learns_checkpoints_and_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(300)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["fit", "--config", RECIPE, GPT + "max_len", "32", GPT + "dim", "32", GPT + "depth", "2",
                     GPT + "num_heads", "4", GPT + "dropout", "0.0", DATA + "corpus", "null",
                     DATA + "files", f"[{corpus}]", DATA + "vocab_size", "300", DATA + "block_size", "32",
                     DATA + "val_fraction", "0.1", DATA + "batch_size", "16", "--model.init_args.lr", "0.003",
                     "--trainer.max_epochs", "4", "--trainer.val_check_interval", "1.0",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]) == 0
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "runs" / "gpt_fortunes"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    metrics: dict[str, float] = {}
    with next((run / "lightning_logs").glob("version_*/metrics.csv")).open() as f:
        for row in csv.DictReader(f):
            metrics.update({k: float(v) for k, v in row.items() if v})
    assert metrics["val/ppl"] < metrics["val/unigram_ppl"] / 3, metrics
    capsys.readouterr()
    assert main(["generate-text", "The cat", "--model", str(run / "export"), "--max-new-tokens", "8"]) == 0
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_generation import load_text_generator

    continuation = load_text_generator(run / "export").generate("The cat", GenerationOptions(max_new_tokens=8))
    assert continuation.strip() and capsys.readouterr().out == "The cat" + continuation + "\n"
