"""SGLD's two λ̂ estimators and its float32 mode, against known answers (plans/sgld-estimator.md).

Known answer: on the linear problem L_n is exactly quadratic and minibatch SGLD is a Gaussian
AR(1) chain; its stationary λ̂ solves a discrete Lyapunov equation with the minibatch-gradient
noise (:func:`test_sgld.minibatch_ula_llc`). Both estimators read the same chain (the step keys
do not depend on the estimator), so they must both land on that answer.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sgld import minibatch_ula_llc

from lambda_hat.methods.sgld import block_length
from lambda_hat.samplers import sgld
from lambda_hat.trial.runner import run_method_trial

EPS, BATCH, STEPS = 1e-4, 32, 8000


def _gradient_covariance(problem, post) -> np.ndarray:
    """Covariance F of one row's loss gradient at w* (a minibatch of B rows: F / B)."""
    per_row = jax.vmap(jax.grad(lambda w, i: post.batch_loss(w, i[None])), (None, 0))(
        problem.w_star, jnp.arange(post.n)
    )
    return np.cov(np.asarray(per_row).T, bias=True)


def _trial(problem, tmp_path, **hp):
    hp = {"eta0": EPS, "batch": BATCH, "steps": STEPS, "eval_every": 8, **hp}
    m = run_method_trial(problem, "sgld", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    with np.load(Path(m["run_dir"]) / "trace.npz") as z:
        return m, dict(z)


def test_both_estimators_hit_the_minibatch_lyapunov_answer(linear, tmp_path):
    problem, post, H = linear
    expected = minibatch_ula_llc(post, H, _gradient_covariance(problem, post), EPS, BATCH)
    (mini, mini_trace), (full, full_trace) = (
        _trial(problem, tmp_path, estimator=e) for e in ("minibatch", "full")
    )
    for m in (mini, full):
        assert abs(m["llc_hat"] - expected) < 4 * m["se_hat"], (m["llc_hat"], expected)
        assert m["diagnostics"]["rhat"] < 1.05
    # the same chain under both: identical MALA probes, different loss draws
    np.testing.assert_array_equal(mini_trace["mala_accept"], full_trace["mala_accept"])
    assert not np.allclose(mini_trace["loss"], full_trace["loss"])
    assert abs(mini["llc_hat"] - full["llc_hat"]) < 3 * np.hypot(mini["se_hat"], full["se_hat"])
    # minibatch: the w* row-loss table, once; full: one L_n pass per block and chain
    assert mini["work"]["loss_evals"] == 1 and full["work"]["loss_evals"] == 4 * STEPS // 8


@pytest.mark.parametrize("table", [False, True])
def test_minibatch_draw_is_the_mean_of_the_steps_batch_losses(linear, table):
    """One block by hand: its draw is the mean of L_B(w) − L_B(w*) + L_n(w*) over its steps
    (L_B(w*) = L_n(w*) without the row-loss table), the chain the same for both estimators."""
    _, post, _ = linear
    rows = sgld.row_losses(post) if table else None
    kernel = sgld.build_kernel(post, BATCH, row_loss_star=rows)
    key, state, block_len = jax.random.PRNGKey(4), sgld.init(post.w_star + 0.01), 5
    terms, s = [], state
    for step in range(2 * block_len, 3 * block_len):  # block index 2
        s, info = kernel(jax.random.fold_in(key, step), s, EPS)
        terms.append(float(info.batch_loss) - float(info.batch_loss_star) + post.loss_star)
    outs = {}
    for estimator in ("minibatch", "full"):
        block = sgld.build_block(kernel, post, EPS, block_len, 0, estimator)
        outs[estimator] = block(key, state, 2)
        np.testing.assert_allclose(outs[estimator][0].position, s.position, rtol=1e-12)
    assert float(outs["minibatch"][1][0]) == pytest.approx(np.mean(terms), rel=1e-12)
    assert float(outs["full"][1][0]) == pytest.approx(float(post.loss(s.position)), rel=1e-12)


def test_row_loss_table_gives_the_batch_loss_at_w_star(linear):
    """At w = w* the looked-up L_B(w*) is the step's own L_B(w), and the table's mean L_n(w*)."""
    _, post, _ = linear
    rows = sgld.row_losses(post)
    assert float(jnp.mean(rows)) == pytest.approx(post.loss_star, rel=1e-12)
    kernel = sgld.build_kernel(post, BATCH, row_loss_star=rows)
    for seed in range(3):
        _, info = kernel(jax.random.PRNGKey(seed), sgld.init(post.w_star), EPS)
        assert float(info.batch_loss_star) == pytest.approx(float(info.batch_loss), rel=1e-12)
        assert float(info.batch_loss) != pytest.approx(post.loss_star, rel=1e-6)


def test_float32_sgld_runs_in_float32_and_agrees(linear, tmp_path):
    problem, post, H = linear
    f64, f64_trace = _trial(problem, tmp_path)
    f32, f32_trace = _trial(problem, tmp_path, dtype="float32")
    assert f32["hyperparams"]["dtype"] == "float32" and f64["hyperparams"]["dtype"] == "float64"
    assert f32_trace["precond"].dtype == np.float32 and f64_trace["precond"].dtype == np.float64
    assert f32["run_id"] != f64["run_id"]
    assert f32["posterior"]["loss_star"] == pytest.approx(f64["posterior"]["loss_star"], rel=1e-6)
    assert abs(f32["llc_hat"] - f64["llc_hat"]) < 3 * np.hypot(f32["se_hat"], f64["se_hat"])


@pytest.mark.slow  # two VI compilations: ~15 s on an idle 2-core machine
def test_float32_vi_runs_and_agrees(linear_problem, tmp_path):
    out = {}
    for dtype in ("float64", "float32"):
        hp = {"steps": 300, "dtype": dtype}
        m = run_method_trial(linear_problem, "vi", hp, None, 0, artifacts=tmp_path)
        assert m["llc_hat"] is not None, m["failure"]
        out[dtype] = m
    a, b = out["float64"], out["float32"]
    assert abs(a["llc_hat"] - b["llc_hat"]) < 0.02 * a["llc_hat"], (a["llc_hat"], b["llc_hat"])


def test_default_block_lengths():
    """minibatch: one draw per epoch, >= 100 per chain; full: one L_n pass per epoch (the bench
    MLP: n = 20,000, B = 256, 2,000 steps: 20 and 79)."""
    assert block_length(None, 20000, 256, 2000, "minibatch") == 20
    assert block_length(None, 20000, 256, 2000, "full") == 79
    assert block_length(None, 20000, 256, 20000, "full") == 79
    assert block_length(None, 200, 32, 40000, "minibatch") == 7
    assert block_length(None, 200, 500, 4, "full") == 1  # full batch, capped by steps
    assert block_length(10, 200, 32, 40000, "full") == 10
