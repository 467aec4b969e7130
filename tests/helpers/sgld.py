"""SGLD's known answers on quadratic losses (discrete Lyapunov closed forms) and a full-batch
driver of its kernel, as the runner runs it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import solve_discrete_lyapunov

from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.problem import theory
from lambda_hat.samplers import sgld


def minibatch_ula_llc(post, H, F, eps, batch):
    """Stationary λ̂ of minibatch SGLD on a quadratic L_n, gradient noise Cov = F/batch.

    w' − w* = (I − εA/2)(w − w*) + √ε ξ + (ε/2)nβ η  ⇒  Σ = BΣBᵀ + εI + (ε²/4)(nβ)² F/batch.
    """
    A = post.nbeta * H + post.gamma * np.eye(len(H))
    B = np.eye(len(H)) - 0.5 * eps * A
    Q = eps * np.eye(len(H)) + 0.25 * eps**2 * post.nbeta**2 * F / batch
    sigma = solve_discrete_lyapunov(B, Q)
    return 0.5 * post.nbeta * np.trace(H @ sigma)


def drive_sgld(
    post, eps, steps, chains, precond="none", every=10, seed=0, adapt_steps=None, P0=None
):
    """Run full-batch SGLD as the runner does (blocks of ``every`` steps, L_n at each block's
    end, 20 % burn-in, P adapted during its first half unless ``adapt_steps`` says otherwise;
    ``P0``: every chain's initial P).

    Returns (estimate_llc dict of the kept draws, final states, kept MALA acceptances).
    """
    blocks = steps // every
    burn = blocks // 5
    if adapt_steps is None:
        adapt_steps = 0 if precond == "none" else burn * every // 2
    k_start, k_run = jax.random.split(jax.random.PRNGKey(seed))
    states = jax.vmap(lambda w: sgld.init(w, P0))(chain_starts(post, k_start, chains))
    loss, accept, state = _sgld_program(post, precond, every, blocks)(
        jax.random.split(k_run, chains), states, jnp.float64(eps), jnp.int64(adapt_steps)
    )
    kept = np.asarray(loss)[:, burn:]
    return estimate_llc(kept, post.loss_star, post.nbeta), state, np.asarray(accept)[:, burn:]


_PROGRAMS: dict = {}


def _sgld_program(post, precond, every, blocks):
    """The jitted run of ``blocks`` blocks per chain, step size and adapt length traced
    (one compile per posterior, preconditioner and shape, as in the runner)."""
    key = (id(post), precond, every, blocks)
    if key not in _PROGRAMS:
        kernel = sgld.build_kernel(post, post.n, precond)

        @jax.jit
        def run(keys, states, eps, adapt):
            block = sgld.build_block(kernel, post, eps, every, adapt, "full")

            def chain(key, state):
                return jax.lax.scan(lambda s, b: block(key, s, b), state, jnp.arange(blocks))

            state, (loss, accept) = jax.vmap(chain)(keys, states)
            return loss, accept, state

        _PROGRAMS[key] = run
    return _PROGRAMS[key]


def expected_llc(H, post, eps, precond, grad=None, grad_cov=None) -> float:
    """The closed form averaged over chains, each with the P it froze ((C, d) array)."""
    values = [
        theory.precond_ula_llc(H, post.n, post.beta, post.gamma, eps, P, grad, grad_cov)
        for P in np.asarray(precond)
    ]
    return float(np.mean(values))
