"""Does a setting tuned on small deep linear networks hold on bigger ones? (issue 20)

Runs ``parsl-optuna --local`` on one generated config and reads what it wrote:

- **train class** (HMC references): rank-1 deep linear networks 5 → 5 with 1–3 hidden layers
  of widths 2–10, n 1,000–5,000 (d 20–100); one SGLD class study, its step size in units of
  each member's ε_max;
- **holdout A** (HMC references, d 150–200): the class's recommendation and top settings,
  the fixed devinterp-style baseline, and (for comparison only) a per-problem study tuned and
  validated on each member;
- **holdout B** (``reference: theory``, d 10⁴–2·10⁴): the same settings against Aoyagi's λ;
  the class's measured HMC-vs-theory gap (mean |λ_HMC − λ_theory| / λ_theory over the train
  members) is the yardstick.

Prints the held-out table (as ``parsl-optuna`` does) and the summary, and writes
``--out F.json``: ``holdout_a: {members, within_2se, rel_err_transferred,
rel_err_per_problem, rel_err_baseline, baseline_failed}`` (means over members; the baseline's
over those where it did not fail) and ``holdout_b: {members, median_rel_err_transferred,
hmc_theory_gap, median_rel_err_baseline, baseline_failed}``. ``--family mlp`` runs a tanh-MLP
class instead (HMC holdouts only: its ``holdout_a``). References and runs
are content-addressed under ``--work``: a second run reuses them (its time is the tuning's).

Usage: ``python bench/bench_transfer.py --out transfer.json [--work bench_transfer_work]
[--trials 20] [--train 6] [--quick]`` (``--quick``: fewer, smaller members and trials, for a
smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from lambda_hat import layout
from lambda_hat.study.transfer import summarize_transfer

#: (hidden widths, n) per member: 5 inputs, 5 outputs, a rank-1 teacher; ``--train N`` takes
#: the first N (their references are the bench's cost: on 2 busy cores 5-6-5 at n = 3,000 took
#: 13 minutes of NUTS warm-up alone).
TRAIN = [([2], 1000), ([4], 2000), ([3, 3], 1000), ([6], 3000), ([4, 4, 4], 2000), ([10], 5000)]
HOLDOUT_A = [([15], 2000), ([10, 10], 2000)]
HOLDOUT_B = [(50, [100], 50, 5000), (100, [100], 100, 5000)]
QUICK = {"train": TRAIN[:3], "a": HOLDOUT_A[:1], "b": HOLDOUT_B[:1]}
#: ``--family mlp``: 3 → 1 tanh MLPs (the ``tiny`` preset, a random realizable teacher), (hidden
#: widths, n); holdout at larger d against HMC (no closed form exists for them).
MLP_TRAIN = [([3], 500), ([4], 500), ([6], 1000)]
MLP_HOLDOUT = [([12], 1000), ([8, 8], 1000)]


def _mlp(widths, n) -> dict:
    return {
        "model": "tiny",
        "data": "small",
        "seed": 1,
        "overrides": {"model": {"widths": list(widths), "depth": len(widths)}, "data": {"n": n}},
    }


def _dln(widths, n, dims=(5, 5), reference="hmc") -> dict:
    entry = {
        "model": "dln",
        "data": "dln",
        "teacher": "rank1",
        "seed": 0,
        "overrides": {
            "model": {"widths": list(widths)},
            "data": {"n": n, "input_dim": dims[0], "output_dim": dims[1]},
        },
    }
    if reference != "hmc":
        entry["reference"] = reference
    return entry


def config(
    work: Path, trials: int, quick: bool, n_train: int = len(TRAIN), family: str = "dln"
) -> dict:
    if family == "mlp":
        return _with_members(
            work,
            trials,
            [_mlp(w, n) for w, n in MLP_TRAIN],
            [_mlp(w, n) for w, n in MLP_HOLDOUT],
            "mlp",
        )
    train = QUICK["train"] if quick else TRAIN[:n_train]
    a = QUICK["a"] if quick else HOLDOUT_A
    b = QUICK["b"] if quick else HOLDOUT_B
    holdout_a = [_dln(w, n) for w, n in a]
    holdout_b = [_dln(w, n, (i, o), "theory") for i, w, o, n in b]
    cfg = _with_members(work, trials, [_dln(w, n) for w, n in train], holdout_a + holdout_b, "dln")
    cfg["problems"] = holdout_a  # per-problem studies: the comparison on holdout A
    cfg["classes"][0]["holdout_seeds"] = 2 if quick else 3
    return cfg


def _with_members(work: Path, trials: int, train: list, holdout: list, name: str) -> dict:
    hmc = [m for m in holdout if m.get("reference", "hmc") == "hmc"]
    return {
        "problems": hmc,  # per-problem studies: the comparison on the HMC holdout members
        "classes": [
            {"name": name, "train": train, "holdout": holdout, "top_k": 2, "holdout_seeds": 3}
        ],
        "methods": ["sgld"],
        "reference": {"chains": 4, "draws": 1000, "warmup": 500, "target_accept": 0.9},
        "optuna": {
            "max_trials": trials,
            "batch_size": 2,
            "method_budget_sec": 300,
            "n_startup_trials": 6,
            "validate": {"top_k": 2, "seeds": 2},
            "search_space": {"sgld": {"steps": {"low": 1000, "high": 5000}}},
        },
        "paths": {"artifacts": str(work / "artifacts"), "results": str(work / "results")},
    }


def run(work: Path, cfg: dict) -> float:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "transfer.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.monotonic()
    main = "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())"
    cmd = [sys.executable, "-c", main, "--config", str(path), "--local"]
    code = subprocess.call(cmd, cwd=work)
    if code not in (0, 1):
        raise SystemExit(f"parsl-optuna exited {code}")
    return time.monotonic() - t0


def _ref_json(artifacts: Path, pid: str) -> dict:
    path = layout.problem_dir(artifacts, pid) / layout.REF
    return json.loads(path.read_text()) if path.exists() else {}


def _per_problem(results: Path) -> dict[str, float]:
    """pid -> the per-problem validated recommendation's mean |error| / λ_ref."""
    found = json.loads((results / layout.VALIDATION_JSON).read_text())["studies"]
    out = {}
    for name, rec in found.items():
        pid = name.split(":")[0]
        best = rec.get("recommended")
        if best and best.get("mean_abs_error") is not None:
            out[pid] = best["mean_abs_error"]
    return out


def measure(work: Path) -> dict:
    results, artifacts = work / "results", work / "artifacts"
    summary = summarize_transfer(
        pd.read_parquet(results / layout.TRANSFER_TABLE).to_dict("records")
    )
    rec = [s for s in summary if s["recommended"]]
    base = {s["pid"]: s for s in summary if s["baseline"]}
    a = [s for s in rec if s["ref_kind"] == "hmc"]
    b = [s for s in rec if s["ref_kind"] == "theory"]
    per = _per_problem(results)
    trials = pd.read_parquet(results / layout.CLASS_TRIALS_TABLE)
    gaps = []
    for pid in trials["pid"].unique():
        ref = _ref_json(artifacts, pid)
        if ref.get("llc_ref") is not None and ref.get("llc_theory"):
            gaps.append(abs(ref["llc_ref"] - ref["llc_theory"]) / ref["llc_theory"])

    def mean(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return statistics.fmean(xs) if xs else None

    def median(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return statistics.median(xs) if xs else None

    return {
        "holdout_a": {
            "members": len(a),
            "within_2se": mean(
                [1.0 if s.get("z") is not None and abs(s["z"]) <= 2 else 0.0 for s in a]
            ),
            "rel_err_transferred": mean([s.get("rel_error") for s in a]),
            "rel_err_per_problem": mean(
                [per[s["pid"]] / abs(s["ref"]) for s in a if s["pid"] in per and s["ref"]]
            ),
            "rel_err_baseline": mean([base.get(s["pid"], {}).get("rel_error") for s in a]),
            "baseline_failed": sum("llc_hat" not in base.get(s["pid"], {}) for s in a),
        },
        "holdout_b": {
            "members": len(b),
            "median_rel_err_transferred": median([s.get("rel_error") for s in b]),
            "hmc_theory_gap": mean(gaps),
            "median_rel_err_baseline": median([base.get(s["pid"], {}).get("rel_error") for s in b]),
            "baseline_failed": sum("llc_hat" not in base.get(s["pid"], {}) for s in b),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("bench_transfer_work"))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", type=int, default=len(TRAIN), help="the first N train members")
    ap.add_argument("--family", choices=["dln", "mlp"], default="dln")
    args = ap.parse_args()
    work = args.work.resolve()
    trials = args.trials if not args.quick else 6
    cfg = config(work, trials, args.quick, args.train, args.family)
    seconds = run(work, cfg)
    out = {**measure(work), "seconds": seconds, "quick": args.quick}
    out["train"] = len(cfg["classes"][0]["train"])
    out["family"] = args.family
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
