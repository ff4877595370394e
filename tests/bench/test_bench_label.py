"""Smoke test of `mmkit bench label` end to end: both whole processes on a few generated images
with the same random-init ViT-B-32 file agree on every label. Never timings."""
from __future__ import annotations

import json

import pytest

from mmkit.cli.bench.label import main


@pytest.mark.slow
def test_bench_label_runs_both_processes_and_they_agree(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--images", "4", "--rounds", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["top1_agreement"] == 1.0 and result["max_abs_prob_diff"] < 1e-2
    for side in ("open_clip", "mmkit"):
        assert len(result["runs"][side]["wall"]) == 1 and result["median_s"][side]["wall"] > 0
    assert result["speedup"]["wall"] == pytest.approx(
        result["median_s"]["open_clip"]["wall"] / result["median_s"]["mmkit"]["wall"], rel=0.02)
    assert "top-1 agreement 100.0%" in capsys.readouterr().out
    assert main(["--images", "0"]) == 2
