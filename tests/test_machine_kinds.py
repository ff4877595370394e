"""The project's CPUs are of two kinds: with native bf16 (AVX512-BF16, VNNI) and AVX2 only. On the first
kind, `scripts/as_avx2.sh` caps every library's instruction set to AVX2, so the tests whose results
depend on the kind (precision choice, bf16 and int8 paths, the benches) also run here as on the second
kind. On an AVX2-only CPU the main run already is that kind, so this test skips."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmkit.inference.precision import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
AS_AVX2 = ["bash", str(REPO / "scripts" / "as_avx2.sh")]
# every folder with a precision, int8 or per-machine choice in it
KIND_DEPENDENT = ["tests/core", "tests/inference", "tests/tasks", "tests/cli", "tests/bench"]
# ...less the slow ones whose outcome no instruction set changes: signals, the ranks' sharing of a run (fp32; ranks
# and one process on the same machine) and its errors, full disks, the text tools' files, callbacks' wiring, recipe
# argument checks, the tasks' export and checkpoint rules, mixup's batches, fp32 batching equal to one at a time
# (sequential transcription's, generate-text files'), and the fp32 long-form and word-timing parity with
# openai-whisper (a Transcriber built on an fp32 model, no precision choice; the reference runs in the same process
# on the same kernels)
KIND_FREE = ["tests/cli/test_signals.py", "tests/cli/test_ranks_errors.py", "tests/tasks/test_model_callbacks.py",
             "tests/cli/test_recipe_argument_checks.py", "tests/tasks/test_model_task.py",
             "tests/tasks/test_mixup_batches.py", "tests/tasks/test_sequential_batches.py",
             "tests/cli/test_generate_text_files.py", "tests/cli/test_ranks.py", "tests/cli/test_ranks_text.py",
             "tests/cli/test_ranks_label.py", "tests/cli/test_full_disk.py", "tests/cli/test_text_tools_outputs.py",
             "tests/cli/test_text_tools_input.py", "tests/tasks/test_word_timestamps.py",
             "tests/tasks/test_transcribe_sequential.py", "tests/inference/test_window_words.py",
             "tests/tasks/test_transcribe_openai.py"]

PROBE = """
import json, torch
from mmkit.inference.precision import cpu_has_bf16, resolve_precision
from mmkit.inference.quantize import Int8Linear
torch.manual_seed(0)
layer = Int8Linear(torch.nn.Linear(64, 32))
x = torch.randn(5, 64)
print(json.dumps({"bf16": cpu_has_bf16(), "auto": resolve_precision("auto", "cpu"),
                  "capability": torch.backends.cpu.get_cpu_capability(), "fixed_grid": layer.fixed_grid,
                  "int8": layer(x).tolist()}))
"""


def _probe(prefix: list[str]) -> dict:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_wrapper_refuses_no_command():
    done = subprocess.run(AS_AVX2, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("usage:")


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU already lacks native bf16: the main run is that kind's")
def test_kind_dependent_tests_pass_as_on_a_cpu_without_native_bf16(tmp_path):
    native, capped = _probe([]), _probe(AS_AVX2)
    # the caps took: no native bf16, so `auto` is fp32, and PyTorch's own kernels are the AVX2 ones
    assert native["bf16"] and native["auto"] == "bf16"
    assert not capped["bf16"] and capped["auto"] == "fp32" and capped["capability"] == "AVX2"
    # fbgemm's AVX2 int8 kernel (7-bit activations: its 16-bit pair sums cannot saturate) gives the
    # VNNI kernel's values bit for bit, so int8 results do not depend on the machine's kind
    assert capped["fixed_grid"] and capped["int8"] == native["int8"]
    done = subprocess.run([*AS_AVX2, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'inner'}", *KIND_DEPENDENT,
                           *(f"--ignore={path}" for path in KIND_FREE)], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
