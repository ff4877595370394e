#!/usr/bin/env bash
# Idempotent set-up for a fresh clone or an existing checkout; safe to re-run.
#   1. Debian packages: chromium (browser tests), espeak-ng (speech data), fortunes and
#      wordnet-base (text corpora);
#   2. .venv with the package installed editable, pinned by constraints.txt;
#   3. print the versions in use.
# Step 2 is skipped while the hash of pyproject.toml + constraints.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.mmkit-setup.sha256"

# --- 1. system packages (apt only when something is missing) --------------------
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
# Offline text corpora for the GPT and BERT recipes and tests (mmkit/data/corpora.py).
[[ -f /usr/share/games/fortunes/literature ]] || missing+=(fortunes)  # the full set (fortunes-min has one file)
[[ -f /usr/share/wordnet/data.noun ]] || missing+=(wordnet-base)
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)  # Debian's python3 ships venv without ensurepip
fi
if (( ${#missing[@]} )); then
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    # The lock timeout waits for another apt run (e.g. an image's first boot) instead of failing.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# --- 2. virtual environment + editable install ---------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -x "$VENV/bin/mmkit" ]]; then
    echo "setup: installing mmkit[test] into $VENV (pinned by constraints.txt)"
    # constraints.txt pins torch==2.14.1 etc., so no other wheel (e.g. a local
    # CPU-only torch in a find-links folder) can be picked.
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
    echo "$want" > "$STAMP"
else
    echo "setup: $VENV is up to date (pyproject.toml + constraints.txt unchanged)"
fi

# --- 3. versions (metadata only: importing torch here would cost seconds) -------
"$VENV/bin/python" - <<'PY'
import platform
from importlib.metadata import PackageNotFoundError, version

names = ["torch", "torchvision", "torchaudio", "pytorch-lightning", "timm", "open_clip_torch",
         "transformers", "gradio", "playwright", "pytest"]
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "MISSING"
print(f"setup: python {platform.python_version()}; " + ", ".join(f"{n} {v(n)}" for n in names))
PY
echo "setup: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium MISSING'); $(espeak-ng --version 2>/dev/null | head -n1 || echo 'espeak-ng MISSING')"
