#!/usr/bin/env bash
# Run a command as on the project's other kind of CPU: AVX2 only, so no native bf16 and no VNNI.
# On an AVX-512 machine (e.g. the AMD EPYC with AVX512-BF16 and VNNI) the libraries' own switches cap
# the instructions they pick, so one machine can test and measure both kinds:
#   PyTorch's vectorised ops (ATEN_CPU_CAPABILITY), fbgemm's int8 kernels (FBGEMM_ENABLE_INSTRUCTIONS),
#   oneDNN, whose bf16 check then says False so `auto` means fp32 (ONEDNN_MAX_CPU_ISA), MKL's GEMMs
#   (MKL_ENABLE_INSTRUCTIONS), and CTranslate2 for faster-whisper (CT2_FORCE_CPU_ISA).
# The cores, caches and clock stay this machine's, so timings approximate an AVX2 machine; they do not
# replace one. Usage: bash scripts/as_avx2.sh mmkit bench transcribe ...
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: bash scripts/as_avx2.sh COMMAND [ARGS...]" >&2; exit 2; }
export ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 \
    MKL_ENABLE_INSTRUCTIONS=AVX2 CT2_FORCE_CPU_ISA=AVX2
# torch.compile's on-disk cache apart: its keys leave out ATEN_CPU_CAPABILITY, and kernels that inductor compiled
# uncapped, then reused capped, gave NaN (PyTorch 2.14; an AVX2 machine builds its own cache and never meets this)
export TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/torchinductor_as_avx2_$(id -u)"
exec "$@"
