"""Failed trials as constraints vs. failed trials scored as the worst value (or as FAIL).

A synthetic tuning problem shaped like the users' case: four hyperparameters, and successes only
in a narrow band of step sizes. Steps above a stability edge (which moves with ``gamma`` and
``batch``) diverge, earlier the further out they are; steps far below it run out of budget
(timeout, with the fraction done). The objective is smallest just inside the stability edge, as
for SGLD, where a larger step mixes better until it blows up.

Each strategy gets the same trial budget and seed:

- ``worst``: TPE, a failure told as ``COMPLETE`` with the worst value (``inf``), what users did;
- ``fail``: TPE, a failure told as Optuna's ``FAIL`` state (ignored by the sampler);
- ``constraint``: TPE, :func:`lambda_hat.study.tell.tell` (graded constraint, finite
  placeholder): lambda_hat before issue 13;
- ``lambda_hat``: the same ``tell`` with lambda_hat's ``tpe`` sampler
  (:func:`lambda_hat.study.optuna_samplers.make_sampler`: Sobol start-up, then multivariate TPE in a
  box around the successes).

Prints, per strategy, the median over seeds of the number of failed trials in the second half
of the run and of the best objective found, plus the ratios against ``lambda_hat``.

Usage: ``python bench/bench_failures.py [--seeds 20] [--trials 60] [--tpe-gamma 0.25]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import optuna

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.study.optuna_samplers import make_sampler
from lambda_hat.study.tell import tell
from lambda_hat.trial.outcome import failed_metrics

STEPS = 10_000
STRATEGIES = ("worst", "fail", "constraint", "lambda_hat")
# name -> (width of the success band in decades of step size, log10 step-size search range)
SCENARIOS = {
    "narrow": (0.3, (-8.0, 0.0)),  # the users' case: about 4% of the space succeeds
    "wide": (1.0, (-6.0, -1.0)),  # about 20% succeeds
}


def synthetic_trial(
    log_eta: float, gamma: float, batch: float, nuisance: float, width: float
) -> dict:
    """Metrics of one synthetic run (the runner's shape): ok, diverged or timeout.

    The objective is 0 at the optimum (``log_eta`` just inside the stability edge,
    ``gamma = 0.7``, ``nuisance = 0.4``), so a best value is the excess over the optimum.
    """
    edge = -4.5 + 1.5 * gamma - 0.5 * batch  # log10 of the largest stable step size
    floor = edge - width  # below this the run cannot finish in its budget
    if log_eta > edge:
        step = max(1, int(STEPS * math.exp(-3.0 * (log_eta - edge))))
        return failed_metrics("diverged", "non-finite loss", step=step, steps_total=STEPS)
    if log_eta < floor:
        return failed_metrics("timeout", "budget spent", fraction_done=10.0 ** (log_eta - floor))
    error = (
        (log_eta - (edge - 0.15 * width)) ** 2
        + 0.5 * (gamma - 0.7) ** 2
        + 0.3 * (nuisance - 0.4) ** 2
    )
    return {"status": "ok", "error": error}


def run_study(
    strategy: str, seed: int, n_trials: int, scenario: str, tpe_gamma: float | None = None
) -> tuple[int, float]:
    """(failed trials in the second half, best successful objective or inf) for one run."""
    width, (lo, hi) = SCENARIOS[scenario]
    kwargs = {}
    if tpe_gamma is not None:
        kwargs["gamma"] = lambda n: min(math.ceil(tpe_gamma * n), 25)
    if strategy == "lambda_hat":
        sampler = make_sampler(OptunaConfig(), seed)
        if tpe_gamma is not None:
            sampler._gamma = kwargs["gamma"]
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, **kwargs)
    study = optuna.create_study(sampler=sampler)
    failed_late, best = 0, math.inf
    for i in range(n_trials):
        trial = study.ask()
        metrics = synthetic_trial(
            trial.suggest_float("log_eta", lo, hi),
            trial.suggest_float("gamma", 0.0, 1.0),
            trial.suggest_float("batch", 0.0, 1.0),
            trial.suggest_float("nuisance", 0.0, 1.0),
            width,
        )
        ok = metrics["status"] == "ok"
        if ok:
            best = min(best, metrics["error"])
        elif i >= n_trials // 2:
            failed_late += 1
        if strategy in ("constraint", "lambda_hat"):
            tell(study, trial, metrics, lambda m: m["error"])
        elif strategy == "worst":
            study.tell(trial, metrics["error"] if ok else math.inf)
        else:
            study.tell(
                trial,
                metrics["error"] if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            )
    return failed_late, best


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument(
        "--tpe-gamma",
        type=float,
        default=None,
        help="fraction of trials TPE counts as 'good' (Optuna default: 0.1, at most 25)",
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    late = args.trials - args.trials // 2
    gamma = "default gamma" if args.tpe_gamma is None else f"gamma {args.tpe_gamma:g}"
    print(
        f"{args.seeds} seeds x {args.trials} trials, TPESampler ({gamma}; lambda_hat: its own "
        "tpe), "
        f"optuna {optuna.__version__}; best objective: 0 is the optimum, inf = no success"
    )
    out = {}
    for scenario in args.scenarios:
        print(f"scenario {scenario!r} (success band {SCENARIOS[scenario][0]:g} decades wide):")
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            runs = [
                run_study(strategy, seed, args.trials, scenario, args.tpe_gamma)
                for seed in range(args.seeds)
            ]
            fails = statistics.median(r[0] for r in runs)
            best = statistics.median(r[1] for r in runs)
            out[scenario, strategy] = (fails, best)
            print(
                f"  {strategy:>10}: median failed trials in 2nd half {fails:4.1f} / {late}, "
                f"median best objective {best:.4f}, "
                f"seeds without success {sum(math.isinf(r[1]) for r in runs)}/{args.seeds} "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        ours_f, ours_b = out[scenario, "lambda_hat"]
        for strategy in ("worst", "fail", "constraint"):
            f, b = out[scenario, strategy]
            print(
                f"  lambda_hat / {strategy}: failed trials x{ours_f / f if f else math.nan:.2f}, "
                f"best objective x{ours_b / b:.2f} (below 1: lambda_hat better)"
            )
    return out


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
