#!/usr/bin/env bash
# Run HERE (a machine with PyPI), once before `scripts/gpu_check.sh` goes to a lent GPU machine: that
# machine reaches no package registry, and its image (Python 3.12, PyTorch, timm, transformers,
# Lightning, pytest) lacks what mmkit's CLI, `mmkit label` and the open_clip reference need. This puts
# those wheels (babel and num2words: the translation tests' number corpus; num2words needs docopt only
# for its command line), at the versions of constraints.txt, in .whl/ (git-ignored), which the device call
# carries; gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(open_clip_torch ftfy babel num2words wcwidth soundfile cffi pycparser jsonargparse docstring_parser
          typeshed_client)
mkdir -p .whl
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${name}==" constraints.txt) || { echo "gpu_wheels: $name is not pinned in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
PIP=(python3 -m pip)
[[ -x .venv/bin/python ]] && PIP=(.venv/bin/python -m pip)
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${pins[@]}"
du -sh .whl
ls .whl
