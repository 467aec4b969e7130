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

Usage: ``python bench/bench_validation.py [--reps 2000] [--trials 100] [--top-k 3] [--seeds 3]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

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
                c,
                list(
                    np.abs(b[c.trial_number] + s[c.trial_number] * fresh[c.trial_number, :n_seeds])
                ),
            )
            for c in cands
        ]
        chosen = cands[pick(validated)].trial_number
        out[(k, n_seeds)] = true_error(b[chosen], s[chosen])
        out[(k, n_seeds, "bias")] = abs(b[chosen])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
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
    main()
