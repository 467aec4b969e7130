"""Classification (``data.loss: cross_entropy``): the softmax NLL, its problems and pids, and a
regular logistic regression's λ̂ from the HMC reference and from every method against theory.

Logistic regression 3 inputs → 2 classes (``model: linear``, no bias, d = 6) on n = 1000: one
logit shift per input leaves softmax unchanged, so λ = d(K−1)/(2K) = 1.5; at finite nβ the
Laplace value ½ Σ nβh/(nβh + γ) over the Hessian's eigenvalues is 1.469.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lambda_hat.llc.posterior import cross_entropy_rows, model_loss, row_nll
from lambda_hat.problem import theory
from lambda_hat.problem.build import build_problem, problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference.curvature import problem_curvature
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError
from lambda_hat.trial.runner import run_method_trial

LOGISTIC = {"model": "linear", "data": "classes", "seed": 0}
REFERENCE = ReferenceConfig(chains=4, draws=1500, warmup=300, chunk=500, gamma=1.0)


@pytest.fixture(scope="module")
def logistic(artifacts):
    """(problem, its posterior, the Hessian of L_n at w*, the gradient there)."""
    problem = build_problem(resolve_problem(LOGISTIC), artifacts)
    post = problem.posterior()
    H = np.asarray(jax.hessian(post.loss)(problem.w_star))
    g = np.asarray(jax.grad(post.loss)(problem.w_star))
    return problem, post, H, g


def test_cross_entropy_is_the_softmax_nll_of_integer_labels():
    logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    y = jnp.array([1, 0, 0])
    expected = [math.log(2.0), math.log(4 / 3), math.log(4.0)]
    np.testing.assert_allclose(cross_entropy_rows(logits, y), expected, rtol=1e-12)
    loss = model_loss(lambda w, X: X * w, "cross_entropy")
    assert float(loss(1.0, logits, y)) == pytest.approx(np.mean(expected), rel=1e-12)
    pred, target = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
    assert float(row_nll("gaussian", 0.5)(pred, target)[0]) == pytest.approx(10.0)


def test_the_loss_kind_enters_the_pid_only_when_not_gaussian():
    spec = resolve_problem({"model": "linear", "data": "small", "seed": 0})
    assert spec.data.loss == "gaussian" and problem_id(spec) == "p_ff2e65329cb6"  # golden
    other = dict(LOGISTIC, overrides={"data": {"loss": "gaussian", "output_dim": 2}})
    as_regression = problem_id(resolve_problem(other))
    assert problem_id(resolve_problem(LOGISTIC)) != as_regression


def test_cross_entropy_needs_two_classes():
    entry = dict(LOGISTIC, overrides={"data": {"output_dim": 1}})
    with pytest.raises(ConfigError, match=r"data.output_dim.*a logit per class"):
        resolve_problem(entry)


@pytest.mark.slow
def test_logistic_problem_labels_theory_and_curvature(logistic):
    problem, post, H, g = logistic
    assert problem.d == 6 and problem.y.shape == (1000,)
    assert jnp.issubdtype(problem.y.dtype, jnp.integer) and set(np.unique(problem.y)) == {0, 1}
    assert problem.info["theory"]["lambda"] == 1.5 == problem.d / 4
    assert problem.info["grad_norm_star"] < 1e-8  # convex: trained to the minimum
    assert np.sum(np.linalg.eigvalsh(H) > 1e-8) == 3  # d(K−1)/K directions are curved
    c = problem_curvature(problem, post.beta, post.gamma)
    assert c.a_max == pytest.approx(post.nbeta * np.linalg.eigvalsh(H).max() + 1.0, rel=1e-6)


@pytest.mark.slow
def test_hmc_reference_of_logistic_regression_matches_theory(logistic):
    problem, post, H, g = logistic
    ref = ensure_reference(problem, REFERENCE, force=True)
    laplace = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma, grad=g)
    assert ref["gate"]["passed"] and ref["llc_theory"] == 1.5
    assert abs(ref["llc_ref"] - laplace) < 3 * ref["se_ref"], (ref["llc_ref"], laplace)
    assert abs(ref["llc_ref"] - 1.5) < 3 * ref["se_ref"], ref["llc_ref"]
    assert ref["se_ref"] < 0.03 * laplace  # the check has teeth


@pytest.mark.slow
def test_sgld_vi_mclmc_on_logistic_regression(logistic, artifacts):
    """Full-batch SGLD at 5% of ε_max against its step's stationary value (ULA on the Laplace
    quadratic, 1.534); VI and MCLMC against the Laplace value 1.469."""
    problem, post, H, g = logistic
    eps = 0.05 * problem_curvature(problem, post.beta, post.gamma).eps_max_sgld
    hp = {"steps": 10000, "batch": problem.n, "eta0": eps}
    runs = {
        "sgld": (hp, theory.sgld_ula_llc(H, post.n, post.beta, post.gamma, eps)),
        "vi": ({"steps": 2000}, None),
        "mclmc": ({"steps": 2000}, None),
    }
    laplace = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma, grad=g)
    for method, (hp, expected) in runs.items():
        m = run_method_trial(problem, method, hp, None, 0, None, artifacts)
        assert m["status"] == "ok", m["failure"]
        expected = laplace if expected is None else expected
        assert abs(m["llc_hat"] - expected) < 3 * m["se_hat"], (method, m["llc_hat"], expected)


def test_regression_presets_keep_gaussian(linear_problem):
    assert linear_problem.spec.data.loss == "gaussian" and linear_problem.y.shape == (200, 1)
