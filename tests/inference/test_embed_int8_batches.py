"""`Embedder`'s batching (sorted, near-equal lengths, every text once) and its int8 path (`quantize="int8"`:
int8 Linear layers, vectors close to fp32's), plus `mmkit embed --quantize int8` on a tiny BERT directory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _bert import write_tiny_bert

from mmkit.cli import main
from mmkit.inference.embed import PADDING_SLACK, Embedder
from mmkit.inference.encoder import load_encoder

TEXTS = ["the cat sees the moon.", "a dog", "my friend remembers a quiet song and the long road.", "the teacher",
         "a dog finds an apple under the old tree", "the end", "the cat", "a quiet song"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlm")
    write_tiny_bert(d, "mlm")
    return d


def test_batches_are_sorted_bounded_and_cover_every_text_once(mlm_dir):
    embedder = Embedder(load_encoder(mlm_dir), batch_size=3)
    lengths = [5, 20, 5, 6, 21, 5, 5, 40, 19]
    batches = embedder.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    assert all(max(lengths[i] for i in b) <= min(lengths[i] for i in b) * (1 + PADDING_SLACK) for b in batches)
    assert [[lengths[i] for i in b] for b in batches] == [[5, 5, 5], [5], [6], [19, 20], [21], [40]]


def test_int8_vectors_are_close_to_fp32_and_unit_length(mlm_dir):
    fp32 = Embedder(load_encoder(mlm_dir), batch_size=4).embed(TEXTS)
    embedder = Embedder(load_encoder(mlm_dir), batch_size=4, quantize="int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in embedder.encoder.model.encoder.modules())
    int8 = embedder.embed(TEXTS)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cosine = (fp32 * int8).sum(1)
    assert cosine.min() > 0.98 and not np.array_equal(fp32, int8)  # close, and really another arithmetic
    # activations are scaled per row (Int8Linear): a text's vector does not depend on the texts (and the
    # padding) batched with it
    assert np.array_equal(np.stack([embedder.embed([t])[0] for t in TEXTS]), int8)


def test_cli_embed_quantize_int8_writes_close_vectors(mlm_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    assert main(["embed", str(texts), "--model", str(mlm_dir), "--out", str(out), "--quiet", "--quantize", "int8"]) == 0
    fp32 = Embedder(load_encoder(mlm_dir)).embed(TEXTS)
    assert (np.load(out) * fp32).sum(1).min() > 0.98
    capsys.readouterr()
    assert main(["embed", str(texts), "--model", str(mlm_dir), "--out", str(out), "--quantize", "int8",
                 "--device", "meta"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmkit embed: error: --device meta: mmkit runs on cpu, cuda or mps"]  # refused before int8 is tried
