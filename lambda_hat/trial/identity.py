"""Run identity: the manifest of a method run, its content address and its stored metrics.

A manifest is built from plain values — the pid, n, the method, the resolved
hyperparameters, the budget, the seed and the posterior settings — so the tuning driver and
the worker compute the same address without loading a problem's arrays:
``<artifacts>/runs/<pid>/<method>/r_<sha256(manifest)[:12]>`` (:func:`run_id`).

The posterior. Every method samples the reference's posterior: its β (1/log n when the
reference leaves it out) and its γ. ``gamma`` is a *posterior setting* every method takes (in
``--set``, ``optuna.search_space`` and ``optuna.enqueue``): None (the default) is the
reference's γ; a number is the γ of the posterior this run samples, and such a run is scored
against the reference of that posterior (plans/workflow.md, "Posterior settings").
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from lambda_hat import layout, methods
from lambda_hat._io import read_json
from lambda_hat.config.schema import ConfigError
from lambda_hat.hashing import content_hash
from lambda_hat.llc.posterior import default_beta

__all__ = [
    "POSTERIOR_HYPERPARAMS",
    "RUN_SCHEMA",
    "check_gamma",
    "load_metrics",
    "manifest",
    "posterior_settings",
    "resolve_hyperparams",
    "run_dir_for",
    "run_id",
]

RUN_SCHEMA = 1
#: Hyperparameters that set the sampled posterior rather than the method (any method takes them).
POSTERIOR_HYPERPARAMS = ("gamma",)
#: Manifest fields recorded for readers but derived from others, so not part of the run id.
_DERIVED = ("nbeta",)


def check_gamma(value: Any, where: str) -> float | None:
    """``value`` as a posterior γ: None (the reference's) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(
            where, f"got {value!r}.", "write a number >= 0, or null for the reference's γ."
        )
    if value < 0:
        raise ConfigError(where, f"got {value!r}, must be >= 0.", "use a γ >= 0.")
    return float(value)


def resolve_hyperparams(method: str, hp: dict | None, where: str = "hyperparams") -> dict:
    """The resolved hyperparameters of ``method`` (:func:`methods.validate_hyperparams`) and
    the posterior settings (``gamma``).

    A method whose schema declares ``gamma`` (SGLD) validates it itself; for the others it is
    taken off before the method's validation and added back only when set, so a default run's
    hyperparameters, and its id, are what they were before ``gamma`` was a posterior setting.
    Raises :class:`ConfigError` naming the field.
    """
    hp = dict(hp or {})
    declared = {f.name for f in dataclasses.fields(methods.get(method).hyper)}
    extra = {k: hp.pop(k) for k in POSTERIOR_HYPERPARAMS if k not in declared and k in hp}
    out = methods.validate_hyperparams(method, hp, where)
    gamma = check_gamma(extra.get("gamma"), f"{where}.gamma")
    if gamma is not None:
        out["gamma"] = gamma
    return out


def posterior_settings(n: int, hp: dict, ref: dict | None) -> dict:
    """n, β, γ and nβ of the sampled posterior: the reference's β (1/log n when it has none)
    and γ (1 when it has none), unless ``hp["gamma"]`` sets this run's γ."""
    ref = ref or {}
    beta = ref.get("beta")
    beta = float(beta) if beta is not None else default_beta(n)
    gamma = hp.get("gamma")
    if gamma is None:
        gamma = ref.get("gamma")
    gamma = float(gamma) if gamma is not None else 1.0
    return {"n": int(n), "beta": beta, "gamma": gamma, "nbeta": int(n) * beta}


def manifest(
    pid: str,
    n: int,
    method: str,
    hyperparams: dict,
    budget_sec: float | None,
    seed: int,
    ref: dict | None = None,
) -> dict:
    """Everything that determines a run (hyperparameters resolved; raises ConfigError)."""
    hp = resolve_hyperparams(method, hyperparams)
    out = {
        "schema": RUN_SCHEMA,
        "pid": pid,
        "method": method,
        "hyperparams": hp,
        "seed": int(seed),
        "budget_sec": None if budget_sec is None else float(budget_sec),
        "posterior": posterior_settings(n, hp, ref),
    }
    revision = methods.get(method).revision(hp)
    if revision is not None:  # the adapter changed for these settings: old runs are not reused
        out["revision"] = revision
    return out


def run_id(manifest: dict) -> str:
    """``r_<hash of the manifest>``, derived fields (nβ = n·β) left out of the hash."""
    posterior = {k: v for k, v in manifest["posterior"].items() if k not in _DERIVED}
    return content_hash({**manifest, "posterior": posterior}, "r_")


def run_dir_for(artifacts: str | Path, pid: str, method: str, manifest: dict) -> Path:
    """``<artifacts>/runs/<pid>/<method>/<run_id(manifest)>``."""
    return layout.run_dir(artifacts, pid, method, run_id(manifest))


def load_metrics(run_dir: str | Path) -> dict | None:
    """A finished run's metrics (None when missing, corrupt, or not a finished record)."""
    m = read_json(Path(run_dir) / layout.METRICS)
    if m is None or m.get("status") not in ("ok", "failed"):
        return None
    return m
