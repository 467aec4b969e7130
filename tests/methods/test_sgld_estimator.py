"""SGLD's two λ̂ estimators and its float32 mode, against known answers (plans/sgld-estimator.md).

Known answer: on the linear problem L_n is exactly quadratic and minibatch SGLD is a Gaussian
AR(1) chain; its stationary λ̂ solves a discrete Lyapunov equation with the minibatch-gradient
noise (:func:`helpers.sgld.minibatch_ula_llc`). Both estimators read the same chain (the step keys
do not depend on the estimator), so they must both land on that answer.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.sgld import minibatch_ula_llc

from lambda_hat.methods.sgld import block_length
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
