"""Each method's record: the documented search spaces, hyperparameter validation that names the
field and the fix, and step-size ranges relative to the stability limit (issue 13).
"""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat import methods
from lambda_hat.methods import step_limit
from lambda_hat.methods.stability import StabilityRange
from lambda_hat.schema import ConfigError


def test_search_spaces_are_the_documented_ones():
    sgld = methods.search_space("sgld")
    assert sgld["eta0"] == StabilityRange(1e-3, 1.0, True, FloatDistribution(1e-6, 1e-1, log=True))
    assert "gamma" not in sgld  # the reference's γ unless choices are listed (issue 9)
    assert sgld["batch"] == CategoricalDistribution([32, 64, 128, 256])
    assert sgld["precond_type"] == CategoricalDistribution(["none", "rmsprop", "adam"])
    assert sgld["steps"] == IntDistribution(5000, 20000)
    vi = methods.search_space("vi")
    assert vi["lr"] == FloatDistribution(1e-5, 5e-2, log=True)
    assert vi["M"] == CategoricalDistribution([4, 8, 16])
    assert vi["r"] == CategoricalDistribution([1, 2, 4])
    assert vi["whitening_mode"] == CategoricalDistribution(["none", "rmsprop", "adam", "lanczos"])
    assert vi["steps"] == IntDistribution(2000, 20000)
    assert vi["batch_size"] == CategoricalDistribution([32, 64, 128, 256])
    mc = methods.search_space("mclmc")  # tuned (the default): the tuner sets the step size
    assert set(mc) == {"target_accept", "L", "steps"}
    assert mc["target_accept"] == FloatDistribution(0.75, 0.97)
    assert mc["L"] == FloatDistribution(0.5, 3.0)
    assert mc["steps"] == IntDistribution(200, 2000)
    untuned = methods.search_space("mclmc", {"tune": False})
    assert untuned["step_size"] == StabilityRange(
        0.02, 0.5, True, FloatDistribution(1e-4, 1e-1, log=True)
    )
    assert untuned["L"] == FloatDistribution(0.3, 10.0, log=True)
    assert set(untuned) == {"step_size", "L", "steps"}
    for method in methods.METHODS:  # every searched name is a field with a default
        assert set(methods.search_space(method)) <= set(methods.default_hyperparams(method))
        assert methods.default_hyperparams(method)["chains"] == 4 or method == "vi"


def test_validation_names_the_field_and_the_fix():
    hp = methods.validate_hyperparams("sgld", {"eta0": "1e-4", "steps": 2000.0})
    assert hp["eta0"] == 1e-4 and hp["steps"] == 2000 and isinstance(hp["steps"], int)
    with pytest.raises(ConfigError, match=r"hyperparams\.eta: unknown key.*'eta0'.*Valid keys"):
        methods.validate_hyperparams("sgld", {"eta": 1e-4})
    with pytest.raises(ConfigError, match=r"precond_type.*'rmsprop'"):
        methods.validate_hyperparams("sgld", {"precond_type": "rmsprp"})
    with pytest.raises(ConfigError, match=r"vi\.M: got 0, must be >= 1"):
        methods.validate_hyperparams("vi", {"M": 0}, where="vi")
    with pytest.raises(ConfigError, match="step_size: is required when tune is false"):
        methods.validate_hyperparams("mclmc", {"tune": False})
    with pytest.raises(ConfigError, match="known methods"):
        methods.default_hyperparams("nuts")


A_MAX, D = 1_385_088.35, 9_871  # mlp10k/large (plans/curvature.md)


def test_default_step_ranges_are_relative_to_the_limit():
    sgld = methods.search_space("sgld")["eta0"]
    mclmc = methods.search_space("mclmc", {"tune": False})["step_size"]  # untuned MCLMC's
    assert "step_size" not in methods.search_space("mclmc")  # tuned: the tuner's output
    assert (sgld.low, sgld.high, sgld.log) == (1e-3, 1.0, True)
    assert sgld.fallback == FloatDistribution(1e-6, 1e-1, log=True)  # the old absolute default
    assert (mclmc.low, mclmc.high, mclmc.log) == (0.02, 0.5, True)
    assert mclmc.fallback == FloatDistribution(1e-4, 1e-1, log=True)


def test_step_limits_sgld_and_mclmc():
    assert step_limit("sgld", A_MAX, D) == pytest.approx(2.8879e-6, rel=1e-4)
    # 2.553 * sqrt(9870 / 1.385088e6) = 2.553 * 0.084415 = 0.21551
    assert step_limit("mclmc", A_MAX, D) == pytest.approx(0.21551, rel=1e-4)
    with pytest.raises(ValueError):
        step_limit("vi", A_MAX, D)
    with pytest.raises(ValueError):
        step_limit("sgld", -1.0, D)
