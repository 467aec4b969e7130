"""SGLD throughput of the trial runner at its defaults against a bare compiled loop of the same
minibatch gradient steps, measured in one process; float32 against float64.

Problem: presets ``model: mlp10k`` (about 10k parameters), ``data: large`` (n = 20,000);
4 chains, batch 256. Timings of execution (compile excluded everywhere), in rounds that
interleave the variants (best of ``--repeats`` rounds kept), so load drift hits all alike:

- ``runner``: :func:`lambda_hat.trial.runner.run_method_trial` at SGLD's defaults (estimator
  included: the minibatch estimator costs no extra work) — chunked loops with budget and
  divergence checks between chunks, the MALA probe (one extra minibatch gradient per block);
  its ``seconds.run``. ``runner, full`` is the same with ``estimator: full`` (one full-data
  L_n pass per block of ``eval_every`` steps).
- ``bare``: one ``jit(vmap(fori_loop))`` of the plain SGLD update alone: the minibatch gradient
  steps and nothing else (no L_n evaluation, no probe) — the least work SGLD can do.
- ``bare+eval``: ``bare`` plus a full-data L_n every ``eval_every`` steps (what ``runner,
  full`` must at least do).

Each in float64 and float32 (``dtype``). All take the data X, y as arguments, as the runner
does. Prints steps/s (per chain × chains), FGE/s (one step = batch/n) and the ratios
runner / bare (target >= 0.85), runner full / bare+eval and float32 / float64.

    python bench/bench_sgld.py [--steps 2000] [--repeats 3] [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp

from lambda_hat.llc.posterior import regression_posterior
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.trial.runner import run_method_trial

CHAINS, BATCH, ETA = 4, 256, 1e-7
DTYPES = ("float64", "float32")


def bare_loop(problem, steps: int, eval_every: int | None):
    """``run(keys (C,), w0 (C, d), X, y, w*) -> (w, losses)``: minimal SGLD, chains vmapped;
    with ``eval_every`` also the full-data L_n every ``eval_every`` steps."""
    ref = problem.posterior()

    def run(keys, w0, X, y, w_star):
        post = regression_posterior(
            problem.model.apply, X, y, problem.spec.data.noise, w_star, ref.beta, ref.gamma,
            ref.loss_star,
        )  # fmt: skip
        nbeta, gamma, n = post.nbeta, post.gamma, post.n
        grad = jax.grad(post.batch_loss)

        def update(w, key):
            k_b, k_n = jax.random.split(key)
            g = grad(w, jax.random.randint(k_b, (BATCH,), 0, n))
            noise = jax.random.normal(k_n, w.shape, w.dtype)
            return w - 0.5 * ETA * (nbeta * g + gamma * (w - w_star)) + jnp.sqrt(ETA) * noise

        def chain(key, w):
            if eval_every is None:
                w = jax.lax.fori_loop(
                    0, steps, lambda i, w: update(w, jax.random.fold_in(key, i)), w
                )
                return w, jnp.zeros((), w.dtype)

            def block(w, b):
                w = jax.lax.fori_loop(
                    0,
                    eval_every,
                    lambda i, w: update(w, jax.random.fold_in(key, b * eval_every + i)),
                    w,
                )
                return w, post.loss(w)

            return jax.lax.scan(block, w, jnp.arange(steps // eval_every))

        return jax.vmap(chain)(keys, w0)

    return run


def compile_bare(problem, steps, eval_every, dtype):
    """``() -> seconds``: one timed execution of the compiled bare loop in ``dtype``."""
    run = bare_loop(problem, steps, eval_every)
    keys = jax.random.split(jax.random.PRNGKey(1), CHAINS)
    X, y, w_star = (jnp.asarray(a, dtype) for a in (problem.X, problem.y, problem.w_star))
    args = (keys, jnp.broadcast_to(w_star, (CHAINS, problem.d)), X, y, w_star)
    compiled = jax.jit(run).lower(*args).compile()

    def timed():
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        return time.perf_counter() - t0

    return timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="SGLD steps per chain")
    p.add_argument("--repeats", type=int, default=3, help="rounds of all variants (best kept)")
    p.add_argument("--artifacts", default="artifacts", help="where the problem is cached")
    args = p.parse_args()

    problem = build_problem(resolve_problem({"model": "mlp10k", "data": "large"}), args.artifacts)
    post = problem.posterior()
    hp = {"eta0": ETA, "batch": BATCH, "steps": args.steps, "chains": CHAINS}
    runs_dir = tempfile.mkdtemp(prefix="bench_sgld_")

    def runner(extra):
        def trial(seed):
            m = run_method_trial(problem, "sgld", {**hp, **extra}, None, seed, artifacts=runs_dir)
            if m["status"] != "ok":
                raise SystemExit(f"runner trial failed: {m['failure']}")
            return m

        return trial

    variants, shape = {}, {}  # shape: name -> (steps per chain, eval_every) it ran
    for dtype in DTYPES:
        for name, extra in (("runner", {}), ("runner, full", {"estimator": "full"})):
            trial = runner({**extra, "dtype": dtype})
            m = trial(0)  # compiles (timed apart), then every round reuses the programs
            variants[f"{name} {dtype}"] = lambda r, t=trial: t(r + 1)["seconds"]["run"]
            shape[f"{name} {dtype}"] = (m["work"]["steps"], m["diagnostics"]["eval_every"])
    for dtype in DTYPES:  # the bare loops run the steps of the runner they are compared with
        for name, every, like in (("bare", None, "runner"), ("bare+eval", 1, "runner, full")):
            steps, E = shape[f"{like} {dtype}"]
            timed = compile_bare(problem, steps, every and E, dtype)
            variants[f"{name} {dtype}"] = lambda r, t=timed: t()
            shape[f"{name} {dtype}"] = (steps, every and E)
    best = dict.fromkeys(variants, float("inf"))
    for r in range(args.repeats):  # rounds interleave the variants: load drift hits all alike
        for name, run in variants.items():
            best[name] = min(best[name], run(r))
    rate = {name: CHAINS * shape[name][0] / sec for name, sec in best.items()}

    print(
        f"device: {jax.devices()[0].device_kind}  d = {post.d}  n = {post.n}  "
        f"batch = {BATCH}  chains = {CHAINS}"
    )
    print(f"{'variant':<24} {'steps':>6} {'E':>4} {'seconds':>9} {'steps/s':>10} {'FGE/s':>8}")
    for name, sec in best.items():
        steps, E = shape[name]
        print(
            f"{name:<24} {steps:>6} {E or '-':>4} {sec:9.3f} {rate[name]:10.1f} "
            f"{rate[name] * BATCH / post.n:8.2f}"
        )
    for dt in DTYPES:
        print(
            f"{dt}: runner / bare = {rate[f'runner {dt}'] / rate[f'bare {dt}']:.3f} (target >= "
            f"0.85)   runner full / bare = {rate[f'runner, full {dt}'] / rate[f'bare {dt}']:.3f}"
            f"   runner full / bare+eval = "
            f"{rate[f'runner, full {dt}'] / rate[f'bare+eval {dt}']:.3f}"
        )
    for name in ("runner", "runner, full", "bare", "bare+eval"):
        ratio = rate[f"{name} float32"] / rate[f"{name} float64"]
        print(f"speed float32 / float64, {name}: {ratio:.3f}")


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
