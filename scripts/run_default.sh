#!/usr/bin/env bash
# Default run: train the ViT on the embedded digits once (skipped when its export
# exists), then predict with it. Run through `make run`, which does the set-up first.
set -euo pipefail
cd "$(dirname "$0")/.."

export_config="runs/vit_digits/export/config.json"
if [[ ! -f "$export_config" ]]; then
    .venv/bin/mmkit fit --config configs/vit_digits.yaml
fi
exec .venv/bin/mmkit predict --config configs/vit_digits_predict.yaml
