"""HMC reference throughput vs a bare compiled gradient loop, measured in one run.

Runs the NUTS reference of a small MLP problem (preset model `small`, data `base`: d ≈ 100,
n = 1000) and, in the same process, a bare `lax.scan` of the same log-density gradient over
the same number of vmapped chains. Prints gradient evaluations per second of each (compile
excluded) and their ratio. Target: ratio >= 0.7.

    python bench/bench_hmc.py [--draws 200] [--warmup 100] [--chains 4]

The MLP posterior is stiff (NUTS runs deep trees), so a few hundred draws already mean
hundreds of thousands of gradient evaluations.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp

from lambda_hat.log import setup_logging
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference.nuts import compute_reference
from lambda_hat.reference.settings import ReferenceConfig


def bare_grad_rate(post, chains: int, steps: int) -> float:
    """Gradient evaluations per second of a plain scan of value_and_grad(logdensity)."""
    vg = jax.value_and_grad(post.logdensity)

    def body(w, _):
        v, g = vg(w)
        return w + 1e-12 * g, v  # depend on the gradient so XLA cannot hoist it

    run = jax.jit(jax.vmap(lambda w: jax.lax.scan(body, w, None, length=steps)))
    w0 = jnp.tile(post.w_star, (chains, 1))
    compiled = run.lower(w0).compile()
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(w0))
    return chains * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--chains", type=int, default=4)
    args = ap.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as art:
        problem = build_problem(resolve_problem({"model": "small", "data": "base"}), art)
        cfg = ReferenceConfig(
            chains=args.chains, draws=args.draws, warmup=args.warmup, chunk=args.draws
        )
        ref = compute_reference(problem, cfg)
        post = problem.posterior(cfg.beta, cfg.gamma)
        hmc_rate = ref["grad_evals"]["sampling"] / ref["seconds"]["sampling"]
        hmc_all = ref["grad_evals"]["total"] / (
            ref["seconds"]["sampling"] + ref["seconds"]["warmup"]
        )
        per_chain_steps = min(ref["grad_evals"]["sampling"] // args.chains, 50_000)
        bare = bare_grad_rate(post, args.chains, per_chain_steps)
    print(
        f"problem {problem.pid}: d={problem.d}, n={problem.n}, {args.chains} chains, "
        f"{args.draws} draws, backend {jax.default_backend()}"
    )
    print(f"HMC sampling          : {hmc_rate:12.0f} grad evals/s")
    print(f"HMC warm-up+sampling  : {hmc_all:12.0f} grad evals/s")
    print(f"bare compiled loop    : {bare:12.0f} grad evals/s")
    print(f"ratio sampling / bare : {hmc_rate / bare:.3f}   (target >= 0.7)")
    print(f"ratio overall / bare  : {hmc_all / bare:.3f}")


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
