"""Variance of SGLD's λ̂ per second of work, by estimator and full-data cadence (and dtype).

For each setting, ``--seeds`` trials through :func:`lambda_hat.trial.runner.run_method_trial` (one
untimed trial first compiles its programs; the timed rounds interleave the settings). Printed per setting: the mean λ̂, the spread of λ̂
across seeds (sd), the mean reported SE, the mean execution seconds (``seconds.run``), FGE, and
the efficiency 1 / (SE² · seconds) — higher is better: a setting twice as efficient reaches the
same SE in half the time (SE² falls as 1/time). The numbers are in plans/sgld-estimator.md.

    python bench/sgld_estimator.py --problem linear [--seeds 6]
    python bench/sgld_estimator.py --problem mlp [--seeds 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.trial.runner import run_method_trial

PROBLEMS = {
    # name: (problem presets, base hyperparameters, settings to compare)
    "linear": (
        {"model": "linear", "data": "small", "seed": 0},
        {"eta0": 1e-4, "batch": 32, "steps": 4000, "chains": 4},
        [
            {"estimator": "minibatch"},
            {"estimator": "full"},
            {"estimator": "full", "eval_every": 1},
            {"estimator": "full", "eval_every": 40},
            {"estimator": "minibatch", "dtype": "float32"},
        ],
    ),
    "mlp": (
        {"model": "mlp10k", "data": "large"},
        {"eta0": 1e-7, "batch": 256, "steps": 2000, "chains": 4},
        [
            {"estimator": "minibatch"},
            {"estimator": "full"},
            {"estimator": "full", "eval_every": 100},
            {"estimator": "minibatch", "dtype": "float32"},
        ],
    ),
}


def trial(problem, hp: dict, seed: int, runs_dir: str) -> tuple:
    """(λ̂, SE, execution seconds, FGE, block length) of one trial."""
    m = run_method_trial(problem, "sgld", hp, None, seed, artifacts=runs_dir)
    if m["status"] != "ok":
        raise SystemExit(f"{hp}: trial failed: {m['failure']}")
    w = m["work"]
    return m["llc_hat"], m["se_hat"], m["seconds"]["run"], w["fge"], m["diagnostics"]["eval_every"]


def summary(rows: list) -> dict:
    """Mean λ̂, its spread across seeds, mean SE, seconds and FGE, and the two efficiencies."""
    llc, se, sec, fge, E = map(np.asarray, zip(*rows, strict=True))
    return {
        "llc": llc.mean(),
        "sd": llc.std(ddof=1),
        "se": se.mean(),
        "sec": sec.mean(),
        "fge": fge.mean(),
        "eff": 1.0 / (np.mean(se**2) * sec.mean()),
        "eff_sd": 1.0 / (llc.var(ddof=1) * sec.mean()),
        "E": int(E[0]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=sorted(PROBLEMS), default="linear")
    p.add_argument("--seeds", type=int, default=4, help="timed trials per setting")
    p.add_argument("--artifacts", default="artifacts", help="where the problem is cached")
    p.add_argument("--settings", type=json.loads, help="JSON list of settings (default: all)")
    args = p.parse_args()
    spec, base, settings = PROBLEMS[args.problem]
    settings = args.settings or settings
    problem = build_problem(resolve_problem(spec), args.artifacts)
    runs_dir = tempfile.mkdtemp(prefix="sgld_estimator_")
    print(f"{args.problem}: n = {problem.n}  d = {problem.d}  {base}  seeds = {args.seeds}")
    print(
        f"{'setting':<40} {'E':>4} {'λ̂':>9} {'sd':>7} {'SE':>7} {'sec':>7} {'FGE':>9} "
        f"{'1/(SE²s)':>9} {'1/(sd²s)':>9}"
    )
    names = [", ".join(f"{k}={v}" for k, v in extra.items()) for extra in settings]
    hps = [{**base, **extra} for extra in settings]
    for hp in hps:  # seed 0 compiles each setting's programs (untimed)
        trial(problem, hp, 0, runs_dir)
    rows: list[list] = [[] for _ in hps]
    for seed in range(1, args.seeds + 1):  # rounds interleave the settings: load drift hits all
        for hp, out in zip(hps, rows, strict=True):
            out.append(trial(problem, hp, seed, runs_dir))
    for name, out in zip(names, rows, strict=True):
        r = summary(out)
        print(
            f"{name:<40} {r['E']:>4} {r['llc']:9.3f} {r['sd']:7.3f} {r['se']:7.3f} "
            f"{r['sec']:7.2f} {r['fge']:9.0f} {r['eff']:9.3g} {r['eff_sd']:9.3g}"
        )


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
