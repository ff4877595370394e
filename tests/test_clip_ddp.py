"""Contrastive training under DDP is exact: CLIPTask on two CPU processes (Lightning's ddp_spawn,
gloo) gives the same loss and the same (DDP-averaged) parameter gradients as one process over
the combined batch, because features are gathered with gradients and each rank scores its own
rows against all (mmkit.tasks.contrastive). A second test checks the gather's backward directly,
with unequal batch sizes on the two ranks (a batch that lost unreadable images).
"""
from __future__ import annotations

import copy
import os
import socket

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mmkit.data import CaptionCollate
from mmkit.data.text import CLIPTokenizer
from mmkit.models import CLIP
from mmkit.tasks import CLIPTask
from mmkit.tasks.contrastive import clip_loss

TINY = dict(visual=dict(embed_dim=16, image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
            text=dict(embed_dim=16, max_len=12, dim=32, depth=1, num_heads=2, mlp_ratio=2.0))
PER_RANK = 4
CAPTIONS = ["a red circle", "a blue square on the left", "a small green star", "a yellow cross at the top",
            "a purple triangle", "a large red square", "a blue circle in the centre", "a green cross"]


class Pairs(Dataset):
    """Fixed random images with captions; item i = (image, caption, i) as CaptionDataset gives."""

    def __init__(self, n: int) -> None:
        self.images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], CAPTIONS[i], i


class RecordStep(pl.Callback):
    """Save this rank's loss and its parameter gradients as the optimiser sees them (after DDP's
    all-reduce) to `folder/rank<r>.pt`."""

    def __init__(self, folder: str) -> None:
        self.folder, self.grads = folder, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.save({"loss": outputs["loss"].detach(), "grads": self.grads, "batch": batch["indices"]},
                   os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


def _single_process_grads(task: CLIPTask, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    task.zero_grad()
    loss = task.loss(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in task.model.named_parameters()}


@pytest.mark.slow
def test_ddp_equals_one_process_over_the_combined_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the two spawned ranks share the machine's cores
    torch.manual_seed(0)
    task = CLIPTask(CLIP.from_config(TINY), lr=1e-3)
    tok = CLIPTokenizer(context_length=12)
    data = Pairs(2 * PER_RANK)
    full = CaptionCollate(tok)([data[i] for i in range(len(data))])
    loss_1, grads_1 = _single_process_grads(copy.deepcopy(task), full)
    naive = copy.deepcopy(task)  # before fit: ddp_spawn copies rank 0's updated weights back

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[RecordStep(str(tmp_path))])
    trainer.fit(task, DataLoader(data, batch_size=PER_RANK, shuffle=False, collate_fn=CaptionCollate(tok)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # The ranks saw disjoint halves (DistributedSampler interleaves them) that make up the batch.
    seen = [set(r["batch"].tolist()) for r in ranks]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(2 * PER_RANK))
    # Mean of the ranks' local losses = the loss over the combined batch (equal halves).
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(loss_1, rel=1e-5)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # each rank really had its own rows
    for name, g in grads_1.items():
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name], rtol=0, atol=0,
                                   msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-5, atol=1e-5,  # float32 sum order
                                   msg=lambda m: f"{name}: {m}")

    # The comparison can tell: two independent half-batch losses (no gather) give other gradients.
    halves = [CaptionCollate(tok)([data[i] for i in range(r, len(data), 2)]) for r in range(2)]
    naive.zero_grad()
    ((naive.loss(halves[0]) + naive.loss(halves[1])) / 2).backward()
    assert (naive.model.visual.proj.weight.grad - grads_1["visual.proj.weight"]).abs().max() > 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss_and_grads(rank: int, port: int, sizes: list[int], folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        img, txt = _features(sizes)
        start = sum(sizes[:rank])
        mine_img = img[start:start + sizes[rank]].clone().requires_grad_()
        mine_txt = txt[start:start + sizes[rank]].clone().requires_grad_()
        loss = clip_loss(mine_img, mine_txt, torch.tensor(5.0))
        loss.backward()
        torch.save({"loss": loss.detach(), "img": mine_img.grad, "txt": mine_txt.grad},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _features(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    return F.normalize(torch.randn(n, 8, generator=g), dim=-1), F.normalize(torch.randn(n, 8, generator=g), dim=-1)


@pytest.mark.slow
def test_gather_backward_with_unequal_batch_sizes(tmp_path):
    sizes = [3, 5]
    mp.spawn(_rank_loss_and_grads, args=(_free_port(), sizes, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    img, txt = (t.clone().requires_grad_() for t in _features(sizes))
    logits = 5.0 * img @ txt.T  # (8, 8): rows of rank 0 are 0..2, of rank 1 are 3..7
    labels = torch.arange(8)
    per_row = (F.cross_entropy(logits, labels, reduction="none")
               + F.cross_entropy(logits.T, labels, reduction="none")) / 2
    local = [per_row[:3].mean(), per_row[3:].mean()]
    (local[0] + local[1]).backward()  # what the ranks' backward passes compute together
    for r, rows in enumerate((slice(0, 3), slice(3, 8))):
        assert ranks[r]["loss"].item() == pytest.approx(local[r].item(), rel=1e-6)
        torch.testing.assert_close(ranks[r]["img"], img.grad[rows], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ranks[r]["txt"], txt.grad[rows], rtol=1e-5, atol=1e-7)
