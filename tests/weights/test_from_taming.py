"""taming-transformers → mmkit VQGAN: parity with taming's Encoder / Decoder / VectorQuantizer2
(random init, offline; taming-transformers-rom1504), the YAML + .ckpt path, and the refusals.
"""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2

from mmkit.models import VQGAN
from mmkit.weights import WeightsError

ATOL = 1e-4
DDCONFIG = dict(double_z=False, z_channels=8, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
YAML = {"model": {"target": "taming.models.vqgan.VQModel",
                  "params": {"embed_dim": 6, "n_embed": 40, "ddconfig": DDCONFIG,
                             "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}}}


class TamingVQ(torch.nn.Module):
    """taming's VQModel minus its Lightning/loss plumbing (same submodules, names and forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(**DDCONFIG), Decoder(**DDCONFIG)
        self.quantize = VectorQuantizer2(40, 6, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(8, 6, 1)
        self.post_quant_conv = torch.nn.Conv2d(6, 8, 1)

    def forward(self, x):  # x in [-1, 1], like taming's data
        quant, _, (_, _, codes) = self.quantize(self.quant_conv(self.encoder(x)))
        return codes, self.decoder(self.post_quant_conv(quant))


@pytest.fixture(scope="module")
def taming_files(tmp_path_factory):
    torch.manual_seed(0)
    ref = TamingVQ().eval()
    # Seed the codebook with encoder outputs, as a trained one would be, so codes vary by position.
    with torch.no_grad():
        z = ref.quant_conv(ref.encoder(torch.rand(2, 3, 32, 32) * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 6)
    ref.quantize.embedding.weight.data.copy_(z[torch.randperm(len(z))[:40]])
    d = tmp_path_factory.mktemp("taming")
    state = dict(ref.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(2)  # training-only: dropped by name
    torch.save({"state_dict": state, "global_step": 7}, d / "last.ckpt")
    (d / "model.yaml").write_text(yaml.safe_dump(YAML))
    return ref, d / "model.yaml", d / "last.ckpt"


def test_parity_with_taming(taming_files):
    ref, cfg, ckpt = taming_files
    model = VQGAN.from_taming(cfg, ckpt)
    assert model.config["norm_eps"] == 1e-6 and model.config["attn_levels"] == [2]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_codes, ref_out = ref(images * 2 - 1)
        codes = model.encode(images)
        out = model.decode(codes)
    assert torch.equal(codes.flatten(), ref_codes.flatten())
    assert len(codes.unique()) > 3
    expected = ((ref_out + 1) / 2).clamp(0, 1)
    assert (out - expected).abs().max().item() <= ATOL


def test_refuses_unsupported_variants(taming_files, tmp_path):
    _, _, ckpt = taming_files
    for change, message in [({"target": "taming.models.vqgan.GumbelVQ"}, "GumbelVQ"),
                            ({"params.remap": "used.npy"}, "remap"),
                            ({"ddconfig.double_z": True}, "double_z")]:
        doc = copy.deepcopy(YAML)
        (key, value), = change.items()
        where = {"target": doc["model"], "params.remap": doc["model"]["params"],
                 "ddconfig.double_z": doc["model"]["params"]["ddconfig"]}[key]
        where[key.split(".")[-1]] = value
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(WeightsError, match=message):
            VQGAN.from_taming(tmp_path / "bad.yaml", ckpt)


def test_unknown_keys_and_missing_file_are_errors(taming_files, tmp_path):
    ref, cfg, _ = taming_files
    torch.save({"state_dict": {**ref.state_dict(), "mystery.weight": torch.zeros(1)}}, tmp_path / "x.ckpt")
    with pytest.raises(WeightsError, match="mystery.weight"):
        VQGAN.from_taming(cfg, tmp_path / "x.ckpt")
    with pytest.raises(WeightsError, match="not found"):
        VQGAN.from_taming(cfg, tmp_path / "absent.ckpt")


def test_an_emavq_checkpoint_loads_without_its_ema_statistics(taming_files, tmp_path):
    """EMAVQ was an accepted target, yet every EMAVQ checkpoint was refused: its quantizer's `embedding` is an
    EmbeddingEMA (CompVis taming/modules/vqvae/quantize.py) whose Parameters `cluster_size` and `embed_avg`, the
    running statistics its training updates the codebook from, had no mapping. The installed taming has no EMAVQ,
    so the checkpoint is the VQModel's plus those two tensors."""
    ref, cfg, ckpt = taming_files
    state = {**ref.state_dict(), "quantize.embedding.cluster_size": torch.rand(40),
             "quantize.embedding.embed_avg": torch.randn(40, 6)}
    torch.save({"state_dict": state}, tmp_path / "ema.ckpt")
    doc = copy.deepcopy(YAML)
    doc["model"]["target"] = "taming.models.vqgan.EMAVQ"
    (tmp_path / "ema.yaml").write_text(yaml.safe_dump(doc))
    model, plain = VQGAN.from_taming(tmp_path / "ema.yaml", tmp_path / "ema.ckpt"), VQGAN.from_taming(cfg, ckpt)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
