#!/usr/bin/env bash
# Digits: train the classifier (inside the source), its HMC reference through the gate, SGLD
# tuned against it and validated on fresh seeds, then the report. Artifacts and results go to
# the folder this is run from.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python "$HERE/digits.py" --components 8 --hidden 4
parsl-optuna --config "$HERE/tune.yaml" --local
lambda-hat report --config "$HERE/tune.yaml"
