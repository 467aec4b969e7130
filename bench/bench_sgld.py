"""SGLD throughput of the trial runner against a bare compiled SGLD loop, measured in one run.

Problem: presets ``model: mlp10k`` (about 10k parameters), ``data: large`` (n = 20,000);
4 chains, batch 256. Five timings of execution (compile excluded everywhere), in rounds that
interleave the variants (best of ``--repeats`` rounds kept), so load drift hits all alike:

- ``runner``: :func:`lambda_hat.runner.run_method_trial` — chunked scans with budget and
  divergence checks between chunks, the full-data L_n draw every ``eval_every`` steps, the
  MALA probe (one extra minibatch gradient per draw); its ``seconds.run``.
- ``bare+eval``: one ``jit(vmap(lax.scan))`` of the plain SGLD update that also evaluates the
  full-data L_n every ``eval_every`` steps — the least work an SGLD LLC estimate needs.
- ``bare+probe``: ``bare+eval`` plus one extra minibatch gradient per L_n draw (the cost of
  the runner's MALA probe), so ``runner / bare+probe`` isolates what chunking, host syncs and
  bookkeeping cost, and ``bare+probe / bare+eval`` what the probe costs.
- ``bare+eval, data as constants``: ``bare+eval`` closing over X and y, which XLA then
  compiles as constants (how the runner's programs were built before they took the data as
  arguments).
- ``bare``: the plain update alone (no loss trace; for context only).

All variants but the one named so take the data X, y as arguments, as the runner does.

Prints steps/s (per chain × chains), FGE/s (one step = batch/n) and the ratios
runner / bare+eval (target >= 0.8) and runner / bare.

    python bench/bench_sgld.py [--steps 2000] [--repeats 3] [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp

from lambda_hat.config import resolve_problem
from lambda_hat.posterior import regression_posterior
from lambda_hat.problems import build_problem
from lambda_hat.runner import run_method_trial

CHAINS, BATCH, ETA = 4, 256, 1e-7


def bare_loop(problem, steps: int, eval_every: int | None, probe: bool = False):
    """``run(keys (C,), w0 (C, d), X, y) -> (w, losses)``: minimal SGLD, chains vmapped.

    ``probe``: one extra minibatch gradient per L_n draw (what the MALA probe costs).
    """
    ref = problem.posterior()

    def run(keys, w0, X, y):
        post = regression_posterior(
            problem.model.apply, X, y, problem.spec.data.noise, ref.w_star, ref.beta,
            ref.gamma, ref.loss_star,
        )  # fmt: skip
        nbeta, gamma, w_star, n = post.nbeta, post.gamma, post.w_star, post.n
        grad = jax.grad(post.batch_loss)

        def update(w, key):
            k_b, k_n = jax.random.split(key)
            g = grad(w, jax.random.randint(k_b, (BATCH,), 0, n))
            noise = jax.random.normal(k_n, w.shape)
            return w - 0.5 * ETA * (nbeta * g + gamma * (w - w_star)) + jnp.sqrt(ETA) * noise

        def chain(key, w):
            if eval_every is None:
                w = jax.lax.fori_loop(
                    0, steps, lambda i, w: update(w, jax.random.fold_in(key, i)), w
                )
                return w, jnp.zeros(())

            def block(w, b):
                w = jax.lax.fori_loop(
                    0,
                    eval_every,
                    lambda i, w: update(w, jax.random.fold_in(key, b * eval_every + i)),
                    w,
                )
                loss = post.loss(w)
                if probe:
                    idx = jax.random.randint(jax.random.fold_in(key, -b - 1), (BATCH,), 0, n)
                    loss = loss + 0 * jnp.sum(grad(w, idx))
                return w, loss

            return jax.lax.scan(block, w, jnp.arange(steps // eval_every))

        return jax.vmap(chain)(keys, w0)

    return run


def compile_bare(problem, steps, eval_every, probe=False, constants=False):
    """``() -> seconds``: one timed execution of the compiled bare loop.

    ``constants``: the data are closed over (XLA constants) instead of passed as arguments.
    """
    run = bare_loop(problem, steps, eval_every, probe)
    keys = jax.random.split(jax.random.PRNGKey(1), CHAINS)
    w0 = jnp.broadcast_to(problem.w_star, (CHAINS, problem.d))
    args = (keys, w0) if constants else (keys, w0, problem.X, problem.y)
    if constants:
        compiled = jax.jit(lambda k, w: run(k, w, problem.X, problem.y)).lower(*args).compile()
    else:
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

    def runner_trial(seed):
        m = run_method_trial(problem, "sgld", hp, None, seed, artifacts=runs_dir)
        if m["status"] != "ok":
            raise SystemExit(f"runner trial failed: {m['failure']}")
        return m

    m = runner_trial(0)  # compiles (timed apart), then every round reuses the programs
    compile_s, eval_every = m["seconds"]["compile"], m["diagnostics"]["eval_every"]
    steps = m["work"]["steps"]  # whole blocks of eval_every steps
    bare = {
        "bare+eval": compile_bare(problem, steps, eval_every),
        "bare+probe": compile_bare(problem, steps, eval_every, probe=True),
        "bare+eval, data as constants": compile_bare(problem, steps, eval_every, constants=True),
        "bare": compile_bare(problem, steps, None),
    }
    best = dict.fromkeys(["runner", *bare], float("inf"))
    for r in range(args.repeats):  # rounds interleave the variants: load drift hits all alike
        best["runner"] = min(best["runner"], runner_trial(r + 1)["seconds"]["run"])
        for name, timed in bare.items():
            best[name] = min(best[name], timed())
    ours, bare_eval, bare_probe = best["runner"], best["bare+eval"], best["bare+probe"]

    fge_per_step = BATCH / post.n
    print(
        f"device: {jax.devices()[0].device_kind}  d = {post.d}  n = {post.n}  "
        f"batch = {BATCH}  chains = {CHAINS}  steps/chain = {steps}  eval_every = {eval_every}"
    )
    print(f"{'variant':<28} {'seconds':>9} {'steps/s':>12} {'FGE/s':>10}")
    for name, sec in best.items():
        rate = CHAINS * steps / sec
        print(f"{name:<28} {sec:9.3f} {rate:12.1f} {rate * fge_per_step:10.2f}")
    print(f"runner compile (first trial): {compile_s:.2f}s (excluded above)")
    print(f"ratio runner / bare+eval     = {bare_eval / ours:.3f}   (target >= 0.8)")
    print(
        f"ratio runner / bare+probe    = {bare_probe / ours:.3f}   (chunking, syncs, bookkeeping)"
    )
    print(f"ratio bare+probe / bare+eval = {bare_eval / bare_probe:.3f}   (the MALA probe)")
    const = best["bare+eval, data as constants"]
    print(f"ratio bare+eval with the data as constants / as arguments = {bare_eval / const:.3f}")
    print(f"ratio runner / bare          = {best['bare'] / ours:.3f}")


if __name__ == "__main__":
    main()
