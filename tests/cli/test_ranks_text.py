"""`mmkit classify-text` and `mmkit translate` shared by the ranks of one launcher: the shares of one
process's batches (no processes), then the real CLI under `torchrun --nproc_per_node 2` on tiny random-init
models, several chunks of 4 rows and batches of 2, its outputs and messages compared byte for byte with one
process's (OMP_NUM_THREADS=1 in both): an odd number of rows, bad rows in both halves, sentences given as
arguments, a usage mistake, a rank that fails."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _ranks import HOOKED_CLI, alone, stopped_alike, torchrun

from mmkit.inference.ranks import BatchShares, InputsDiverged, Ranks, Share, merged

CHUNKED = {"MMKIT_TEST_ROWS_PER_CHUNK": "4"}  # several chunks from a small file: batches numbered across them
TEXTS = ["the cat sees the moon.", "", "a dog finds an apple and the teacher reads a book", "caf\udce9 au lait",
         "the end", "жжж ж", "the moon", "a cat, and a dog", "the apple is red and the dog is not"]


def _messages(run, prog: str) -> list[str]:
    """The tool's own lines on stderr and its log's (no progress bar, no launcher's lines)."""
    return [line for line in run.stderr.splitlines() if line.startswith((prog, "INFO mmkit"))]


# --- shares and merges: no processes ---------------------------------------------------------------

def test_shares_of_chunks_merge_into_one_process_results():
    chunks = [[[0, 1], [2]], [[1], [0, 3], [2]], [[0]]]  # each chunk's batches, as one process plans them
    sizes = [3, 4, 1]
    alone = [merged([Share.of(n, b, list(range(n)))], [None] * n) for n, b in zip(sizes, chunks)]
    shares = [BatchShares(Ranks(r, 2)) for r in range(2)]
    mine = [[s.mine(b) for b in chunks] for s in shares]
    assert mine == [[[[0, 1]], [[1], [2]], []], [[[2]], [[0, 3]], [[0]]]]  # batches 0..5 round-robin: chunks add up
    others = []
    for c, (n, b) in enumerate(zip(sizes, chunks)):
        got = [Share.of(n, mine[r][c], list(range(n))) for r in range(2)]
        assert merged(got, [None] * n, others.append) == alone[c] == list(range(n))
    assert others == [1, 2, 1]
    with pytest.raises(InputsDiverged, match="rank 1 read 2 rows where the first read 3"):
        merged([Share.of(3, [[0]], [0, 1, 2]), Share(2, [1], [1])], [None] * 3)


# --- the CLI under torchrun ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from _bert import write_tiny_bert

    d = tmp_path_factory.mktemp("clf")
    write_tiny_bert(d, "classify")
    return d


@pytest.fixture(scope="module")
def translator(tmp_path_factory) -> Path:
    from tests.inference._translation_fixtures import write_native_export

    return write_native_export(tmp_path_factory.mktemp("translator"))


def _texts_file(path: Path) -> Path:
    """TEXTS as .csv or .jsonl: 9 rows, bad ones (empty, not UTF-8, unknown tokens) in both halves."""
    if path.suffix == ".csv":
        rows = ["id,text"] + [f'{i},"{t}"' for i, t in enumerate(TEXTS)]
    else:
        rows = [json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS]
    path.write_bytes("\n".join(rows).encode("utf-8", "surrogateescape") + b"\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_classify_text_under_torchrun_writes_one_process_output_byte_for_byte(classifier, tmp_path, suffix):
    texts = _texts_file(tmp_path / f"texts{suffix}")
    args = ["classify-text", texts.name, "--model", str(classifier), "--batch-size", "2", "--all-scores", "--quiet"]
    one = alone(*args, "--out", f"alone{suffix}", cwd=tmp_path, program=HOOKED_CLI, **CHUNKED)
    shared = torchrun(*args, "--out", f"shared{suffix}", cwd=tmp_path, program=HOOKED_CLI, **CHUNKED)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    assert (tmp_path / f"alone{suffix}").read_bytes() == (tmp_path / f"shared{suffix}").read_bytes()
    assert len((tmp_path / f"shared{suffix}").read_text().splitlines()) == 6 + (suffix == ".csv")
    # the bad rows and the summary once each, as alone (the summary names the output file)
    assert _messages(shared, "mmkit classify-text") == [line.replace("alone", "shared") for line in
                                                        _messages(one, "mmkit classify-text")]
    assert one.stderr.count("mmkit classify-text: ") == 4 and "6 predictions written" in one.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([texts.name, f"alone{suffix}", f"shared{suffix}"])


def _translation_inputs(path: Path) -> Path:
    """11 lines of .jsonl, bad ones in both halves: not JSON, blank (stays empty), not UTF-8, words the
    vocabulary lacks, a text of invisible characters; the others of various lengths."""
    lines = [b'{"text": "ten"}', b"not json", b'{"text": "October 15, 1963"}', b"",
             b'{"text": "four hundred and sixty-six"}', b'{"text": "caf\xe9"}', b'{"text": "Tuesday, January 28"}',
             '{"text": "жжж жжж"}'.encode(), b'{"text": "two thousand, four hundred and seventy-three"}',
             b'{"text": "\\u200b"}', b'{"text": "ten thousand"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_translate_a_file_under_torchrun_writes_one_process_output_byte_for_byte(translator, tmp_path):
    suffix = ".jsonl"  # with the errors (a .txt output has empty lines for them)
    source = _translation_inputs(tmp_path / "in.jsonl")
    args = ["translate", source.name, "--model", str(translator), "--batch-size", "2", "--max-length", "6"]
    one = alone(*args, "--output", f"alone{suffix}", "--export", "alone_export", cwd=tmp_path, program=HOOKED_CLI,
                **CHUNKED)
    shared = torchrun(*args, "--output", f"shared{suffix}", "--export", "shared_export", cwd=tmp_path,
                      program=HOOKED_CLI, **CHUNKED)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    out = (tmp_path / f"shared{suffix}").read_bytes()
    assert (tmp_path / f"alone{suffix}").read_bytes() == out and out.count(b"\n") == 11
    messages = _messages(shared, "mmkit translate")
    assert messages == [line.replace("alone", "shared") for line in _messages(one, "mmkit translate")]
    # the export saved once, by the first rank, after every rank found its folder empty
    assert messages[0] == "INFO mmkit: saved an mmkit export in shared_export"
    assert sorted(p.name for p in (tmp_path / "shared_export").iterdir()) == sorted(
        p.name for p in (tmp_path / "alone_export").iterdir())
    assert [m.split(":")[1] for m in messages[1:-1]] == [" line 2", " line 6", " line 8", " line 10"]
    assert messages[-1].endswith(f"wrote 11 translations (4 with errors) to shared{suffix}")


def test_translate_sentences_under_torchrun_print_what_one_process_does(translator, tmp_path):
    """Two seeded samples a sentence (Moses n-best lines): each sample drawn from its own seed on either rank."""
    args = ["translate", "ten", "October 15, 1963", "four hundred and sixty-six", "жжж жжж", "ten thousand",
            "--model", str(translator), "--batch-size", "2", "--max-length", "6", "--num-return-sequences", "2",
            "--temperature", "1.5", "--seed", "4"]
    one, shared = alone(*args, cwd=tmp_path), torchrun(*args, cwd=tmp_path)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    assert shared.stdout == one.stdout and shared.stdout.count("\n") == 9  # the unencodable line: one line
    assert [line.split(" ||| ")[0] for line in shared.stdout.splitlines()] == list("001122344")
    assert _messages(shared, "mmkit translate") == _messages(one, "mmkit translate") and "line 4" in shared.stderr


def test_translate_mistakes_stop_every_rank_printed_once(translator, tmp_path):
    shared = torchrun("translate", "ten", "--model", str(translator), "--output", "out.csv", cwd=tmp_path)
    assert _messages(shared, "mmkit translate") == [
        "mmkit translate: error: --output out.csv: use a .txt or .jsonl file"]
    assert stopped_alike(shared, 2) and not list(tmp_path.iterdir())


def test_a_rank_failing_stops_every_rank_and_writes_nothing(translator, tmp_path):
    source = _translation_inputs(tmp_path / "in.jsonl")
    shared = torchrun("translate", source.name, "--model", str(translator), "--output", "out.jsonl",
                      cwd=tmp_path, program=HOOKED_CLI, MMKIT_TEST_FAIL_RANK="1", **CHUNKED)
    assert stopped_alike(shared, 1) and "RuntimeError: boom" in shared.stderr  # rank 1's traceback, on its stderr
    assert _messages(shared, "mmkit translate")[-1] == "mmkit translate: error: rank 1: boom; nothing written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temp file
