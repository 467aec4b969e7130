"""Compilation across problem shapes: does a class study compile each shape once? (issue 20)

A class study runs one setting on members of different shapes, in fresh trial processes on
several workers. Every worker and rerun shares JAX's persistent compilation cache under
``<artifacts>/.jax_cache`` (``lambda_hat.parallel.worker``). This bench builds ``--shapes``
deep linear networks of different widths and runs one short SGLD trial per shape twice, each
in a fresh Python process: first with an empty cache directory (cold: the program is
compiled), then with another seed and other continuous values against the same directory
(warm: a fresh process, as on another worker or a rerun). It prints per shape the runner's
``seconds.compile`` both times, the process's wall seconds, and the ratios measured in this
run.

    python bench/bench_compile_shapes.py [--shapes 3] [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from lambda_hat.precision import enable_x64
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem

WIDTHS = [[2], [4], [3, 3], [6], [8], [10]]

_CHILD = """
import json, sys
from lambda_hat.precision import enable_x64
enable_x64()
from lambda_hat.problem.build import load_problem
from lambda_hat.trial.runner import run_method_trial
a = json.loads(sys.argv[1])
problem = load_problem(a["artifacts"], a["pid"])
m = run_method_trial(problem, "sgld", a["hp"], None, a["seed"], artifacts=a["runs"])
print(json.dumps({k: m[k] for k in ("seconds", "status")}))
"""


def child(artifacts: str, pid: str, hp: dict, seed: int, runs: str, cache: str) -> tuple:
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",  # the workers' setting
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    arg = json.dumps({"artifacts": artifacts, "pid": pid, "hp": hp, "seed": seed, "runs": runs})
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, arg], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=int, default=3)
    p.add_argument("--artifacts", default="artifacts")
    args = p.parse_args()
    enable_x64()
    cache = tempfile.mkdtemp(prefix="bench_compile_shapes_cache_")
    runs = tempfile.mkdtemp(prefix="bench_compile_shapes_runs_")
    print(f"{'shape':<12} {'d':>4} {'compile cold':>12} {'warm':>8} {'ratio':>6} "
          f"{'wall cold':>10} {'warm':>8}")  # fmt: skip
    ratios = []
    for widths in WIDTHS[: args.shapes]:
        entry = {"model": "dln", "data": "dln", "teacher": "rank1", "seed": 0}
        entry["overrides"] = {"model": {"widths": widths}, "data": {"n": 500}}
        problem = build_problem(resolve_problem(entry), args.artifacts)
        cold_hp = {"eta0": 1e-4, "steps": 400, "chains": 2, "batch": 64}
        warm_hp = {"eta0": 2e-4, "steps": 500, "chains": 2, "batch": 64}
        cold, wall_cold = child(args.artifacts, problem.pid, cold_hp, 0, runs, cache)
        warm, wall_warm = child(args.artifacts, problem.pid, warm_hp, 1, runs, cache)
        c, w = cold["seconds"]["compile"], warm["seconds"]["compile"]
        ratios.append(c / w if w > 0 else float("inf"))
        shape = "-".join(map(str, [5, *widths, 5]))
        print(f"{shape:<12} {problem.d:>4} {c:>11.2f}s {w:>7.2f}s {ratios[-1]:>5.1f}x "
              f"{wall_cold:>9.1f}s {wall_warm:>7.1f}s")  # fmt: skip
    print(f"compile seconds cold / warm, per shape: {', '.join(f'{r:.1f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
