#!/usr/bin/env bash
# Default run: train the ViT on the embedded digits once (skipped when its export
# exists), predict the held-out digits with it, and print a summary with next steps.
# Run through `make run`, which does the set-up first.
set -euo pipefail
cd "$(dirname "$0")/.."

export_config="runs/vit_digits/export/config.json"
if [[ ! -f "$export_config" ]]; then
    echo "make run [1/2]: training a ViT (6 blocks, 128 dims) on scikit-learn's 1,797 handwritten digits:"
    echo "  30 epochs, about 3 minutes on 2 idle CPU cores (longer when other jobs share them);"
    echo "  the progress bar below counts epochs. Export: runs/vit_digits/export"
    .venv/bin/mmkit fit --config configs/vit_digits.yaml
else
    echo "make run [1/2]: using the model trained earlier ($export_config; delete runs/vit_digits to retrain)"
fi
echo "make run [2/2]: predicting the 269 held-out test digits -> runs/vit_digits/predictions.csv"
.venv/bin/mmkit predict --config configs/vit_digits_predict.yaml
exec .venv/bin/python scripts/run_summary.py runs/vit_digits/predictions.csv
