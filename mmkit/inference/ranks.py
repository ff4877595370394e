"""The ranks of one launcher (torchrun, SLURM, anything that sets torch.distributed's WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT) sharing a batch-inference run (`mmkit transcribe`, `generate`,
`embed`, `classify-text`, `translate`, `label`): each rank's device and share of the inputs, and the few exchanges that
combine their results over a gloo group (small Python objects: problems, counts, scores, a chunk of vectors;
never a model's tensors). With no such variables (or WORLD_SIZE=1) there is one rank, no process group, and a
tool runs exactly as alone.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")  # a sequence of one slot per item: a list, or an array
K = TypeVar("K")
TIMEOUT = timedelta(minutes=30)  # a rank that waits longer for the others than this gives up (gloo's default)


class RankFailed(RuntimeError):
    """Another rank failed while the ranks worked in step (`Lockstep`); the message names it. Where that rank's
    error was of a kind the tools tell apart by exit code (`_KINDS`: a ValueError or an OSError, a user's
    mistake; an input that changed), this is of that kind too, so the first rank's tool ends the run as that
    rank would have alone (one line, its code); else (a crash) a plain RankFailed."""


class InputsDiverged(RankFailed):
    """The ranks' items ended unevenly: the input they all read changed while it was read."""


class _ValueErrorElsewhere(RankFailed, ValueError):
    """Another rank's ValueError (a bad input, option or checkpoint), handled as this rank's would be."""


class _OSErrorElsewhere(RankFailed, OSError):
    """Another rank's OSError (a file it could not read or write), handled as this rank's would be."""


# The kinds of error a failing rank names to the first (the first of them its error is: `_kind`), each with
# what the first rank raises for it (`_failure`); the kind's name travels, not the exception, which may not
# pickle. Any other error, a crash, is a plain RankFailed.
_KINDS: dict[type[Exception], type[RankFailed]] = {
    InputsDiverged: InputsDiverged, ValueError: _ValueErrorElsewhere, OSError: _OSErrorElsewhere}


def _kind(e: Exception) -> str | None:
    return next((kind.__name__ for kind in _KINDS if isinstance(e, kind)), None)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launcher's `world_size` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank on this machine: its GPU

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Ranks":
        """The ranks torch.distributed's environment names (`os.environ` by default); a ValueError of one
        line for a half-set or inconsistent one."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        values = {}
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            text = env.get(name, "0" if name == "LOCAL_RANK" else "")
            if not text.strip().isdigit():
                raise ValueError(f"{name}={text!r} in the environment: torch.distributed's launcher sets it to a "
                                 "whole number (WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE)")
            values[name] = int(text)
        world, rank = values["WORLD_SIZE"], values["RANK"]
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} with WORLD_SIZE={world} in the environment: RANK must be in [0, {world})")
        if world > 1:
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
            if missing:
                raise ValueError(f"WORLD_SIZE={world} but no {' or '.join(missing)} in the environment: launch with "
                                 "torchrun (or set them as it does)")
        return cls(rank, world, values["LOCAL_RANK"]) if world > 1 else cls()

    @property
    def multi(self) -> bool:
        return self.world_size > 1

    @property
    def first(self) -> bool:
        """Rank 0: the one that prints summaries and writes merged outputs."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device for `--device`: a plain "cuda" is the rank's own GPU (cuda:LOCAL_RANK);
        anything else (cpu, cuda:N, mps) as given."""
        return f"cuda:{self.local_rank}" if self.multi and device == "cuda" else device

    def block(self, n: int) -> range:
        """This rank's contiguous block of range(n): blocks in rank order, sizes differing by one at most
        (the first n % world_size ranks get one more), so concatenating them in rank order is range(n)."""
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return range(start, start + q + (self.rank < r))

    def owns(self, index: int) -> bool:
        """Round-robin ownership of work item `index` (one rank's items are spread over the whole run)."""
        return index % self.world_size == self.rank

    @contextlib.contextmanager
    def group(self) -> Iterator["Ranks"]:
        """The run: SIGTERM (`timeout`, a scheduler, a launcher stopping the ranks when one failed) raised as
        KeyboardInterrupt, as Ctrl-C is, so the tool's context managers remove their temp files and it says it
        was interrupted (its default action kills the process on the spot, temp files left behind); with several
        ranks also a gloo process group and the logging of all ranks but the first raised to errors only. All
        undone at the end. Only the main thread may set a signal handler: in another SIGTERM stays as it is."""
        with sigterm_interrupts():
            if not self.multi:
                yield self
                return
            import torch.distributed as dist

            root, level = logging.getLogger(), logging.getLogger().level
            started = not dist.is_initialized()
            try:
                if started:
                    dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=TIMEOUT)
                if not self.first:
                    root.setLevel(logging.ERROR)
                yield self
                # The ranks leave together: a launcher stops the others as soon as one exits with an error,
                # which must not cut the first rank off before it has printed the run's message or summary.
                dist.barrier()
            finally:
                root.setLevel(level)
                if started and dist.is_initialized():
                    dist.destroy_process_group()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """What ranks other than the first print in this block is dropped (argparse's usage and errors, that
        every rank meets alike: printed once)."""
        if self.first:
            yield
            return
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.multi:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """The first rank's `obj`, on every rank."""
        if not self.multi:
            return obj
        import torch.distributed as dist

        message = [obj]
        dist.broadcast_object_list(message, src=0)
        return message[0]

    def first_problem(self, problem: str | None) -> str | None:
        """After a step every rank takes before the work (checks, loading the model): the problem of the first
        rank that met one, on every rank, so all stop together (a mistake is met alike by every rank and printed
        once, by the first: the caller prints when `first`; a rank's own, a device it lacks, stops them all)."""
        return next((p for p in self.all_gather(problem) if p is not None), None)

    def lockstep(self, items: Iterable[T]) -> "Lockstep[T]":
        return Lockstep(self, items)

    def to_first(self, parts: Iterable[tuple[K, T]], write: Callable[[Iterator[tuple[K, list[T]]]], int]) -> int:
        """A run whose one output the first rank writes: each of every rank's `parts` is (what the first rank
        keeps for itself, what the rank hands it); the first rank calls `write` on the rounds, (its kept part,
        every rank's handed part in rank order), which returns the run's exit code, and every rank returns that
        code. A rank that fails ends the rounds for all (RankFailed, of its error's kind, raised from them on the
        first rank, for `write` to report); `write` raising makes the others return 1. One rank: no exchange at
        all."""
        if not self.first:
            self.lockstep(part for _, part in parts).follow()
            return self.broadcast(None)
        kept: list[K] = []

        def handed() -> Iterator[T]:
            for mine, part in parts:
                kept.append(mine)
                yield part

        steps, code = self.lockstep(handed()), 1
        try:
            code = write((kept.pop(0), got) for got in steps)
        finally:
            steps.close()  # the others wait for a last round if the output stopped early
            self.broadcast(code)
        return code


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raised as KeyboardInterrupt within the block, as Ctrl-C is: the stack unwinds (context managers
    clean up) and the tool says it was interrupted, where SIGTERM's default action ends the process on the spot.
    Only the main thread may set a signal handler: in another SIGTERM stays as it is."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        yield
    finally:
        if in_main:  # None: a handler not set from Python, which cannot be put back; the default then
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupt(signum: int, frame: Any) -> None:
    """A signal's handler that raises KeyboardInterrupt in the main thread, where Python runs handlers: the
    stack unwinds as for Ctrl-C (context managers clean up), which the tool reports as an interruption."""
    raise KeyboardInterrupt(f"signal {signum}")


class Lockstep(Generic[T]):
    """Rounds in which every rank hands the first rank its next item: the first rank iterates the rounds
    (a list of every rank's item per round, in rank order), the others `follow`. The rounds end when every
    rank's items end; a rank whose items end early (its input changed), one that raised, or the first rank
    stopping (`close`, also on an error of its own) ends them for all: no rank is left waiting.
    Memory: one round's items."""

    def __init__(self, ranks: Ranks, items: Iterable[T]) -> None:
        self.ranks, self.items, self.done = ranks, items, False

    def _round(self, kind: str, item: Any = None, verdict: str = "go") -> tuple[list[tuple[str, Any]], str]:
        """One round: gather (kind, item) to the first rank, which sends back `verdict` ("go" or "stop")
        decided by `decide`; returns (the gathered contributions on the first rank, the verdict)."""
        import torch.distributed as dist

        got: list[Any] | None = [None] * self.ranks.world_size if self.ranks.first else None
        dist.gather_object((kind, item), got, dst=0)
        message = [self._decide(got) if got is not None and verdict == "go" else verdict]
        dist.broadcast_object_list(message, src=0)
        self.done = self.done or message[0] != "go"
        return got or [], message[0]

    @staticmethod
    def _decide(got: list[tuple[str, Any]]) -> str:
        kinds = {kind for kind, _ in got}
        return "go" if kinds == {"item"} else "stop"

    def __iter__(self) -> Iterator[list[T]]:
        """(the first rank) Every rank's item of each round; RankFailed when another rank failed or the ranks'
        items ended unevenly."""
        if not self.ranks.multi:
            yield from ([item] for item in self.items)
            self.done = True
            return
        for item in self.items:
            got, verdict = self._round("item", item)
            if verdict != "go":
                raise _failure(got)
            yield [x for _, x in got]
        got, _ = self._round("end")
        if {kind for kind, _ in got} != {"end"}:
            raise _failure(got)

    def close(self) -> None:
        """(the first rank) Stop the others if the rounds did not end: one last round that tells them so."""
        if self.ranks.multi and not self.done:
            self._round("end", verdict="stop")

    def __enter__(self) -> "Lockstep[T]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def follow(self) -> bool:
        """(ranks other than the first) Hand over the items until the first rank stops the rounds; False if
        this rank's items raised: the first rank is told the message and the kind of error (`_kind`), and
        reports it; a crash's traceback is logged here as well."""
        try:
            for item in self.items:
                if self._round("item", item)[1] != "go":
                    return True
        except Exception as e:  # noqa: BLE001 - the first rank must hear of it, or it waits for this rank
            kind = _kind(e)
            if kind is None:  # a crash; a user's mistake is the first rank's one line, as in one process
                log.exception("rank %d failed", self.ranks.rank)
            if not self.done:
                self._round("error", (f"rank {self.ranks.rank}: {e}", kind))
            return False
        if not self.done:
            self._round("end")
        return True


def _failure(got: list[tuple[str, Any]]) -> RankFailed:
    """What the first rank raises for a round that ended the rounds early: the first failing rank's error, of
    the kind it named (`_KINDS`), or InputsDiverged for a rank whose items ended first."""
    errors = [item for kind, item in got if kind == "error"]
    if errors:
        message, name = errors[0]
        return next((raised for kind, raised in _KINDS.items() if kind.__name__ == name), RankFailed)(message)
    ended = [str(rank) for rank, (kind, _) in enumerate(got) if kind == "end"]
    return InputsDiverged(f"the input changed while it was read: the rows ran out on rank {', '.join(ended)} "
                          "first; nothing written")


@dataclass(frozen=True)
class Share(Generic[T]):
    """A rank's results for a chunk of `size` items: those of the items at `index`, in that order."""

    size: int
    index: list[int]
    results: list[T]

    @classmethod
    def of(cls, size: int, batches: Sequence[Sequence[int]], results: Sequence[T]) -> "Share[T]":
        """The share of the items in `batches` (index lists) out of `results`, one per item of the chunk."""
        index = [i for batch in batches for i in batch]
        return cls(size, index, [results[i] for i in index])


class BatchShares:
    """Round-robin shares of one process's batches in a run read a chunk at a time: every rank plans each
    chunk's batches as one process would and runs those it `owns`, numbered across the whole run (so a run of
    many small chunks still spreads over the ranks). The very batches of one process, so the results are bit
    for bit one process's (at equal thread counts)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks, self.planned = ranks, 0

    def mine(self, batches: Sequence[T]) -> list[T]:
        """This rank's batches among the next chunk's `batches`."""
        start, self.planned = self.planned, self.planned + len(batches)
        return [batch for k, batch in enumerate(batches, start) if self.ranks.owns(k)]


def merged(shares: Sequence[Share[T]], into: S, on_others: Callable[[int], None] | None = None) -> S:
    """(the first rank) `into`, one slot per item of a chunk (a list, or an array whose rows are the results),
    with every rank's `shares` (in rank order) in place: one process's results. `on_others(n)`: the n results
    the other ranks made. InputsDiverged when a rank read another number of items (the input changed while the
    ranks read it)."""
    for rank, share in enumerate(shares):
        if share.size != len(into):
            raise InputsDiverged(f"the input changed while it was read: rank {rank} read {share.size} rows where "
                                 f"the first read {len(into)}; nothing written")
        for i, result in zip(share.index, share.results):
            into[i] = result
    if on_others is not None:
        on_others(sum(len(share.index) for share in shares[1:]))
    return into
