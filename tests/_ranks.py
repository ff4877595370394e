"""Running the `mmkit` CLI as one process and under `torchrun --nproc_per_node 2` for the tests that compare
the two byte for byte (tests/cli/test_ranks*.py): both with OMP_NUM_THREADS=1 (equal thread counts), no GPU and
none of the launcher's variables inherited; reading torchrun's report of the ranks' exit codes.

Run as a script (`python tests/_ranks.py ARGS`) it is `mmkit ARGS` with test hooks set by the environment:
MMKIT_TEST_ROWS_PER_CHUNK (the texts tools read that many rows at a time: several chunks from a small file)
and MMKIT_TEST_FAIL_RANK (that rank's batch work raises RuntimeError("boom"), for the failure paths; or,
for the kinds of a user's mistake, the class MMKIT_TEST_FAIL_WITH names: ValueError, NonFiniteScores,
FileNotFoundError or InputsDiverged, with the message MMKIT_TEST_FAIL_MESSAGE).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ("-m", "mmkit.cli")
HOOKED_CLI = (str(Path(__file__).resolve()),)  # this file as a script: the CLI with the hooks above


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "PYTEST_CURRENT_TEST")}
    return {**keep, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **extra}


def alone(*args: str, cwd: Path, program: tuple[str, ...] = CLI, **extra: str) -> subprocess.CompletedProcess:
    """`mmkit ARGS` as one process; `extra`: environment variables (the hooks)."""
    return subprocess.run([sys.executable, *program, *args], cwd=cwd, env=env(**extra), capture_output=True,
                          text=True, timeout=120)


def torchrun(*args: str, cwd: Path, program: tuple[str, ...] = CLI, **extra: str) -> subprocess.CompletedProcess:
    """`mmkit ARGS` as two ranks of torchrun on this machine."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), *program, *args], cwd=cwd,
                          env=env(**extra), capture_output=True, text=True, timeout=180)


def ranks_exit_codes(run: subprocess.CompletedProcess) -> dict[int, int]:
    """{rank: exit code} of the failed ranks from torchrun's report (torchrun itself exits 1 when one fails)."""
    codes, rank = {}, None
    for line in run.stderr.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "rank":
            rank = int(value.split()[0])
        elif key.strip() == "exitcode" and rank is not None:
            codes[rank] = int(value.split()[0])
    return codes


def stopped_alike(run: subprocess.CompletedProcess, code: int) -> bool:
    """The ranks exited with `code`, but for one torchrun may have stopped (SIGTERM: -15) when the other's
    exit reached it first: a race between the two exits, so either rank may be the one reported."""
    codes = ranks_exit_codes(run)
    return run.returncode != 0 and code in codes.values() and set(codes.values()) <= {code, -15}


def mmkit_traceback(run: subprocess.CompletedProcess) -> bool:
    """Whether a rank printed a traceback through mmkit (torchrun prints its own when a rank fails)."""
    return any(line.strip().startswith("File ") and "/mmkit/" in line for line in run.stderr.splitlines())


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _hooked_main() -> int:
    import mmkit.inference.text_rows as text_rows
    from mmkit.cli import main
    from mmkit.inference.embed import Embedder
    from mmkit.inference.ranks import InputsDiverged
    from mmkit.inference.text_classify import TextClassifierPredictor
    from mmkit.inference.translator import Translator
    from mmkit.inference.zero_shot import NonFiniteScores, ZeroShotClassifier

    if os.environ.get("MMKIT_TEST_ROWS_PER_CHUNK"):
        text_rows.ROWS_PER_CHUNK = int(os.environ["MMKIT_TEST_ROWS_PER_CHUNK"])
    if os.environ.get("MMKIT_TEST_FAIL_RANK", "-") == os.environ.get("RANK", "0"):
        kinds = {k.__name__: k for k in (RuntimeError, ValueError, NonFiniteScores, FileNotFoundError,
                                          InputsDiverged)}
        error = kinds[os.environ.get("MMKIT_TEST_FAIL_WITH", "RuntimeError")]
        message = os.environ.get("MMKIT_TEST_FAIL_MESSAGE", "boom")

        def boom(*args: object, **kwargs: object) -> None:
            raise error(message)

        def scores(*args: object, **kwargs: object):  # a generator, as `predict` is: it fails when read
            raise error(message)
            yield

        TextClassifierPredictor.predict_batches = boom  # type: ignore[method-assign]
        Translator.translate_batches = boom  # type: ignore[method-assign]
        Embedder.embed_batches = boom  # type: ignore[method-assign]
        ZeroShotClassifier.predict = scores  # type: ignore[method-assign]
        ZeroShotClassifier.encode_images = boom  # type: ignore[method-assign]  (mmkit embed with a CLIP)
    return main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(_hooked_main())
