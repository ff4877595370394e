"""min-dalle → mmkit DalleBart: encoder memory and decoder logits ≤ 1e-4 against min-dalle's
DalleBartEncoder / DalleBartDecoder (tiny random init, offline), and the same codes as min-dalle's
own sampling loop with top-k 1 (greedy) with and without super-conditioning."""
from __future__ import annotations

import pytest
import torch

from mmkit.cli.bench.generate import import_min_dalle, min_dalle_codes
from mmkit.core import GenerationOptions
from mmkit.models.dalle_bart import DalleBart
from mmkit.weights import WeightsError

from _min_dalle import one_thread  # noqa: F401 - autouse fixture: one torch thread

ATOL = 1e-4
SIZES = dict(layer_count=2, embed_count=128, attention_head_count=2, glu_embed_count=192)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    # min_dalle's import switches autograd off and sets the thread count process-wide: undone
    DalleBartDecoder = import_min_dalle("min_dalle.models.dalle_bart_decoder").DalleBartDecoder
    DalleBartEncoder = import_min_dalle("min_dalle.models.dalle_bart_encoder").DalleBartEncoder
    torch.manual_seed(0)
    enc = DalleBartEncoder(text_vocab_count=100, text_token_count=64, device="cpu", **SIZES).eval()
    dec = DalleBartDecoder(image_vocab_count=2**14, device="cpu", **SIZES).eval()
    for p in list(enc.parameters()) + list(dec.parameters()):  # LayerNorms off their identity init too
        p.data.normal_(std=0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    root = tmp_path_factory.mktemp("min_dalle")
    (root / "dalle_bart_mini").mkdir()
    torch.save(enc.state_dict(), root / "dalle_bart_mini" / "encoder.pt")
    torch.save(dec.state_dict(), root / "dalle_bart_mini" / "decoder.pt")
    return enc, dec, DalleBart.from_min_dalle(root)


def _text():
    text = torch.ones(2, 64, dtype=torch.long)  # pad = 1
    text[0, :5] = torch.tensor([0, 17, 42, 9, 2])
    text[1, :2] = torch.tensor([0, 2])  # min-dalle's unconditional prompt: first and last token
    return text


def test_config_from_tensors(refs):
    model = refs[2]
    assert model.config["dim"] == 128 and model.config["depth"] == 2 and model.config["glu_dim"] == 192
    assert model.config["num_heads"] == 2 and model.codebook_size == 2**14 and model.config["text_len"] == 64


def test_encoder_and_decoder_logits(refs):
    enc, dec, model = refs
    text = _text()
    with torch.no_grad():
        memory_ref = enc(text)
        memory = model.encode(text)
        assert (memory - memory_ref).abs().max().item() <= ATOL
        tokens = torch.cat([torch.full((1, 1), 2**14 - 1), torch.randint(0, 2**14, (1, 9))], 1)
        # min-dalle's decoder runs [uncond ; cond] halves; with one image its rows are text[1], text[0].
        state = torch.zeros(2, 4, 256, 128)
        logits_ref, _ = dec(text[[1, 0]].ne(1)[:, None, None, :], memory_ref[[1, 0]], state, tokens,
                            torch.arange(10))
        logits = model(tokens.repeat(2, 1), context=memory[[1, 0]], context_mask=text[[1, 0]].ne(1))
    diff = (logits[..., : 2**14] - logits_ref[..., : 2**14]).abs().max().item()
    assert diff <= ATOL


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_codes_match_min_dalle(refs, guidance):
    enc, dec, model = refs
    text = _text()
    expected = min_dalle_codes(enc, dec, text[:1], text[1:], num_images=1, guidance=guidance, top_k=1)
    codes = model.generate_codes(text[:1], GenerationOptions(), guidance, null_text=text[1:])
    assert torch.equal(codes, expected)
    assert len(codes.unique()) > 3


def test_missing_files(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        DalleBart.from_min_dalle(tmp_path)


@pytest.mark.parametrize("heads", [3, 0, -2, 2.5])
def test_a_head_count_that_does_not_fit_is_one_line_naming_the_folder(refs, tmp_path, heads):
    enc, dec, _ = refs
    (tmp_path / "dalle_bart_mini").mkdir()
    torch.save(enc.state_dict(), tmp_path / "dalle_bart_mini" / "encoder.pt")
    torch.save(dec.state_dict(), tmp_path / "dalle_bart_mini" / "decoder.pt")
    with pytest.raises(WeightsError) as err:  # was a ZeroDivisionError / a constructor's ValueError / a TypeError
        DalleBart.from_min_dalle(tmp_path, num_heads=heads)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "dalle_bart_mini") in message and "num_heads" in message, message
