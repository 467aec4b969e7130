#!/usr/bin/env bash
# LLC over training on modular addition: train (writes checkpoints.npz here), estimate λ̂ at
# every checkpoint with one SGLD setting, write the report. Artifacts and results go to the
# folder this is run from. About 3 minutes on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python "$HERE/modadd.py" --out checkpoints.npz
lambda-hat run --config "$HERE/run.yaml" --local
lambda-hat report --config "$HERE/run.yaml"
echo "figure: results/report/figures/training_problem_s0_sgld_set0.png"
