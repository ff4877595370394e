"""`mmkit generate-text FILE` (`mmkit translate`'s file mode): each line's continuation is the one a run of that
prompt alone prints, greedy, beam or seeded samples, printed as several prompts are or written to a .txt/.jsonl
--output; empty lines stay empty, bad ones are reported and left empty; a mistake is one line and exit 2; under
`torchrun --nproc_per_node 2` rank 0 writes one process's output byte for byte."""
from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
from _gpt import write_tiny_gpt2
from _ranks import HOOKED_CLI, alone, torchrun

from mmkit.cli import main
from mmkit.cli.generate_text import escaped

PROG = "mmkit generate-text"
PROMPTS = ["The old man remembers", "", "A dog", "my friend finds the long road and", "the cat"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2")
    write_tiny_gpt2(directory, seed=1)
    return directory


def _alone(prompt: str, common: list[str], capsys) -> str:
    """What `mmkit generate-text PROMPT` prints (an empty line: the blank block a file's empty line prints)."""
    if not prompt:
        return "\n"
    assert main(["generate-text", prompt, *common]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("extra", [[], ["--temperature", "1.2", "--top-k", "30", "--seed", "5"],
                                   ["--beam-size", "2", "--stop", "e"]])
def test_a_file_continues_each_line_as_a_run_of_it_alone(model, tmp_path, capsys, extra):
    """Printed (batches of 2, shortest first, left-padded) and written to --output: each line's continuation is
    what the prompt alone gets; an empty line is an empty continuation, no error."""
    common = ["--model", str(model), "--max-new-tokens", "10", *extra]
    blocks = [_alone(p, common, capsys) for p in PROMPTS]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(PROMPTS) + "\n")
    assert main(["generate-text", str(source), *common, "--batch-size", "2"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "\n".join(blocks) and PROG not in printed.err
    out = tmp_path / "out.jsonl"
    assert main(["generate-text", str(source), *common, "--batch-size", "2", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS and all("error" not in r for r in rows)
    assert [r["text"] for r in rows] == [b[len(p):-1] for p, b in zip(PROMPTS, blocks)]


@pytest.mark.parametrize("extra", [["--temperature", "1.2", "--seed", "5"], ["--beam-size", "3"]],
                         ids=["samples", "beams"])
def test_a_file_with_n_continuations_a_line_gives_each_line_what_it_gets_alone(model, tmp_path, capsys, extra):
    """--num-return-sequences 3 over a file: printed, each line's 3 continuations after it as the prompt alone
    prints them; a .jsonl output's "texts" lists hold them ("text" the first), an empty line's list empty."""
    common = ["--model", str(model), "--max-new-tokens", "8", "--num-return-sequences", "3", *extra]
    blocks = [_alone(p, common, capsys) for p in PROMPTS]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(PROMPTS) + "\n")
    assert main(["generate-text", str(source), *common, "--batch-size", "2"]) == 0
    assert capsys.readouterr().out == "\n".join(blocks)
    out = tmp_path / "out.jsonl"
    assert main(["generate-text", str(source), *common, "--batch-size", "2", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [[] if not p else [t[len(p):] for t in b.rstrip("\n").split("\n\n")] for p, b in zip(PROMPTS, blocks)]
    assert [r["texts"] for r in rows] == texts and all(len(t) == 3 for p, t in zip(PROMPTS, texts) if p)
    assert [r["text"] for r in rows] == [t[0] if t else "" for t in texts]


def test_txt_and_jsonl_outputs_keep_the_lines_and_name_the_bad_ones(model, tmp_path, capsys, caplog):
    """A .jsonl file's "text" field, its bad lines (not JSON, no "text", not UTF-8, NUL bytes, nothing visible)
    reported once each and left empty, a blank one empty; the .txt output line N (escaped) is line N's text."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "A dog"}\nnot json\n\n{"prompt": "A cat"}\n{"text": "caf\xe9"}\n'
                       b'{"text": "th\\u0000e"}\n{"text": "\\u200b"}\n{"text": "the moon"}\n')
    common = ["generate-text", str(source), "--model", str(model), "--max-new-tokens", "8"]
    caplog.set_level(logging.INFO, logger="mmkit")
    assert main([*common, "--output", str(tmp_path / "out.jsonl")]) == 0
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r.get("error") for r in rows] == [
        None, 'line 2: not a JSON object with a "text" string', None, 'line 4: not a JSON object with a "text" string',
        "line 5: not UTF-8 (byte 0xe9 at column 14)", "line 6: holds NUL bytes (UTF-16 text? save it as UTF-8)",
        "line 7: empty text (only control or invisible characters)", None]
    assert [f"{PROG}: {r['error']}" for r in rows if "error" in r] == [
        line for line in err.splitlines() if line.startswith(PROG)]
    assert [bool(r["text"]) for r in rows] == [True] + [False] * 6 + [True]
    assert [r["prompt"] for r in rows] == ["A dog"] + [""] * 6 + ["the moon"]
    assert "wrote 8 continuations (5 with errors)" in caplog.text
    assert main([*common, "--output", str(tmp_path / "out.txt")]) == 0
    lines = (tmp_path / "out.txt").read_text().split("\n")
    assert lines == [escaped(r["text"]) for r in rows] + [""]


def test_escaped_continuations_are_one_line_each_and_read_back():
    text = 'a \\n b\nc\r\nd\x0ce\x1cf\x85g\u2028h\u2029"é\t'
    assert escaped(text) == 'a \\\\n b\\nc\\r\\nd\\x0ce\\x1cf\\x85g\\u2028h\\u2029"é\t'
    assert len(escaped(text).splitlines()) == 1 and ast.literal_eval(f"'''{escaped(text)}'''") == text


def test_prompts_with_output_and_a_cut_prompt(model, tmp_path, capsys, caplog):
    """Prompts given as arguments go to --output as a file's lines; a line longer than the context is cut to its
    end with a warning naming the line, and echoed as the model reads it (after "…"), as one prompt alone."""
    long = "The first words are dropped. " + "A small bird follows the moon. " * 12
    common = ["--model", str(model), "--max-new-tokens", "4"]
    assert main(["generate-text", "A dog", long, *common, "--output", str(tmp_path / "o.txt")]) == 0
    assert (tmp_path / "o.txt").read_text().count("\n") == 2 and "prompt 2: the prompt has" in caplog.text
    cut = _alone(long, common, capsys)
    source = tmp_path / "p.txt"
    source.write_text(f"A dog\n{long}\n")
    caplog.clear()
    assert main(["generate-text", str(source), *common]) == 0
    assert capsys.readouterr().out.split("\n\n")[1] == cut and cut.startswith("…")
    assert "line 2: the prompt has" in caplog.text and "keeping its last 60" in caplog.text


def test_a_file_with_no_usable_line_exits_1(model, tmp_path, capsys):
    """UTF-16 text (not UTF-8 as a whole): every line reported, nothing continued: 1, as translate."""
    source = tmp_path / "utf16.txt"
    source.write_bytes("A dog\nthe cat\n".encode("utf-16"))
    assert main(["generate-text", str(source), "--model", str(model), "--output", str(tmp_path / "o.jsonl")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(PROG)]
    assert len(err) == 3 and all("not UTF-8" in line or "NUL" in line for line in err)


def test_mistakes_are_one_line_and_exit_2(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("p.txt", "q.txt", "p.csv"):
        (tmp_path / name).write_text("A dog\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "out.txt").mkdir()
    m = ["--model", str(model)]
    for argv, message in (
            (["missing.txt", *m], "missing.txt: no such file"),
            (["p.csv", *m], 'p.csv: use a .txt or .jsonl file (one prompt a line, or JSON objects with a "text"'),
            (["folder", *m], "folder: a folder; give a .txt or .jsonl file (or prompts)"),
            (["p.txt", "q.txt", *m], "p.txt: a file or folder among 2 arguments; generate-text reads one .txt/.jsonl "
                                     "file at a time (or give only prompts)"),
            (["-", *m], "-: standard input is not read; give prompts or a .txt/.jsonl file"),
            (["p.txt", *m, "--output", "o.csv"], "--output o.csv: use a .txt or .jsonl file"),
            (["p.txt", *m, "--output", "p.txt"], "--output p.txt is the input file p.txt"),
            (["p.txt", *m, "--output", "out.txt"], "cannot write out.txt: it is a folder"),
            (["p.txt", *m, "--output", "o.txt", "--temperature", "1", "--num-return-sequences", "2"],
             "--num-return-sequences 2: a .txt output holds one continuation a line; write a .jsonl"),
            (["p.txt", *m, "--max-new-tokens", "64"],
             "--max-new-tokens 64 leaves no room for a prompt in the model's context of 64 tokens"),
            (["p.txt", *m, "--top-p", "1.5"], "top_p must be in (0, 1]")):
        assert main(["generate-text", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.txt", "p.csv", "p.txt", "q.txt"]


def test_a_file_under_torchrun_writes_one_process_output_byte_for_byte(model, tmp_path):
    """Chunks of 4 lines, batches of 2 numbered across them, seeded samples; bad lines in both halves: the output
    and the tool's messages are one process's."""
    source = tmp_path / "in.txt"
    source.write_bytes(b"the cat sees\n\nA dog\ncaf\xe9\nmy friend finds the long road\nthe moon\n\x01\n"
                       b"a small bird\nthe teacher calls our neighbour\n")
    args = ["generate-text", source.name, "--model", str(model), "--batch-size", "2", "--max-new-tokens", "6",
            "--temperature", "1.1", "--seed", "3"]
    chunked = {"MMKIT_TEST_ROWS_PER_CHUNK": "4"}
    one = alone(*args, "--output", "alone.jsonl", cwd=tmp_path, program=HOOKED_CLI, **chunked)
    shared = torchrun(*args, "--output", "shared.jsonl", cwd=tmp_path, program=HOOKED_CLI, **chunked)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    out = (tmp_path / "shared.jsonl").read_bytes()
    assert (tmp_path / "alone.jsonl").read_bytes() == out and out.count(b"\n") == 9

    def messages(run) -> list[str]:
        return [line.replace("alone", "shared") for line in run.stderr.splitlines()
                if line.startswith((PROG, "INFO mmkit:"))]

    assert messages(shared) == messages(one) == [
        "INFO mmkit: decoding with the model's own settings: top_k 50 (--top-k ... to choose others)",  # once
        f"{PROG}: line 4: not UTF-8 (byte 0xe9 at column 4)",
        f"{PROG}: line 7: empty text (only control or invisible characters)",
        "INFO mmkit: wrote 9 continuations (2 with errors) to shared.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.jsonl", "in.txt", "shared.jsonl"]


def test_prompts_under_torchrun_are_printed_once(model, tmp_path):
    """Several prompts without --output are shared by the ranks as a file's lines and printed once, as one process
    prints them; a single prompt is continued and printed by rank 0 alone."""
    common = ["--model", str(model), "--batch-size", "1", "--max-new-tokens", "6"]
    several = ["generate-text", "the cat sees", "A dog", "my friend finds the long road", *common]
    one, shared = alone(*several, cwd=tmp_path), torchrun(*several, cwd=tmp_path)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    assert shared.stdout == one.stdout and one.stdout.count("the cat sees") == 1
    single = ["generate-text", "the moon", *common]
    one, shared = alone(*single, cwd=tmp_path), torchrun(*single, cwd=tmp_path)
    assert one.returncode == 0 and shared.returncode == 0, shared.stderr
    assert shared.stdout == one.stdout and one.stdout.startswith("the moon") and one.stdout.count("the moon") == 1
