"""Validated winners vs. the luckiest trial, on a synthetic objective with seed noise.

A configuration θ = (log10 ε, T) of a sampler-like method has a true signed error
b(θ) = A·ε/ε₀ (a step-size bias, as ULA's) and a per-seed noise of sd σ(θ) = B/√(T·ε/ε₀)
(small steps mix slowly: fewer effective draws), so one run's error is b(θ) + σ(θ)·z. The
*true error* of θ is what a user gets on a new seed, E|b + σz| (a folded normal, exact), and
|b| is shown too. Each repetition draws ``--trials`` random configurations, runs each once at
the tuning seed, then applies two rules:

- ``best trial``: the configuration of the smallest observed |error|;
- ``validated``: the ``top_k`` best configurations re-run on ``seeds`` fresh seeds, the lowest
  mean |error| recommended — :func:`lambda_hat.study.validation.top_candidates` and
  :func:`lambda_hat.study.validation.pick`, the stage's own code.

Prints, over ``--reps`` repetitions: the mean true error of each rule, their ratio, the
fraction of repetitions where the validated choice is strictly better / the same / worse, the
best trial's tuned |error| (its optimism), the oracle (the truly best configuration among the
trials), then the ratio for other (top_k, seeds).

Then the tuning objectives (``--objectives``): each trial also reports its own SE, σ(θ) times
a lognormal estimation noise (sd ``--se-noise`` in log) and ``--se-scale`` (< 1: the SE
understates the seed-to-seed spread), the reference has SE ``--se-ref`` and its own error (one
draw per repetition, shared by every run), and each objective ranks the same trials with
:func:`lambda_hat.study.scoring.objective_values` and picks with
:func:`lambda_hat.study.validation.pick` (``ucb``: the bound of the validated mean; ``abs``:
the mean |error|). Per objective: the mean true error of the recommendation, the median ratio
validated mean |error| / tuned |error|, and how often the recommendation is reliable (|z| ≤ 2,
:func:`lambda_hat.study.reliability.z_score`) — the issue's targets, in the model.

Usage: ``python bench/bench_validation.py [--reps 2000] [--trials 100] [--top-k 3] [--seeds 3]
[--objectives] [--se-ref 0.02] [--se-noise 0.25] [--se-scale 1.0]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from lambda_hat.study.reliability import Z_LIMIT
from lambda_hat.study.scoring import objective_values
from lambda_hat.study.validation import Validated, pick, top_candidates

A, B, EPS0 = 0.05, 2.0, 1e-4  # bias at ε₀, noise scale
LOG_EPS, STEPS = (-6.0, -3.0), (500, 5000)


def bias_sd(log_eps: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b(θ) and σ(θ) of the synthetic objective."""
    ratio = 10.0**log_eps / EPS0
    return A * ratio, B / np.sqrt(steps * ratio)


def true_error(b: float, s: float) -> float:
    """E|b + s·z|, z ~ N(0, 1): the expected |error| of a configuration on a new seed."""
    phi = math.exp(-0.5 * (b / s) ** 2) / math.sqrt(2 * math.pi)
    return 2 * s * phi + b * math.erf(b / (s * math.sqrt(2)))


def one_rep(rng: np.random.Generator, trials: int, grid: list[tuple[int, int]]) -> dict:
    """One tuning run of ``trials`` random configurations and each rule's true error."""
    log_eps = rng.uniform(*LOG_EPS, trials)
    steps = rng.integers(STEPS[0], STEPS[1] + 1, trials)
    b, s = bias_sd(log_eps, steps)
    tuned = np.abs(b + s * rng.standard_normal(trials))
    scored = [(float(tuned[i]), i, {"i": i}, None) for i in range(trials)]
    best = int(np.argmin(tuned))
    out = {
        "best": true_error(b[best], s[best]),
        "best_bias": abs(b[best]),
        "best_tuned": float(tuned[best]),
        "oracle": min(true_error(b[i], s[i]) for i in range(trials)),
    }
    fresh = rng.standard_normal((trials, max(s for _, s in grid)))  # common random numbers
    for k, n_seeds in grid:
        cands = top_candidates(scored, k)
        validated = [
            Validated(
                c, list(b[c.trial_number] + s[c.trial_number] * fresh[c.trial_number, :n_seeds])
            )
            for c in cands
        ]
        chosen = cands[pick(validated)].trial_number
        out[(k, n_seeds)] = true_error(b[chosen], s[chosen])
        out[(k, n_seeds, "bias")] = abs(b[chosen])
    return out


#: The objectives compared: (label, scoring objective, its ucb_sigmas, the pick's sigmas).
OBJECTIVES = [
    ("abs (before)", "abs", 0.0, None),
    ("ucb 0.5 SE", "ucb", 0.5, 0.5),
    ("ucb 1 SE", "ucb", 1.0, 1.0),
    ("ucb 2 SE", "ucb", 2.0, 2.0),
    ("ucb 1 SE, abs pick", "ucb", 1.0, None),
    ("z = |e|/SE", "z", 0.0, None),
]


def _score(objective: str, sigmas: float, err: float, se: float, se_ref: float) -> float:
    """A trial's objective, as the driver scores it (``z``: |e| over the combined SE, the
    rejected alternative that rewards noise)."""
    if objective == "z":
        return abs(err) / math.hypot(se, se_ref)
    metrics = {"status": "ok", "llc_hat": 1.0 + err, "se_hat": se}
    ref = {"llc_ref": 1.0, "se_ref": se_ref}
    return objective_values(metrics, ref, objective, ucb_sigmas=sigmas)[0]


def objectives_rep(rng: np.random.Generator, args: argparse.Namespace) -> dict:
    """One tuning run of random configurations, ranked and validated under every objective."""
    n, k, n_seeds = args.trials, args.top_k, args.seeds
    b, s = bias_sd(rng.uniform(*LOG_EPS, n), rng.integers(STEPS[0], STEPS[1] + 1, n))
    ref_err = args.se_ref * rng.standard_normal()  # the reference's own error, shared

    def se_of(shape: tuple) -> np.ndarray:  # σ x scale x lognormal estimation noise
        sd = s.reshape(-1, *([1] * (len(shape) - 1)))
        return sd * args.se_scale * np.exp(args.se_noise * rng.standard_normal(shape))

    tuned = b + s * rng.standard_normal(n) - ref_err
    tuned_se = se_of((n,))
    fresh = b[:, None] + s[:, None] * rng.standard_normal((n, n_seeds)) - ref_err
    fresh_se = se_of((n, n_seeds))
    out = {}
    for label, objective, sigmas, pick_sigmas in OBJECTIVES:
        scored = [
            (_score(objective, sigmas, tuned[i], tuned_se[i], args.se_ref), i, {"i": i}, tuned[i])
            for i in range(n)
        ]
        validated = [
            Validated(
                c, list(fresh[c.trial_number]), 0, list(fresh_se[c.trial_number]), args.se_ref
            )
            for c in top_candidates(scored, k)
        ]
        v = validated[pick(validated, pick_sigmas)]
        i = v.candidate.trial_number
        out[label] = {
            "true": true_error(b[i], s[i]),
            "bias": abs(b[i]),
            "ratio": v.mean / abs(tuned[i]),
            "reliable": abs(v.z) <= Z_LIMIT,
            "tuned_se": tuned_se[i] / abs(tuned[i]),
        }
    return out


def compare_objectives(args: argparse.Namespace) -> None:
    """Print, per objective, the recommendation's true error and the issue's two targets."""
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    reps = [objectives_rep(rng, args) for _ in range(args.reps)]
    print(
        f"objectives: {args.reps} repetitions x {args.trials} trials, top {args.top_k} x "
        f"{args.seeds} seeds; se_ref {args.se_ref}, SE noise {args.se_noise}, SE scale "
        f"{args.se_scale} ({time.perf_counter() - t0:.1f}s)"
    )
    print("  objective            true error  |bias|   median val/tuned  ratio<=2  reliable")
    for label, *_ in OBJECTIVES:
        rs = [r[label] for r in reps]
        ratio = [r["ratio"] for r in rs]
        print(
            f"  {label:<20} {statistics.fmean(r['true'] for r in rs):.4f}      "
            f"{statistics.fmean(r['bias'] for r in rs):.4f}   {statistics.median(ratio):8.2f}"
            f"          {sum(x <= 2 for x in ratio) / len(rs):6.1%}   "
            f"{sum(r['reliable'] for r in rs) / len(rs):6.1%}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objectives", action="store_true", help="compare the tuning objectives")
    p.add_argument("--se-ref", type=float, default=0.02)
    p.add_argument("--se-noise", type=float, default=0.25)
    p.add_argument("--se-scale", type=float, default=1.0)
    args = p.parse_args()
    if args.objectives:
        compare_objectives(args)
        return
    main_rule = (args.top_k, args.seeds)
    grid = sorted({main_rule, (1, 3), (3, 1), (3, 3), (5, 3), (3, 5), (10, 3)})
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    reps = [one_rep(rng, args.trials, grid) for _ in range(args.reps)]
    best = [r["best"] for r in reps]
    val = [r[main_rule] for r in reps]
    diff = [v - b for v, b in zip(val, best, strict=True)]
    print(
        f"{args.reps} repetitions x {args.trials} random trials; validated = top_k {args.top_k} "
        f"x {args.seeds} fresh seeds ({time.perf_counter() - t0:.1f}s)"
    )
    print(
        f"  best trial : true error {statistics.fmean(best):.4f} (|bias| "
        f"{statistics.fmean(r['best_bias'] for r in reps):.4f}), its tuned |error| "
        f"{statistics.fmean(r['best_tuned'] for r in reps):.4f}"
    )
    print(
        f"  validated  : true error {statistics.fmean(val):.4f} (|bias| "
        f"{statistics.fmean(r[(*main_rule, 'bias')] for r in reps):.4f})"
    )
    print(
        f"  ratio validated / best = {statistics.fmean(val) / statistics.fmean(best):.3f}; "
        f"validated better in {sum(d < 0 for d in diff) / len(diff):.1%}, same choice "
        f"{sum(d == 0 for d in diff) / len(diff):.1%}, worse {sum(d > 0 for d in diff) / len(diff):.1%}"
    )
    oracle = statistics.fmean(r["oracle"] for r in reps)
    print(f"  oracle     : true error {oracle:.4f} (the best configuration among the trials)")
    print("  other rules (top_k x seeds: extra runs, true error, ratio to best trial):")
    for k, n in grid:
        mean = statistics.fmean(r[(k, n)] for r in reps)
        print(f"    {k:2d} x {n}: {k * n:3d} runs, {mean:.4f}, {mean / statistics.fmean(best):.3f}")


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
