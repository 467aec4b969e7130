"""HMC's chunked warm-up: any split gives the same bits, and it is BlackJAX's window adaptation
to rounding.
"""

import jax
import numpy as np

from lambda_hat.llc import engine
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.samplers import hmc


def test_chunked_warmup_is_split_invariant_and_is_blackjax_window_adaptation(linear_problem):
    """Any split of the chunked warm-up gives the same bits; against BlackJAX's one-shot
    window_adaptation it spends the same gradients and agrees to rounding (measured: positions
    within 5e-9 after 300 steps, C = 4)."""
    post, C, W = linear_problem.posterior(None, 1.0), 2, 60
    k_init, k_warm = jax.random.split(jax.random.PRNGKey(3))
    positions = chain_starts(post, k_init, C)
    keys, schedule = hmc.warmup_inputs(k_warm, C, W)
    start = jax.jit(hmc.build_warmup_init(post, 0.8))(positions)
    chunk = jax.jit(hmc.build_warmup_chunk(post, 0.8, 10))
    runs = []
    for splits in ([W], [16, 1, 43]):
        carry, first = start, 0
        for m in splits:
            carry = chunk(carry, keys, schedule, engine.i64(first), engine.i64(m))
            first += m
        runs.append((hmc.warmup_final(carry, 0.8), carry))
    (a, ca), (b, cb) = runs
    for x, y in zip(jax.tree.leaves((a, ca)), jax.tree.leaves((b, cb)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    one_shot = jax.jit(hmc.build_warmup(post, W, 0.8, 10))
    ref, grads, div = one_shot(jax.random.split(k_warm, C), positions)
    np.testing.assert_array_equal(np.asarray(ca.grad_evals), np.asarray(grads))
    np.testing.assert_array_equal(np.asarray(ca.divergent), np.asarray(div))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-9)
