#!/usr/bin/env bash
# Issue 13 §4: the GPU checks, as one short script for a lent GPU machine (the `device` tool runs it
# in the repository root; everything must fit in its 15 minutes, the machine's start included).
#   1. here, once:  bash scripts/gpu_wheels.sh       (the wheels the GPU image lacks, into .whl/)
#   2. device run:  bash scripts/gpu_check.sh        (carry: .whl; timeout_s 600: the steps' limits sum to 560 s)
# Steps, each under its own time limit so one hang cannot eat the lease: the CUDA-marked tests
# (`pytest -m cuda`), `mmkit bench vit` at ViT-B/16 batch 128 in bf16 and fp32 (images/s and MFU),
# `mmkit bench label` (labels, then `--embed`: image vectors) and `mmkit bench transcribe` on the GPU.
# Results go to $OUT (the device tool's folder; ./gpu_check_out elsewhere): gpu_check.log (everything
# printed), summary.txt (the GPU, each step's exit status and seconds) and the benches' JSON. The
# script's exit status is the number of failed steps. On an H200 (2026-12-04) the steps took 320 s.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_SMOKE=1 runs the same steps at toy sizes on a CPU (the suite does,
# so the script cannot rot between GPU loans).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMOKE=${GPU_CHECK_SMOKE:-0}
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"

# the carried wheels, where what they hold is missing (the GPU image: Python 3.12, no open_clip)
if compgen -G ".whl/*.whl" > /dev/null && ! "$PY" -c "import open_clip, soundfile, jsonargparse" 2> /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mmkit-site \
        .whl/*.whl >> "$LOG" 2>&1 || echo "wheels: install failed (see gpu_check.log)" >> "$SUMMARY"
    export PYTHONPATH=/tmp/mmkit-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ "$DEVICE" == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$SUMMARY" 2>&1
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
          torch.cuda.get_device_name() if torch.cuda.is_available() else "(no GPU)")' >> "$SUMMARY" 2>&1

if [[ "$SMOKE" == 1 ]]; then  # toy sizes: the same commands, seconds each
    VIT=(--models vit_tiny_patch16_224 --batch-size 2 --image-size 32 --steps 1 --warmup 0)
    LABEL=(--images 2 --sizes small --rounds 1 --workdir "$OUT/work")
    SPEECH=(--num-files 1 --max-new-tokens 4 --rounds 1)
else
    VIT=(--models vit_base_patch16_224 --batch-size 128 --steps 10 --warmup 3)
    LABEL=(--images 256 --rounds 2 --workdir /tmp/gpu_check_label)
    SPEECH=(--num-files 16 --rounds 2)
fi

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, record its status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "=== $name: $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local status=${PIPESTATUS[0]}
    echo "$name: exit $status, $((SECONDS - start)) s" | tee -a "$SUMMARY"
    (( status == 0 )) || failed=$((failed + 1))
}

# the files holding cuda-marked tests (collecting all of tests/ would import gradio, absent on the GPU image)
step tests 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda $(grep -rl "mark.cuda" tests --include="test_*.py")
step vit 100 "$PY" -m mmkit.cli bench vit "${VIT[@]}" --precision bf16 fp32 --device "$DEVICE" --json "$OUT/vit.json"
step label 140 "$PY" -m mmkit.cli bench label "${LABEL[@]}" --device "$DEVICE" --json "$OUT/label.json"
# the same images and checkpoint (--workdir), one round: `mmkit embed` against open_clip's encode_image loop
step embed 60 "$PY" -m mmkit.cli bench label "${LABEL[@]}" --rounds 1 --embed --device "$DEVICE" \
    --json "$OUT/embed.json"
step transcribe 140 "$PY" -m mmkit.cli bench transcribe "${SPEECH[@]}" --device "$DEVICE" --json "$OUT/transcribe.json"
echo "failed steps: $failed" | tee -a "$SUMMARY"
exit "$failed"
