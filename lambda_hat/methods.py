"""The cheap LLC methods (SGLD, VI, MCLMC): their hyperparameters, defaults and search spaces.

One typed schema per method, checked with :func:`lambda_hat.schema.validate` (unknown names are
rejected with the list of valid ones, numbers are range-checked and coerced). The tuning
workflow asks :func:`search_space` what to sample and :func:`validate_hyperparams` for the fully
resolved dict that is hashed into a run id; the runner reads exactly the fields below, so a
hyperparameter that does nothing cannot exist unnoticed (``tests/test_runner.py`` checks that
every searched one changes the run).

Search spaces follow ``docs/prior-art.md``:

=======  ===================================================================================
SGLD     eta0 log 1e-6..1e-1; gamma 0.3..1.0; batch {32,64,128,256};
         precond_type {none,rmsprop,adam}; steps 5k..20k
VI       lr log 1e-5..5e-2; M {4,8,16}; r {1,2,4}; whitening_mode {none,rmsprop,adam};
         steps 2k..20k; batch_size {32,64,128,256}
MCLMC    step_size log 1e-4..1e-1; target_accept 0.6..0.95; L 0.5..3.0; steps 200..2000
=======  ===================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lambda_hat.schema import ConfigError, config_dataclass, validate
from lambda_hat.schema import field as _f

METHODS: tuple[str, ...] = ("sgld", "vi", "mclmc")

Precond = Literal["none", "rmsprop", "adam"]


@config_dataclass
class SGLDHyper:
    """Stochastic-gradient Langevin dynamics (literature convention, see science.md):

    Δw = −(ε/2)·P·[nβ ∇L_B(w) + γ(w − w*)] + √(εP)·ξ,  ε = ``eta0``, P the preconditioner.
    """

    eta0: float = _f(1e-5, "step size ε (constant)", gt=0)
    gamma: float = _f(1.0, "SGLD's own localization strength γ (sampled posterior)", ge=0)
    batch: int = _f(128, "minibatch size (rows drawn with replacement; >= n: full batch)", ge=1)
    precond_type: Precond = _f("none", "diagonal preconditioner from loss-gradient moments")
    steps: int = _f(10000, "SGLD steps per chain, burn-in included", ge=2)
    burnin_frac: float = _f(0.2, "fraction of the steps discarded as burn-in", ge=0, lt=1)
    chains: int = _f(4, "independent chains, vmapped", ge=1)
    eval_every: int | None = _f(
        None, "steps between full-data L_n draws (thinning); None: one per epoch (n/batch)", ge=1
    )
    precond_decay: float = _f(0.99, "EMA decay of the squared-gradient moment", gt=0, lt=1)
    adam_beta1: float = _f(0.9, "EMA decay of the gradient moment (adam only)", ge=0, lt=1)
    precond_eps: float = _f(1e-8, "added to sqrt(v) in the preconditioner", gt=0)


@config_dataclass
class VIHyper:
    """Mixture of factor analyzers q(w) = Σ π_m N(μ_m, D_m + U_m U_mᵀ), ELBO maximized."""

    lr: float = _f(1e-2, "Adam learning rate (cosine-decayed to 1% over the steps)", gt=0)
    M: int = _f(4, "mixture components", ge=1)
    r: int = _f(2, "rank of each component's factor loading U_m (0: diagonal)", ge=0)
    whitening_mode: Precond = _f(
        "adam", "diagonal whitening of the coordinates from loss-gradient moments at w*"
    )
    steps: int = _f(5000, "optimizer steps", ge=1)
    batch_size: int = _f(128, "minibatch for the ELBO gradient (>= n: full batch)", ge=1)
    chains: int = _f(4, "independent fits, vmapped (their spread gives R-hat)", ge=1)
    mc_samples: int = _f(1, "reparameterized draws per component per step", ge=1)
    eval_samples: int = _f(256, "draws from q per fit for E_q[L_n] (full-data passes)", ge=2)
    whiten_steps: int = _f(200, "minibatch gradients at w* used to estimate the whitening", ge=1)
    whiten_decay: float = _f(0.99, "EMA decay of the whitening moments", gt=0, lt=1)
    init_spread: float = _f(0.5, "spread of the initial component means (whitened units)", ge=0)


@config_dataclass
class MCLMCHyper:
    """Microcanonical Langevin Monte Carlo (BlackJAX ``mclmc``, isokinetic McLachlan).

    With ``tune`` (default) BlackJAX's ``mclmc_find_L_and_step_size`` adapts the step size,
    L and a diagonal mass matrix per chain: ``step_size`` is then its starting step size,
    ``target_accept`` sets its energy-error target and ``L`` multiplies the tuned L. With
    ``tune: false`` ``step_size`` and ``L`` are used as given and ``target_accept`` is unused.
    """

    step_size: float | None = _f(None, "step size (tuner's start; None: sqrt(d)/4)", gt=0)
    target_accept: float = _f(
        0.9, "Metropolis acceptance one step's energy error would have (tuner target)", gt=0, lt=1
    )
    L: float = _f(1.0, "momentum decoherence length (tuned: a multiplier of the tuned L)", gt=0)
    steps: int = _f(1000, "sampling steps per chain after tuning, burn-in included", ge=2)
    tune: bool = _f(True, "run BlackJAX's tuner first (its steps count as work)")
    tune_frac: float = _f(0.3, "tuning steps as a fraction of steps (split in 3 phases)", gt=0)
    burnin_frac: float = _f(0.1, "fraction of the sampling steps discarded", ge=0, lt=1)
    chains: int = _f(4, "independent chains, vmapped (each tuned on its own)", ge=1)


SCHEMAS: dict[str, type] = {"sgld": SGLDHyper, "vi": VIHyper, "mclmc": MCLMCHyper}


def _check_method(method: str) -> None:
    if method not in SCHEMAS:
        raise ConfigError(
            "method", f"got {method!r}; known methods: {', '.join(METHODS)}.", "use one of them."
        )


def default_hyperparams(method: str) -> dict:
    """Every hyperparameter of ``method`` at its default."""
    _check_method(method)
    return dataclasses.asdict(validate({}, SCHEMAS[method], method))


def validate_hyperparams(method: str, hp: dict | None, where: str = "hyperparams") -> dict:
    """The full resolved hyperparameter dict (defaults filled, types coerced, ranges checked).

    Raises :class:`ConfigError` naming the field for unknown names (listing the valid ones),
    wrong types and out-of-range values, before any work.
    """
    _check_method(method)
    resolved = validate(dict(hp or {}), SCHEMAS[method], where)
    if method == "mclmc" and not resolved.tune and resolved.step_size is None:
        raise ConfigError(
            f"{where}.step_size", "is required when tune is false.", "set step_size or tune: true."
        )
    return dataclasses.asdict(resolved)


def search_space(method: str) -> dict[str, BaseDistribution]:
    """The Optuna search space of ``method`` (docs/prior-art.md)."""
    _check_method(method)
    if method == "sgld":
        return {
            "eta0": FloatDistribution(1e-6, 1e-1, log=True),
            "gamma": FloatDistribution(0.3, 1.0),
            "batch": CategoricalDistribution([32, 64, 128, 256]),
            "precond_type": CategoricalDistribution(["none", "rmsprop", "adam"]),
            "steps": IntDistribution(5000, 20000),
        }
    if method == "vi":
        return {
            "lr": FloatDistribution(1e-5, 5e-2, log=True),
            "M": CategoricalDistribution([4, 8, 16]),
            "r": CategoricalDistribution([1, 2, 4]),
            "whitening_mode": CategoricalDistribution(["none", "rmsprop", "adam"]),
            "steps": IntDistribution(2000, 20000),
            "batch_size": CategoricalDistribution([32, 64, 128, 256]),
        }
    return {
        "step_size": FloatDistribution(1e-4, 1e-1, log=True),
        "target_accept": FloatDistribution(0.6, 0.95),
        "L": FloatDistribution(0.5, 3.0),
        "steps": IntDistribution(200, 2000),
    }
