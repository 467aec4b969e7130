"""Run identity: every method's manifest records the posterior it samples, the reference's β and
γ unless γ is set (issue 9).
"""

from __future__ import annotations

import math

import optuna
import pytest

from lambda_hat import methods
from lambda_hat.schema import ConfigError
from lambda_hat.trial import identity as runs

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------ defaults: the reference's


def test_gamma_is_not_searched_by_default_and_every_method_takes_the_references():
    ref = {"beta": 0.25, "gamma": 7.0}
    for method in methods.METHODS:
        assert "gamma" not in methods.search_space(method)
        post = runs.manifest("p_x", 200, method, {}, None, 0, ref)["posterior"]
        assert post == {"n": 200, "beta": 0.25, "gamma": 7.0, "nbeta": 50.0}
    assert methods.default_hyperparams("sgld")["gamma"] is None
    # without a reference: β = 1/log n, γ = 1 (the ReferenceConfig defaults)
    post = runs.manifest("p_x", 200, "sgld", {}, None, 0)["posterior"]
    assert post["beta"] == pytest.approx(1 / math.log(200)) and post["gamma"] == 1.0


def test_gamma_is_a_posterior_setting_of_every_method():
    for method in methods.METHODS:
        hp = runs.resolve_hyperparams(method, {"gamma": 3})
        assert hp["gamma"] == 3.0 and isinstance(hp["gamma"], float)
        man = runs.manifest("p_x", 200, method, {"gamma": 3}, None, 0, {"gamma": 1.0})
        assert man["posterior"]["gamma"] == 3.0
    assert "gamma" not in runs.resolve_hyperparams("vi", {"gamma": None})  # None: unchanged id
    with pytest.raises(ConfigError, match=r"--set\.gamma: got -1, must be >= 0"):
        runs.resolve_hyperparams("vi", {"gamma": -1}, "--set")
    with pytest.raises(ConfigError, match=r"hyperparams\.gamma: got 'big'"):
        runs.resolve_hyperparams("mclmc", {"gamma": "big"})
