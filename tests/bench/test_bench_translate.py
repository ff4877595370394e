"""Smoke test of `mmkit bench translate` at a tiny size: both implementations produce the same
greedy and beam tokens in every cell, the int8 path's agreement is reported, the held-out
scorer compares fp32 with int8, and the reports hold together. Never timings."""
from __future__ import annotations

import contextlib

import pytest

from mmkit.cli.bench.translate import format_held_out, format_report, main, run_held_out, run_translate_bench
from tests.inference._translation_fixtures import write_native_export


def test_bench_translates_to_the_same_tokens_in_every_cell():
    result = run_translate_bench(dim=32, layers=1, heads=4, ffn=64, vocab_size=300, batch_sizes=(1, 3), beams=(1, 2),
                                 source_tokens=6, new_tokens=8, rounds=1, warmup=0, threads=1)
    cells = result["cells"]
    assert [(c["beams"], c["batch_size"]) for c in cells] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(c["same_tokens"] is True and c["agreement"]["mmkit"] == 1.0 for c in cells)
    for c in cells:
        for k in ("mmkit", "mmkit int8"):
            assert c["ratio"][k] == c["tokens_per_s"][k] / c["tokens_per_s"]["transformers"]
        assert 0.0 <= c["agreement"]["mmkit int8"] <= 1.0
    report = format_report(result)
    assert report.count("yes") == 4 and "beam 2        3" in report and "mmkit int8 tok/s" in report
    assert "mmkit bf16" not in report


def test_bench_adds_a_bf16_column_with_its_agreement():
    """bf16 is emulated (slowly) where the CPU lacks it: one tiny cell, agreement only."""
    result = run_translate_bench(dim=32, layers=1, heads=4, ffn=64, vocab_size=300, batch_sizes=(2,), beams=(1,),
                                 source_tokens=6, new_tokens=8, rounds=1, warmup=0, threads=1, int8=False, bf16=True)
    (cell,) = result["cells"]
    assert set(cell["ratio"]) == {"mmkit", "mmkit bf16"} and 0.0 <= cell["agreement"]["mmkit bf16"] <= 1.0
    assert "mmkit bf16 tok/s" in format_report(result) and "bf16 same tokens" in format_report(result)


def test_bench_adds_ctranslate2_columns_with_the_same_tokens():
    """CTranslate2 per compute type on the same weights: float32 decodes transformers' tokens in every cell
    (greedy and beam; the conversion keeps the decoder's start token), int8 reports its agreement, and the report
    compares mmkit's fastest path with CTranslate2's."""
    pytest.importorskip("ctranslate2")
    result = run_translate_bench(dim=32, layers=1, heads=4, ffn=64, vocab_size=300, batch_sizes=(1, 3), beams=(1, 2),
                                 source_tokens=6, new_tokens=8, rounds=1, warmup=0, threads=1, int8=False,
                                 ctranslate2=("int8", "float32"))
    for c in result["cells"]:
        assert set(c["ratio"]) == {"mmkit", "ctranslate2 int8", "ctranslate2 float32"}
        assert c["agreement"]["ctranslate2 float32"] == 1.0 and 0.0 <= c["agreement"]["ctranslate2 int8"] <= 1.0
    report = format_report(result)
    assert "ctranslate2 float32 same tokens" in report and report.count("(mmkit vs ctranslate2") == 4


def test_ctranslate2_columns_without_ctranslate2_or_of_an_unknown_type_are_one_line(monkeypatch, capsys):
    import importlib.util

    with pytest.raises(SystemExit) as exit_:
        main(["--ctranslate2", "int4"])
    assert exit_.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2"
                        else find_spec(name, *a))
    assert main(["--ctranslate2", "int8", "--layers", "1", "--dim", "8", "--heads", "2", "--ffn", "8",
                 "--vocab-size", "20"]) == 2
    assert capsys.readouterr().err == ("mmkit bench translate: error: --ctranslate2 needs ctranslate2, which is not "
                                       "installed (pip install ctranslate2)\n")


def test_held_out_scores_fp32_and_int8_of_an_export(tmp_path, capsys):
    export = str(write_native_export(tmp_path / "export"))
    result = run_held_out(export, n=12, beams=(1, 2), max_new_tokens=6, threads=1)
    assert [(r["beams"], r["quantize"]) for r in result["rows"]] == [(1, "none"), (1, "int8"), (2, "none"),
                                                                      (2, "int8")]
    assert all(0 <= r["bleu"] <= 100 and 0 <= r["exact"] <= 100 for r in result["rows"])
    assert 0 <= result["rows"][1]["same_as_fp32"] <= 100 and "same_as_fp32" not in result["rows"][0]
    assert "beam 2    int8" in format_held_out(result)
    assert main(["--held-out", str(tmp_path / "missing")]) == 2
    assert "not a model directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv, unused", [
    (["--held-out", "x", "--rounds", "2", "--precision", "fp32"], "--precision and --rounds: not taken with"),
    (["--held-out", "x", "--no-int8", "--batch-sizes", "4"], "--batch-sizes and --no-int8: not taken with"),
    (["--sentences", "10"], "--sentences: not taken without"),
])
def test_options_the_mode_ignores_are_refused(argv, unused, capsys):
    """--held-out scored the export once whatever the timing and size options said (--rounds 5 ran one pass)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"mmkit bench translate: error: {unused} --held-out" in capsys.readouterr().err


def test_impossible_sizes_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:  # a count below 1: argparse's usage error
        main(["--dim", "32", "--layers", "1", "--heads", "4", "--ffn", "64", "--vocab-size", "100",
              "--new-tokens", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("mmkit bench translate: error: argument --new-tokens")


def test_agreement_counts_generated_tokens_not_the_decoder_start(monkeypatch):
    """Both sides return the start token first: it counted as an agreeing position in every row."""
    from types import SimpleNamespace

    import torch

    import mmkit.core
    from mmkit.cli.bench.translate import _cell

    start = 9
    ref = SimpleNamespace(config=SimpleNamespace(decoder_start_token_id=start),
                          generate=lambda **kw: torch.tensor([[start, 4, 5, 6]]))
    ours = SimpleNamespace(encode=lambda src, mask: None)
    ours_tokens = torch.tensor([[start, 4, 1, 2]])  # only the first generated token agrees with transformers'
    monkeypatch.setattr(mmkit.core, "generate", lambda *a, **kw: SimpleNamespace(sequences=ours_tokens))
    cell = _cell(ref, {"mmkit": (ours, contextlib.nullcontext)}, torch.ones(1, 3, dtype=torch.long), beams=1,
                 new_tokens=3, rounds=1, warmup=0)
    assert cell["agreement"]["mmkit"] == pytest.approx(1 / 3) and cell["same_tokens"] is False


def test_held_out_warms_up_and_alternates_the_timed_order(monkeypatch):
    """The seconds were one cold run each, fp32 always first (paying for the first call's set-up)."""
    from types import SimpleNamespace

    import mmkit.inference.translator as translator_module

    calls = []

    class Stub:
        def __init__(self, quantize):
            self.quantize = quantize

        def translate(self, sources, options):
            calls.append((self.quantize, options.beam_size, len(sources)))
            return [SimpleNamespace(text=s, tokens=[len(s)]) for s in sources]

    monkeypatch.setattr(translator_module, "load_translator", lambda export, quantize: Stub(quantize))
    result = run_held_out("stub", n=5, beams=(1, 2, 3), batch_size=2, threads=1)
    warm, timed = calls[:2], calls[2:]
    assert warm == [("none", 1, 2), ("int8", 1, 2)]  # untimed, on one batch
    assert timed == [("none", 1, 5), ("int8", 1, 5), ("int8", 2, 5), ("none", 2, 5), ("none", 3, 5), ("int8", 3, 5)]
    rows = [(r["beams"], r["quantize"]) for r in result["rows"]]
    assert rows == [(b, q) for b in (1, 2, 3) for q in ("none", "int8")]
    assert all(r["same_as_fp32"] == 100 for r in result["rows"][1::2])
    assert "a single run each (after an untimed warm-up, fp32 and int8 in alternating order" in format_held_out(result)
