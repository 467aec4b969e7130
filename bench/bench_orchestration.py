"""Per-trial orchestration overhead of the workflow vs a plain Optuna ask/tell loop.

Both loops run the same number of near-instant trials (the analytic synthetic objective) with
the same sampler (Optuna 5 TPE, multivariate + constant liar, same seed and startup trials):

- **plain**: ``study.ask(space)``, evaluate in-process, ``study.tell`` — in-memory storage;
- **plain, same TPE work** (for reading the ratio, not the target): the same in-memory loop,
  but with ``batch_size`` trials asked ahead (so TPE's constant liar sees them running) and the
  ``failure`` constraint told on every trial, as the workflow does: what TPE itself costs
  when it is asked what the workflow asks it;
- **workflow**: :class:`lambda_hat.study.driver.Driver` — ask, content-address the trial,
  submit a Parsl app to a local HighThroughputExecutor, write metrics.json in the worker, tell
  through :func:`lambda_hat.study.tell.tell` into the journal file, then build the Parquet table
  from the metrics files and export the study pickle (aggregation). The default pruner is on
  (progress files are polled; the synthetic trials report none).

Printed: seconds per trial for both and their ratio (target: workflow < 50 ms/trial and within
2x of plain). Parsl's start-up (once per run, ~seconds) is reported apart and not counted.

    python bench/bench_orchestration.py [--trials 500] [--batch-size 4] [--workers 2]
                                        [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat import layout
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.parallel import configs, session
from lambda_hat.results import parquet
from lambda_hat.results import tables as results
from lambda_hat.study import driver as tuning
from lambda_hat.study import storage as studies
from lambda_hat.study import tell
from lambda_hat.study.optuna_samplers import make_sampler
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.synthetic import synthetic_llc

SPACE = {
    "eta0": FloatDistribution(1e-6, 1e-1, log=True),
    "gamma": FloatDistribution(0.3, 1.0),
    "batch": CategoricalDistribution([32, 64, 128, 256]),
    "steps": IntDistribution(500, 2000),
}
REF = {"llc_ref": 2.0, "se_ref": 0.01}


def plain(trials: int, cfg: OptunaConfig, seed: int) -> float:
    """Seconds for ``trials`` rounds of a plain Optuna ask/evaluate/tell loop."""
    study = optuna.create_study(sampler=make_sampler(cfg, seed))
    t0 = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(SPACE)
        study.tell(trial, abs(synthetic_llc(trial.params, REF["llc_ref"]) - REF["llc_ref"]))
    return time.perf_counter() - t0


def plain_same_work(trials: int, cfg: OptunaConfig, seed: int) -> float:
    """Seconds for the plain loop with ``batch_size`` asks ahead and the constraint told."""
    study = optuna.create_study(sampler=make_sampler(cfg, seed))
    t0 = time.perf_counter()
    pending = []
    for _ in range(trials):
        while len(pending) < cfg.batch_size:
            pending.append(study.ask(SPACE))
        trial = pending.pop(0)
        trial.set_constraint(tell.CONSTRAINT_KEY, tell.SUCCESS_CONSTRAINT)
        study.tell(trial, abs(synthetic_llc(trial.params, REF["llc_ref"]) - REF["llc_ref"]))
    return time.perf_counter() - t0


def workflow(trials: int, cfg: OptunaConfig, seed: int, submit, root: Path) -> float:
    """Seconds for tuning + aggregation through the real workflow (Parsl already loaded)."""
    storage = studies.open_storage(cfg, root / "results")
    study = studies.open_study(storage, "p_bench", "sgld", cfg, seed)
    base = {
        "pid": "p_bench",
        "method": "sgld",
        "budget_sec": 60.0,
        "seed": 0,
        "ref": REF,
        "artifacts": str(root / "artifacts"),
        "isolate": False,
        "target": "lambda_hat.trial.synthetic:synthetic_trial",
    }
    task = tuning.StudyTask(
        pid="p_bench",
        method="sgld",
        study=study,
        space=SPACE,
        base_payload=base,
        ref=REF,
        prune=studies.prunes(cfg),
    )
    t0 = time.perf_counter()
    driver = tuning.Driver(
        [task],
        submit,
        max_trials=trials,
        batch_size=cfg.batch_size,
        sync=lambda: studies.sync_storage(storage, wait=False),
    )
    driver.recover(task)
    driver.run()
    studies.sync_storage(storage)
    rows = results.study_rows(study, task.pid, task.method, REF)
    parquet.write_parquet(rows, root / "results" / layout.TRIALS_TABLE)
    studies.export_pickle(study, root / "results", task.pid, task.method)
    elapsed = time.perf_counter() - t0
    assert task.counts.finished == trials and len(rows) == trials
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating repeats (median kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = OptunaConfig(batch_size=args.batch_size, isolate=False)
    n = args.trials
    wf, pl, same = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        config = configs.local_config(workers=args.workers, run_dir=root / "runinfo")
        with session.parsl_session(config):
            submit = trial_submit.submitter()
            warm = {
                "hyperparams": {},
                "run_id": "warm",
                "run_dir": str(root / "warm"),
                "artifacts": str(root),
                "budget_sec": 1.0,
                "isolate": False,
                "target": "lambda_hat.trial.synthetic:synthetic_trial",
            }
            submit(warm).result()
            startup = time.perf_counter() - t0
            for r in range(args.rounds):  # alternate, so that load on a shared machine hits both
                pl.append(plain(n, cfg, args.seed + r))
                wf.append(workflow(n, cfg, args.seed + r, submit, root / f"round{r}"))
                same.append(plain_same_work(n, cfg, args.seed + r))
                print(
                    f"round {r}: plain {1e3 * pl[-1] / n:.2f} ms/trial, "
                    f"workflow {1e3 * wf[-1] / n:.2f} ms/trial, "
                    f"plain with the same TPE work {1e3 * same[-1] / n:.2f} ms/trial"
                )
    p, w, sw = statistics.median(pl), statistics.median(wf), statistics.median(same)
    print(
        f"trials: {n} per run, sampler: TPE (multivariate, constant liar), batch "
        f"{args.batch_size}, {args.workers} Parsl workers, median of {args.rounds} rounds"
    )
    print(f"plain Optuna ask/tell (in-memory):    {1e3 * p / n:7.2f} ms/trial")
    print(
        f"workflow (Parsl + journal + Parquet): {1e3 * w / n:7.2f} ms/trial  "
        f"(Parsl start-up {startup:.1f} s once per run, not counted)"
    )
    paired = statistics.median(a / b for a, b in zip(wf, pl, strict=True))
    print(
        f"ratio workflow / plain: {w / p:.2f}x   (target: < 50 ms/trial and < 2x); "
        f"median of the per-round ratios {paired:.2f}x"
    )
    print(
        f"plain, same TPE work as the workflow:  {1e3 * sw / n:7.2f} ms/trial "
        f"(batch asked ahead + constraints; ratio workflow / this: {w / sw:.2f}x)"
    )


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
