"""A rank other than the first failing while the ranks work in step (`mmkit.inference.ranks.Lockstep`): the
first rank hears the kind of its error with the message, so a user's mistake (a ValueError, an OSError, an
input that changed) ends the run with the one line and the exit code that rank would have given alone, and
a crash stays a crash. Two real ranks (gloo), then the real CLI under `torchrun --nproc_per_node 2` with the
error raised on rank 1 only (tests/_ranks.py's hooks), compared with one process meeting it."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _ranks import HOOKED_CLI, alone, free_port, mmkit_traceback, stopped_alike, torchrun

from mmkit.inference.ranks import InputsDiverged, RankFailed, Ranks

FAILURES = [ValueError("bad row"), FileNotFoundError(2, "No such file or directory"),
            InputsDiverged("the rows ran out"), RuntimeError("boom")]


def _kinds_worker(rank: int, port: int, out: str) -> None:
    """Rank 1 fails in the second round with each of `FAILURES` in turn; rank 0 records what it raised, rank 1
    whether it logged a traceback."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks, seen, logged = Ranks(rank, 2), [], []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.exc_info is not None)  # type: ignore[method-assign]
    logging.getLogger("mmkit.inference.ranks").addHandler(handler)

    def failing(error: Exception):
        yield 0
        raise error

    with ranks.group():
        for error in FAILURES:
            if ranks.first:
                try:
                    for _ in ranks.lockstep(range(3)):
                        pass
                except RankFailed as e:
                    seen.append([str(e), isinstance(e, ValueError), isinstance(e, OSError),
                                 isinstance(e, InputsDiverged)])
            else:
                del logged[:]
                ranks.lockstep(failing(error)).follow()
                seen.append(any(logged))
    Path(f"{out}.{rank}").write_text(json.dumps(seen))


def test_the_first_rank_raises_the_kind_of_error_the_failing_rank_met(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_kinds_worker, args=(free_port(), str(tmp_path / "seen")), nprocs=2, join=True)
    first, other = (json.loads((tmp_path / f"seen.{r}").read_text()) for r in (0, 1))
    assert first == [["rank 1: bad row", True, False, False],
                     ["rank 1: [Errno 2] No such file or directory", False, True, False],
                     ["rank 1: the rows ran out", False, False, True],
                     ["rank 1: boom", False, False, False]]
    assert other == [False, False, False, True]  # a traceback for the crash only: a mistake is the first's line


def _lines(run, prog: str) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith(prog)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny CLIP and 5 images in batches of 2: rank 1 owns the second (2.png, 3.png), rank 0 the others."""
    from _clip import save_tiny_clip

    d = tmp_path_factory.mktemp("label")
    folder = d / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return save_tiny_clip(d / "clip"), folder


def test_a_mistake_on_rank_1_ends_label_with_one_line_and_2_as_one_process(photos, tmp_path):
    """Scoring rank 1's images fails as broken weights make it fail (non-finite scores, a ValueError): as alone,
    one line and exit 2 on every rank, and the outputs the run made are gone again (it wrote no row)."""
    clip, folder = photos
    args = ["label", str(folder), "--labels", "cat,dog", "--model", str(clip), "--out", "out/labels.csv",
            "--batch-size", "2", "--num-workers", "0", "--precision", "fp32", "--quiet"]
    hook = {"MMKIT_TEST_FAIL_WITH": "NonFiniteScores", "MMKIT_TEST_FAIL_MESSAGE": "non-finite scores for 2.png"}
    (tmp_path / "alone").mkdir()
    (tmp_path / "shared").mkdir()
    one = alone(*args, cwd=tmp_path / "alone", program=HOOKED_CLI, MMKIT_TEST_FAIL_RANK="0", **hook)
    shared = torchrun(*args, cwd=tmp_path / "shared", program=HOOKED_CLI, MMKIT_TEST_FAIL_RANK="1", **hook)
    assert _lines(one, "mmkit label") == ["mmkit label: error: non-finite scores for 2.png"] and one.returncode == 2
    assert _lines(shared, "mmkit label") == ["mmkit label: error: rank 1: non-finite scores for 2.png"], shared.stderr
    assert stopped_alike(shared, 2) and not mmkit_traceback(shared)
    assert not list((tmp_path / "shared").iterdir()) and not list((tmp_path / "alone").iterdir())


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    from _bert import write_tiny_bert

    d = tmp_path_factory.mktemp("mlm")
    write_tiny_bert(d, "mlm")
    return d


@pytest.mark.parametrize("error, message, code", [
    ("InputsDiverged", "texts.txt changed while it was read (more than its 5 rows); nothing written", 2),
    ("FileNotFoundError", "texts.txt: no such file (it was removed while it was read)", 1),
    ("ValueError", "texts.csv: row 4: a quoted field never ends", 2),  # a bad input met mid-run, as up front
])
def test_an_error_on_rank_1_ends_embed_with_the_code_of_one_process(mlm_dir, tmp_path, error, message, code):
    """Embedding rank 1's batches fails: the texts file changed while it was read (exit 2 alone), or it could
    no longer be read (an OSError: 1 alone, as a failure to write), or a row turned out bad (a ValueError: 2);
    every rank ends with that code, the first saying it in one line, and nothing is written."""
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sees the moon.\na dog finds an apple\nthe end\nthe moon\na cat and a dog\n")
    args = ["embed", texts.name, "--model", str(mlm_dir), "--batch-size", "2", "--quiet"]
    hook = {"MMKIT_TEST_FAIL_WITH": error, "MMKIT_TEST_FAIL_MESSAGE": message}
    one = alone(*args, "--out", "alone.npy", cwd=tmp_path, program=HOOKED_CLI, MMKIT_TEST_FAIL_RANK="0", **hook)
    shared = torchrun(*args, "--out", "shared.npy", cwd=tmp_path, program=HOOKED_CLI, MMKIT_TEST_FAIL_RANK="1",
                      **hook)
    (alone_line,) = _lines(one, "mmkit embed")
    assert one.returncode == code and alone_line.startswith(f"mmkit embed: error: {message}"), one.stderr
    (line,) = _lines(shared, "mmkit embed")
    # "; nothing written" for an OSError
    assert line.startswith(f"mmkit embed: error: rank 1: {message}"), shared.stderr
    assert stopped_alike(shared, code) and not mmkit_traceback(shared)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]
