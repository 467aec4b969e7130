"""Per-trial overhead of the trial runner when trials repeat in one process (a Parsl worker).

Runs ``--trials`` short trials of each method on one small problem (``model: tiny``,
``data: small``: a 3-4-1 tanh MLP, d = 21, n = 200) in one process, each trial with other
continuous hyperparameters and another ``steps`` (as Optuna would propose), and prints per trial
the seconds spent compiling and running (``metrics.seconds``), the number of programs compiled,
and the ratio of a later trial's total to the first one's (measured in this run).

With ``--fresh-processes`` every trial runs in its own Python process instead (as the
workflow's isolated trials do), sharing a persistent JAX compilation cache directory (as the
workflow's workers do): then ``compile`` is tracing, lowering and loading from that cache, and
the wall time includes the process start and imports.

    python bench/bench_trial_overhead.py [--trials 5] [--artifacts artifacts] [--fresh-processes]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from lambda_hat.config import resolve_problem
from lambda_hat.problems import build_problem
from lambda_hat.runner import run_method_trial


def proposals(method: str, rng: np.random.Generator) -> dict:
    """Continuous hyperparameters (and steps) drawn from the searched ranges, short runs."""
    if method == "sgld":
        return {
            "eta0": float(10 ** rng.uniform(-5.5, -4.5)),
            "gamma": float(rng.uniform(0.3, 1.0)),
            "steps": int(rng.integers(2000, 3000)),
        }
    if method == "vi":
        return {"lr": float(10 ** rng.uniform(-3, -2)), "steps": int(rng.integers(400, 600))}
    return {
        "step_size": float(10 ** rng.uniform(-3, -1.5)),
        "target_accept": float(rng.uniform(0.6, 0.95)),
        "L": float(rng.uniform(0.5, 3.0)),
        "steps": int(rng.integers(300, 500)),
    }


_CHILD = """
import json, sys
from lambda_hat.problems import load_problem
from lambda_hat.runner import run_method_trial
a = json.loads(sys.argv[1])
problem = load_problem(a["artifacts"], a["pid"])
m = run_method_trial(problem, a["method"], a["hp"], None, a["seed"], artifacts=a["runs"])
print(json.dumps({k: m[k] for k in ("seconds", "compiled_programs", "status")}))
"""


def trial_in_child(artifacts, pid, method, hp, seed, runs, cache_dir) -> tuple[dict, float]:
    """One trial in a fresh Python process; (its metrics' seconds etc., wall seconds)."""
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    arg = {"artifacts": artifacts, "pid": pid, "method": method, "hp": hp, "seed": seed}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({**arg, "runs": runs})],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5, help="trials per method")
    p.add_argument("--artifacts", default="artifacts", help="where the problem is cached")
    p.add_argument("--fresh-processes", action="store_true", help="one process per trial")
    args = p.parse_args()

    problem = build_problem(
        resolve_problem({"model": "tiny", "data": "small", "seed": 1}), args.artifacts
    )
    runs = tempfile.mkdtemp(prefix="bench_trial_overhead_")
    cache_dir = tempfile.mkdtemp(prefix="bench_trial_overhead_jax_cache_")
    mode = "one process per trial, shared JAX cache" if args.fresh_processes else "one process"
    rng = np.random.default_rng(0)
    print(f"problem {problem.pid}: d = {problem.d}, n = {problem.n}; {args.trials} trials/method")
    print(
        f"mode: {mode}; total = wall seconds of the trial"
        + (" process" if args.fresh_processes else "")
    )
    print(f"{'method':<6} {'trial':>5} {'steps':>6} {'compile s':>10} {'run s':>8} "
          f"{'total s':>8} {'programs':>8} {'status':>7}")  # fmt: skip
    summary = []
    for method in ("sgld", "vi", "mclmc"):
        totals, compiles = [], []
        for i in range(args.trials):
            hp = proposals(method, rng)
            if args.fresh_processes:
                m, wall = trial_in_child(
                    args.artifacts, problem.pid, method, hp, i, runs, cache_dir
                )
            else:
                m = run_method_trial(problem, method, hp, None, i, artifacts=runs)
                wall = m["seconds"]["total"]
            s = {**m["seconds"], "total": wall}
            totals.append(s["total"])
            compiles.append(s["compile"])
            print(
                f"{method:<6} {i:>5} {hp['steps']:>6} {s['compile']:>10.3f} {s['run']:>8.3f} "
                f"{s['total']:>8.3f} {m['compiled_programs']:>8} {m['status']:>7}"
            )
        later = statistics.median(totals[1:]) if len(totals) > 1 else float("nan")
        later_c = statistics.median(compiles[1:]) if len(compiles) > 1 else float("nan")
        summary.append((method, totals[0], compiles[0], later, later_c))
    print()
    print(f"{'method':<6} {'first s':>8} {'(compile)':>10} {'later s':>8} {'(compile)':>10} "
          f"{'later/first':>12}")  # fmt: skip
    for method, first, first_c, later, later_c in summary:
        print(
            f"{method:<6} {first:>8.3f} {first_c:>10.3f} {later:>8.3f} {later_c:>10.3f} "
            f"{later / first:>12.3f}"
        )
    print("later = median of the trials after the first (same process, other hyperparameters)")


if __name__ == "__main__":
    main()
