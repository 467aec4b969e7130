"""The notebook call ``lambda_hat.estimate``: the same estimate as a trial with the same
settings and seed, any pytree of parameters, step sizes in units of ε_max, λ̂ of regular
models against d/2, bad input named before any work, and the caller's x64 setting kept."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lambda_hat
from lambda_hat.config import ClassRecommendation, write_class_recommendation
from lambda_hat.problem import theory
from lambda_hat.schema import ConfigError
from lambda_hat.trial.runner import run_method_trial

SGLD = {"steps": 200, "batch": 32, "eta0": 1e-4}


def _nll(params, X, y):
    """The linear problem's per-example Gaussian NLL (σ = 0.1) on a dict of parameters."""
    return 0.5 * jnp.sum((y - X @ params["W"]) ** 2, axis=-1) / 0.1**2


def _data(problem):
    return np.asarray(problem.X), np.asarray(problem.y)


def test_estimate_equals_the_trial_with_the_same_settings_and_seed(linear_problem, tmp_path):
    trial = run_method_trial(linear_problem, "sgld", SGLD, None, 3, None, tmp_path)
    with np.load(Path(trial["run_dir"]) / "trace.npz") as z:
        trace = {k: z[k] for k in z.files}
    w = np.asarray(linear_problem.w_star)
    by_predict = lambda_hat.estimate(
        w,
        linear_problem.model.apply,
        _data(linear_problem),
        "sgld",
        SGLD,
        seed=3,
        loss="gaussian",
        noise=0.1,
    )
    by_rows = lambda_hat.estimate(
        {"W": w.reshape(3, 1)}, _nll, _data(linear_problem), "sgld", SGLD, seed=3
    )
    for res in (by_predict, by_rows):
        assert res.status == "ok" and res.failure is None
        assert res.llc_hat == pytest.approx(trial["llc_hat"], rel=1e-12, abs=1e-12)
        assert res.se_hat == pytest.approx(trial["se_hat"], rel=1e-9)
        assert res.diagnostics["rhat"] == pytest.approx(trial["diagnostics"]["rhat"], rel=1e-3)
        np.testing.assert_allclose(res.loss, trace["loss"], rtol=1e-12)
        assert res.trace.keys() == trace.keys()
        assert res.metrics["posterior"]["nbeta"] == pytest.approx(trial["posterior"]["nbeta"])
    # The same program bit for bit (the per-example loss agrees to rounding only, which can
    # reorder the ranks of rank-normalized R-hat).
    assert by_predict.llc_hat == trial["llc_hat"]
    assert by_predict.diagnostics == trial["diagnostics"]


@pytest.mark.slow
def test_regular_models_read_d_over_2(linear_problem):
    """Linear regression (d = 3: λ = 1.5; at this nβ the Laplace value is 1.4996) with the step
    in ε_max units; logistic regression (3 inputs, 2 classes: λ = d(K−1)/(2K) = 1.5) through
    ``loss="cross_entropy"`` against its finite-nβ Laplace value (one curvature is small here:
    nβh ≈ 7, so 1.411, not 1.5)."""
    hp = {"steps": 3000, "batch": 64, "eta0": {"value": 0.02, "scale": "stability"}}
    W = np.asarray(linear_problem.w_star).reshape(3, 1)
    res = lambda_hat.estimate({"W": W}, _nll, _data(linear_problem), "sgld", hp, seed=1)
    limit = res.metrics["step_limit"]
    assert limit["converged"] and res.metrics["hyperparams"]["eta0"] == 0.02 * limit["eps_max"]
    assert abs(res.llc_hat - 1.5) < 3 * res.se_hat, (res.llc_hat, res.se_hat)
    X, y, W, laplace = _logistic()
    assert laplace == pytest.approx(1.4106, abs=1e-4)
    res = lambda_hat.estimate(
        W, lambda W, X: X @ W, (X, y), "mclmc", {"steps": 2000}, loss="cross_entropy"
    )
    assert res.status == "ok" and abs(res.llc_hat - laplace) < 3 * res.se_hat, res


def _logistic(n: int = 1000):
    """Data of a 3-input, 2-class softmax teacher, its maximum-likelihood weights and the
    Laplace value ½ Σ nβh/(nβh + γ) at β = 1/log n, γ = 1."""
    with jax.enable_x64(True):
        kx, kw, ky = jax.random.split(jax.random.PRNGKey(0), 3)
        X = jax.random.normal(kx, (n, 3))
        y = jax.random.categorical(ky, X @ jax.random.normal(kw, (3, 2)), axis=-1)

        def loss(w):
            logits = X @ w.reshape(3, 2)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        w = jnp.zeros(6)
        for _ in range(30):  # Newton on the curved directions (pinv: the flat one stays put)
            w = w - jnp.linalg.pinv(jax.hessian(loss)(w)) @ jax.grad(loss)(w)
        H = np.asarray(jax.hessian(loss)(w))
        laplace = theory.linear_gaussian_llc(H, n, 1 / math.log(n), 1.0)
        return np.asarray(X), np.asarray(y), np.asarray(w).reshape(3, 2), laplace


def test_a_class_recommendation_converts_with_eps_max_at_the_parameters(linear_problem, tmp_path):
    """A hand-written class recommendation (validated: eta0 3% of ε_max, 200 steps): estimate
    runs it with ε = 0.03 · ε_max at the given parameters; a missing file and a recommendation
    without a validated setting are ConfigErrors saying what to run."""
    units = {"eta0": 0.05, "steps": 300, "batch": 32}
    validated = {"trial": 4, "units": {**units, "eta0": 0.03, "steps": 200}}
    write_class_recommendation(
        tmp_path,
        ClassRecommendation(
            class_="lin",
            method="sgld",
            pick="validated",
            units=units,
            scaled=["eta0"],
            validated=validated,
        ),
    )
    hp = lambda_hat.recommended(tmp_path, class_="lin", method="sgld", pick="validated")
    assert hp == {"eta0": {"value": 0.03, "scale": "stability"}, "steps": 200, "batch": 32}
    W = np.asarray(linear_problem.w_star).reshape(3, 1)
    res = lambda_hat.estimate({"W": W}, _nll, _data(linear_problem), "sgld", hp)
    limit, used = res.metrics["step_limit"], res.metrics["hyperparams"]
    assert res.status == "ok" and used["steps"] == 200 and used["batch"] == 32
    assert used["eta0"] == pytest.approx(0.03 * limit["eps_max"], rel=1e-12)
    assert lambda_hat.recommended(tmp_path, "lin", pick="best")["eta0"]["value"] == 0.05
    with pytest.raises(ConfigError) as info:
        lambda_hat.recommended(tmp_path / "elsewhere", class_="lin")
    assert info.value.where == "recommended.class" and "class study" in info.value.fix
    with pytest.raises(ConfigError) as info:
        lambda_hat.recommended(tmp_path)
    assert info.value.where == "recommended"


def test_a_problem_study_gives_its_validated_absolute_values():
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(study_name="p_sgld")
    with pytest.raises(ConfigError) as info:
        lambda_hat.recommended(study=study)
    assert info.value.where == "recommended.study"
    study.set_user_attr("validation", {"hyperparams": {"eta0": 2e-4, "steps": 500}})
    assert lambda_hat.recommended(study=study) == {"eta0": 2e-4, "steps": 500}


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"loss_fn": lambda p, X, y: jnp.mean((y - X @ p["W"]) ** 2)}, "loss_fn"),
        ({"data": (np.zeros((5, 3)), np.zeros((4, 1)))}, "data"),
        ({"loss": "hinge"}, "loss"),
        ({"loss_fn": lambda p, X: X @ p["W"][:2], "loss": "gaussian"}, "loss_fn"),
        ({"hyperparams": {"eta0": {"value": 0.1, "scale": "curvature"}}}, "hyperparams.eta0"),
        ({"hyperparams": {"batch": {"value": 0.1, "scale": "stability"}}}, "hyperparams.batch"),
        ({"hyperparams": {"stepz": 1}}, "hyperparams"),
        ({"method": "nuts"}, "method"),
    ],
)
def test_bad_input_is_named_before_any_work(kwargs, where):
    args = {
        "params": {"W": np.zeros((3, 1))},
        "loss_fn": _nll,
        "method": "sgld",
        "data": (np.zeros((5, 3)), np.zeros((5, 1))),
    }
    with pytest.raises(ConfigError) as info:
        lambda_hat.estimate(**{**args, **kwargs})
    assert info.value.where.startswith(where), info.value


@pytest.mark.slow
def test_estimate_leaves_x64_as_it_found_it():
    code = (
        "import jax, jax.numpy as jnp, numpy as np, lambda_hat\n"
        "X = np.random.default_rng(0).normal(size=(50, 2)); y = X @ np.ones((2, 1))\n"
        "nll = lambda p, X, y: 0.5 * jnp.sum((y - X @ p) ** 2, axis=-1)\n"
        "r = lambda_hat.estimate(np.ones((2, 1), np.float32), nll, (X, y), 'sgld',"
        " {'steps': 100, 'eta0': 1e-3})\n"
        "print(jax.config.jax_enable_x64, r.loss.dtype, r.status)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["False", "float64", "ok"]
