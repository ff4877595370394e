"""Batch inference shared by the ranks of one launcher (`mmkit.inference.ranks`): each rank's share and
device, then the real CLI under `torchrun --nproc_per_node 2` on tiny random-init models, its outputs
compared byte for byte with one process's (same thread count: OMP_NUM_THREADS=1 in both), with an odd
number of inputs, a bad input in the second rank's share and an output that cannot be written."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _ranks import alone as _alone
from _ranks import files as _files
from _ranks import free_port as _free_port
from _ranks import mmkit_traceback as _mmkit_traceback
from _ranks import stopped_alike as _stopped_alike
from _ranks import torchrun as _torchrun

from mmkit.cli.generate import _image_shares
from mmkit.inference.ranks import InputsDiverged, Lockstep, RankFailed, Ranks, _failure


# --- shares, devices, the environment: no processes ----------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_blocks_are_contiguous_and_cover_the_inputs_in_rank_order(n, world):
    blocks = [Ranks(r, world).block(n) if world > 1 else Ranks().block(n) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    owned = [[i for i in range(n) if Ranks(r, world).owns(i)] for r in range(world)] if world > 1 else [range(n)]
    assert sorted(i for o in owned for i in o) == list(range(n))


@pytest.mark.parametrize("prompts, images, batch", [(3, 3, 2), (1, 8, 3), (2, 1, 4), (5, 4, 4)])
def test_generate_shares_are_whole_batches_of_one_process(prompts, images, batch):
    shares = [_image_shares(Ranks(r, 2), prompts, images, batch) for r in range(2)]
    for n in range(prompts):
        a, b = shares[0][n], shares[1][n]
        assert list(a) + list(b) == list(range(images))  # rank 0's images first, none twice
        assert all(s.start % batch == 0 for s in (a, b) if s)  # a share starts where one process's batch does


def test_the_environment_names_the_ranks_and_the_device():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    ranks = Ranks.from_env(env)
    assert (ranks.rank, ranks.world_size, ranks.multi, ranks.first) == (1, 2, True, False)
    assert (ranks.device("cuda"), ranks.device("cpu"), ranks.device("cuda:0")) == ("cuda:1", "cpu", "cuda:0")
    assert Ranks.from_env({}) == Ranks() == Ranks.from_env({"WORLD_SIZE": "1", "RANK": "0"})
    assert Ranks().device("cuda") == "cuda" and not Ranks().multi
    for bad, message in [({**env, "RANK": "2"}, "RANK must be in [0, 2)"), ({**env, "RANK": "x"}, "RANK='x'"),
                         ({"WORLD_SIZE": "2", "RANK": "0"}, "no MASTER_ADDR or MASTER_PORT")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Ranks.from_env(bad)


def test_one_rank_runs_no_group_and_a_lockstep_is_its_items():
    ranks = Ranks()
    with ranks.group(), ranks.quiet():
        assert ranks.all_gather(3) == [3] and ranks.first_problem("p") == "p" and ranks.broadcast(4) == 4
        steps = Lockstep(ranks, iter("ab"))
        assert list(steps) == [["a"], ["b"]] and steps.done
    crash = _failure([("item", 1), ("error", ("rank 1: boom", None))])
    assert str(crash) == "rank 1: boom" and type(crash) is RankFailed
    uneven = _failure([("item", 1), ("end", None)])
    assert isinstance(uneven, InputsDiverged) and isinstance(uneven, RankFailed) and "rank 1" in str(uneven)


def _lockstep_worker(rank: int, port: int, out: str) -> None:
    """Three runs of rounds between two real ranks (gloo): a follower that fails, the first rank stopping
    early, inputs ending unevenly; what each rank saw goes to `out`.<rank>."""
    import json

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks, seen = Ranks(rank, 2), []

    def failing(n: int):
        yield from range(n)
        raise RuntimeError("boom")

    with ranks.group():
        for run, items in enumerate((failing(2) if rank else range(5), range(5), range(2 if rank else 3))):
            if ranks.first:
                got = []
                try:
                    with ranks.lockstep(items) as steps:
                        for parts in steps:
                            got.append(parts)
                            if run == 1 and len(got) == 2:
                                raise KeyError("the first rank stops")
                except (RankFailed, KeyError) as e:
                    seen.append([type(e).__name__, str(e), got])
            else:
                seen.append(ranks.lockstep(items).follow())
        seen.append(ranks.all_gather(rank))  # still in step: no rank was left waiting
    Path(f"{out}.{rank}").write_text(json.dumps(seen))


def test_lockstep_stops_every_rank_together_whoever_fails(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_lockstep_worker, args=(_free_port(), str(tmp_path / "seen")), nprocs=2, join=True)
    first, other = (json.loads((tmp_path / f"seen.{r}").read_text()) for r in (0, 1))
    assert first[0] == ["RankFailed", "rank 1: boom", [[0, 0], [1, 1]]]
    assert first[1] == ["KeyError", "'the first rank stops'", [[0, 0], [1, 1]]]
    assert first[2][0] == "InputsDiverged" and "rank 1 first" in first[2][1] and first[2][2] == [[0, 0], [1, 1]]
    assert other == [False, True, True, [0, 1]] and first[3] == [0, 1]


# --- the CLI under torchrun ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    from _bert import write_tiny_bert

    d = tmp_path_factory.mktemp("mlm")
    write_tiny_bert(d, "mlm")
    return d


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_embed_under_torchrun_writes_one_process_output_byte_for_byte(mlm_dir, tmp_path, suffix):
    texts = tmp_path / "texts.txt"  # 9 rows, the bad ones (empty, not UTF-8, unknown tokens) in both halves
    texts.write_bytes("the cat sees the moon.\na dog finds an apple\n\nthe end\nthe moon\n".encode()
                      + b"caf\xe9 au lait\n" + "жжж ж\na cat and a dog see the moon\nthe apple\n".encode())
    args = ["embed", str(texts), "--model", str(mlm_dir), "--batch-size", "2", "--quiet"]
    alone = _alone(*args, "--out", f"alone{suffix}", cwd=tmp_path)
    shared = _torchrun(*args, "--out", f"shared{suffix}", cwd=tmp_path)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr
    assert (tmp_path / f"alone{suffix}").read_bytes() == (tmp_path / f"shared{suffix}").read_bytes()
    if suffix == ".npy":
        assert np.isnan(np.load(tmp_path / "shared.npy")[[2, 5, 6]]).all()
    # bad rows and the summary once each, as alone (the summary names the output file)
    assert shared.stderr.replace("shared", "alone") == alone.stderr
    assert "line 3: empty text" in shared.stderr and "6 embeddings of dim 32" in shared.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["texts.txt", f"alone{suffix}", f"shared{suffix}"])


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, list[str]]:
    """A toy Whisper checkpoint and 5 inputs, the 4th (the second rank's share: 3 + 2) not audio."""
    from mmkit.audio import SAMPLE_RATE
    from mmkit.cli.bench.speech_inputs import synth_speechlike, write_toy_checkpoint

    d = tmp_path_factory.mktemp("speech")
    model = write_toy_checkpoint(d / "model", d_model=64, encoder_layers=1, decoder_layers=2, heads=4,
                                 n_text_tokens=400, eot_scale=3.0)
    names = []
    for i, name in enumerate("abcde"):
        if name == "d":
            (d / "d.wav").write_bytes(b"not audio at all")
        else:
            sf.write(d / f"{name}.wav", synth_speechlike(2 + i, seed=i), SAMPLE_RATE, subtype="PCM_16")
        names.append(str(d / f"{name}.wav"))
    return model, names


def test_transcribe_under_torchrun_writes_and_prints_what_one_process_does(speech, tmp_path):
    model, files = speech
    args = ["transcribe", *files, "--model", str(model), "--temperature", "0", "--max-new-tokens", "6",
            "--language", "en", "-f", "txt", "json", "--batch-size", "2"]
    for out in ("alone", "shared"):
        (tmp_path / out / "e.json").mkdir(parents=True)  # e's json cannot be written: a folder is in the way
    alone = _alone(*args, "-o", "alone", cwd=tmp_path)
    shared = _torchrun(*args, "-o", "shared", cwd=tmp_path)
    assert alone.returncode == 1 and _stopped_alike(shared, 1)
    assert _files(tmp_path / "shared") == _files(tmp_path / "alone")
    assert sorted(_files(tmp_path / "shared")) == ["a.json", "a.txt", "b.json", "b.txt", "c.json", "c.txt", "e.txt"]
    assert shared.stdout == alone.stdout and shared.stdout.count("\n") == 4  # in input order, from rank 0
    summary = [line for line in shared.stderr.splitlines() if "transcribed and wrote" in line]
    assert len(summary) == 1 and "3 of 5 files" in summary[0] and "d.wav" in summary[0] and "e.wav" in summary[0]
    assert not _mmkit_traceback(shared)


def test_transcribe_mistakes_stop_every_rank_before_work_printed_once(speech, tmp_path):
    model, files = speech
    (tmp_path / "file").write_text("a file, not a folder\n")
    shared = _torchrun("transcribe", *files, "--model", str(model), "-o", "file/out", cwd=tmp_path)
    mmkit_lines = [line for line in shared.stderr.splitlines() if line.startswith("mmkit transcribe")]
    assert mmkit_lines == [f"mmkit transcribe: error: {Path('file/out')}: file is not a folder"]
    assert _stopped_alike(shared, 2) and "INFO" not in shared.stderr  # the model was never loaded
    assert not _mmkit_traceback(shared)


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> tuple[Path, Path]:
    from _clip import save_tiny_clip
    from _dalle import write_tiny_export

    d = tmp_path_factory.mktemp("t2i")
    return write_tiny_export(d / "export"), save_tiny_clip(d / "clip")


def test_generate_under_torchrun_makes_one_process_files_and_ranking(t2i, tmp_path):
    export, clip = t2i
    # 3 prompts x 2 batches (2 + 1 images): rank 0 gets prompt 0 and the first batch of prompt 1
    args = ["generate", "a red circle", "a blue star on the left", "a small green square", "--model", str(export),
            "--num-images", "3", "--batch-size", "2", "--seed", "5", "--top-k", "8", "--rerank", str(clip),
            "--quiet"]
    alone = _alone(*args, "--out", "alone", cwd=tmp_path)
    shared = _torchrun(*args, "--out", "shared", cwd=tmp_path)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr
    assert _files(tmp_path / "shared") == _files(tmp_path / "alone")  # images, grids, manifest with the scores
    assert len(_files(tmp_path / "shared")) == 3 * 3 + 3 + 1
    assert shared.stdout.replace("shared", "alone") == alone.stdout and shared.stdout.count("\n") == 1


def test_generate_failing_on_the_second_rank_stops_all_and_writes_no_manifest(t2i, tmp_path):
    export, _ = t2i
    (tmp_path / "out" / "001-a-blue-star-2.png").mkdir(parents=True)  # rank 1's image: a folder is in the way
    shared = _torchrun("generate", "a red circle", "a blue star", "a small square", "--model", str(export),
                       "--num-images", "3", "--batch-size", "2", "--out", "out", "--quiet", cwd=tmp_path)
    assert _stopped_alike(shared, 2)
    lines = [line for line in shared.stderr.splitlines() if line.startswith("mmkit generate")]
    assert len(lines) == 1 and "001-a-blue-star-2.png" in lines[0] and not _mmkit_traceback(shared)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "manifest.json" not in names and not [n for n in names if n.endswith(".tmp")]
