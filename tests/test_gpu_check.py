"""`scripts/gpu_check.sh` (issue 13 §4) waits for a lent GPU; here its every step runs at toy sizes on
the CPU (GPU_CHECK_DEVICE=cpu GPU_CHECK_SMOKE=1), so the script a GPU session runs cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_step_runs_at_toy_sizes_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stdout[-4000:] + done.stderr[-2000:]
    for step in ("tests", "vit", "label", "embed", "transcribe"):
        assert f"{step}: exit 0" in summary
    assert summary.rstrip().endswith("failed steps: 0")
    vit = json.loads((tmp_path / "out" / "vit.json").read_text())
    assert [row["precision"] for row in vit] == ["bf16", "fp32"] and all(row["device"] == "cpu" for row in vit)
    assert all(row["infer_flops_per_image"] > 0 for row in vit)
    assert json.loads((tmp_path / "out" / "label.json").read_text())
    assert json.loads((tmp_path / "out" / "embed.json").read_text())
    assert json.loads((tmp_path / "out" / "transcribe.json").read_text())["files"] == 1
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "skipped" in log and "Traceback" not in log
