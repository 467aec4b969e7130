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

``--workers`` compares the workflow's two ways of running isolated trials in one run, through
the worker's own app body (:func:`lambda_hat.trial.app.execute_trial`): a fresh process per trial
(``optuna.warm: null``) and a warm process per worker (:mod:`lambda_hat.trial.process.warm`). It prints the
median per-trial overhead (the worker's wall seconds minus the runner's own
``seconds.total``) after each method's first trial, and the ratio fresh / warm. ``--rss N``
then runs N more trials in one warm process and prints its resident memory along the way.
``--demo`` runs the README demo (``config/optuna_demo.yaml --local``) twice from the same
cached references and JAX cache, fresh then warm, and prints the end-to-end ratio (the whole
CLI, and the span of the tuning trials from their ``started_at``/``finished_at``);
``--demo-trials`` reduces ``max_trials`` for a shorter variant; ``--trials 0`` skips the
overhead part.

    python bench/bench_trial_overhead.py --workers [--trials 5] [--rss 200] [--demo]
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
from pathlib import Path

import numpy as np

from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.schema import as_dict
from lambda_hat.trial import app as trial_app
from lambda_hat.trial.process import warm as warm_procs
from lambda_hat.trial.runner import run_method_trial


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
from lambda_hat.problem.build import load_problem
from lambda_hat.trial.runner import run_method_trial
from lambda_hat.schema import as_dict
from lambda_hat.trial import app as trial_app
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
    p.add_argument("--workers", action="store_true", help="fresh vs warm trial processes")
    p.add_argument("--rss", type=int, default=0, help="--workers: trials of the RSS run")
    p.add_argument("--demo", action="store_true", help="--workers: README demo, fresh vs warm")
    p.add_argument("--demo-trials", type=int, help="--demo: optuna.max_trials (default: 4)")
    args = p.parse_args()
    if args.workers:
        workers_bench(args)
        return

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


# ------------------------------------------------------------------ --workers: fresh vs warm


def _payload(problem, method: str, hp: dict, seed: int, artifacts: str, run_dir: Path, warm):
    return {
        "pid": problem.pid,
        "spec": as_dict(problem.spec),
        "method": method,
        "hyperparams": hp,
        "budget_sec": 120.0,
        "seed": seed,
        "ref": None,
        "artifacts": artifacts,
        "run_dir": str(run_dir),
        "warm": warm,
    }


def _worker_trials(problem, artifacts: str, trials: int, warm, out: Path) -> dict[str, list]:
    """``trials`` trials per method through execute_trial; per method [(wall, runner s, startup)]."""
    rng = np.random.default_rng(1)
    seen: dict[str, list] = {}
    for i in range(trials):
        for method in ("sgld", "vi", "mclmc"):
            hp = proposals(method, rng)
            payload = _payload(problem, method, hp, i, artifacts, out / f"{method}-{i}", warm)
            t0 = time.perf_counter()
            m = trial_app.execute_trial(payload)
            wall = time.perf_counter() - t0
            if m["status"] != "ok":
                print(f"  {method} trial {i}: {m['status']} {m.get('failure')}")
            runner = (m.get("seconds") or {}).get("total", float("nan"))
            seen.setdefault(method, []).append((wall, runner, m.get("startup_sec")))
    return seen


def _overhead(seen: dict[str, list]) -> tuple[float, float, float]:
    """Median overhead after each method's first trial, the first trials' median, startup."""
    later = [w - r for rows in seen.values() for w, r, _ in rows[1:]]
    first = [rows[0][0] - rows[0][1] for rows in seen.values()]
    startup = [s for rows in seen.values() for _, _, s in rows[1:] if s is not None]
    return statistics.median(later), statistics.median(first), statistics.median(startup)


def _rss_run(problem, artifacts: str, trials: int, out: Path) -> None:
    rng = np.random.default_rng(2)
    policy = {"max_trials": trials + 1, "max_rss_mb": None}
    rss, pids = [], set()
    for i in range(trials):
        method = ("sgld", "vi", "mclmc")[i % 3]
        payload = _payload(
            problem, method, proposals(method, rng), i, artifacts, out / f"rss-{i}", policy
        )
        m = trial_app.execute_trial(payload)
        rss.append(m["warm"]["rss_mb"])
        pids.add(m["warm"]["pid"])
    marks = sorted({0, 9, 49, 99, trials - 1} & set(range(trials)))
    print(
        f"RSS of one warm process over {trials} trials ({len(pids)} process): "
        + ", ".join(f"after {k + 1}: {rss[k]:.0f} MiB" for k in marks)
    )
    half = trials // 2
    print(
        f"  growth over the second half: {rss[-1] - rss[half]:+.1f} MiB "
        f"({(rss[-1] - rss[half]) / max(1, trials - half - 1):+.3f} MiB/trial)"
    )


def _demo(args, root: Path) -> None:
    """The README demo twice, fresh then warm, from the same cached references and JAX cache."""
    import shutil

    import yaml

    demo = Path(__file__).resolve().parents[1] / "config" / "optuna_demo.yaml"
    base = yaml.safe_load(demo.read_text())
    if args.demo_trials:
        base["optuna"]["max_trials"] = args.demo_trials
    seed_art = root / "demo_artifacts"
    cli = [
        sys.executable,
        "-c",
        "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
    ]

    def run(name: str, warm, artifacts: Path) -> tuple[float, float]:
        cfg = {**base, "optuna": {**base["optuna"], "warm": warm}}
        cfg["paths"] = {"artifacts": str(artifacts), "results": str(root / f"results_{name}")}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        done = subprocess.run(cli + ["--config", str(path), "--local"], capture_output=True,
                              text=True, cwd=root)  # fmt: skip
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 1):
            print(done.stdout[-3000:], done.stderr[-3000:])
        spans = [json.loads(f.read_text()) for f in artifacts.glob("runs/*/*/*/metrics.json")]
        spans = [(m["started_at"], m["finished_at"]) for m in spans if "started_at" in m]
        span = max(b for _, b in spans) - min(a for a, _ in spans) if spans else float("nan")
        print(f"  {name}: CLI {wall:.1f} s, trials' span {span:.1f} s, {len(spans)} runs, "
              f"exit {done.returncode}")  # fmt: skip
        return wall, span

    print("demo: references and JAX cache (first run, not timed) ...")
    run("prime", None, seed_art)
    times = {}
    for name, warm in (("fresh", None), ("warm", {})):
        art = root / f"art_{name}"
        shutil.copytree(seed_art, art, ignore=shutil.ignore_patterns("runs"))
        times[name] = run(name, warm, art)
    (fw, fs), (ww, ws) = times["fresh"], times["warm"]
    print(f"demo end to end fresh / warm: CLI {fw / ww:.2f}x, trials' span {fs / ws:.2f}x")


def workers_bench(args) -> None:
    """Fresh vs warm isolated trials through the worker's app body, in one run."""
    problem = build_problem(
        resolve_problem({"model": "tiny", "data": "small", "seed": 1}), args.artifacts
    )
    root = Path(tempfile.mkdtemp(prefix="bench_warm_"))
    artifacts = str(Path(args.artifacts).resolve())
    print(f"problem {problem.pid}: d = {problem.d}, n = {problem.n}; {args.trials} trials/method")
    if args.trials >= 2:  # --trials 0: only the --rss and --demo parts
        fresh = _overhead(_worker_trials(problem, artifacts, args.trials, None, root / "fresh"))
        warm = _overhead(_worker_trials(problem, artifacts, args.trials, {}, root / "warm"))
        warm_procs.shutdown()
        print(f"{'mode':<6} {'overhead s':>11} {'first s':>8} {'startup s':>10}")
        for name, (later, first, startup) in (("fresh", fresh), ("warm", warm)):
            print(f"{name:<6} {later:>11.3f} {first:>8.3f} {startup:>10.3f}")
        print(
            f"overhead = median(worker wall - runner seconds.total) after each method's first "
            f"trial; fresh / warm = {fresh[0] / warm[0]:.1f}x"
        )
    if args.rss:
        _rss_run(problem, artifacts, args.rss, root / "rss")
        warm_procs.shutdown()
    if args.demo:
        _demo(args, root)


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
