"""Run identity: the one owner of run addresses, and a run's stored metrics.

Two kinds of run share one layout, ``<artifacts>/runs/<pid>/<method>/r_<hash>``:

- a *method run* (the default trial target, :data:`DEFAULT_TRIAL_TARGET`): addressed by the
  runner's own manifest (:func:`manifest`, :func:`run_id`), built from plain values — the pid,
  n, the method, the resolved hyperparameters, the budget, the seed and the posterior settings
  — so the tuning driver and the worker compute the same address without loading a problem's
  arrays;
- a run of any other target (``--trial-target``): addressed by the payload's manifest
  (:func:`target_manifest`), which names the target.

:func:`locator` chooses between them.

The posterior. Every method samples the reference's posterior: its β (1/log n when the
reference leaves it out) and its γ. ``gamma`` is a *posterior setting* every method takes (in
``--set``, ``optuna.search_space`` and ``optuna.enqueue``): None (the default) is the
reference's γ; a number is the γ of the posterior this run samples, and such a run is scored
against the reference of that posterior (plans/workflow.md, "Posterior settings").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lambda_hat import layout, methods
from lambda_hat._io import read_json
from lambda_hat.hashing import content_hash
from lambda_hat.llc.posterior import default_beta
from lambda_hat.schema import ConfigError
from lambda_hat.trial.outcome import KINDS

__all__ = [
    "DEFAULT_TRIAL_TARGET",
    "POSTERIOR_HYPERPARAMS",
    "RUN_SCHEMA",
    "check_gamma",
    "load_metrics",
    "load_valid_metrics",
    "locator",
    "manifest",
    "posterior_settings",
    "resolve_hyperparams",
    "run_dir_for",
    "run_id",
    "target_location",
    "target_manifest",
    "trial_workdir",
]

#: What a trial runs unless told otherwise (``"module:function"``, called with the payload as
#: keyword arguments in the trial process): one method run, at its method-run address.
DEFAULT_TRIAL_TARGET = "lambda_hat.trial.app:method_target"
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


def target_manifest(payload: dict) -> dict:
    """What identifies a run of any target: problem, method, hyperparameters, budget, seed,
    target."""
    return {
        "pid": payload["pid"],
        "method": payload["method"],
        "hyperparams": payload["hyperparams"],
        "budget_sec": payload["budget_sec"],
        "seed": payload["seed"],
        "target": payload.get("target", DEFAULT_TRIAL_TARGET),
    }


def target_location(payload: dict) -> tuple[str, Path]:
    """``(run_id, run_dir)`` of a run of any target: ``r_<sha256(target_manifest)[:12]>``
    under ``<artifacts>/runs/<pid>/<method>/``."""
    rid = content_hash(target_manifest(payload), prefix="r_")
    return rid, layout.run_dir(payload["artifacts"], payload["pid"], payload["method"], rid)


def locator(
    target: str, artifacts: str | Path, pid: str, n: int, method: str
) -> Callable[[dict], tuple[str, Path]]:
    """``locate(payload) -> (run_id, run_dir)`` for the runs of ``method`` on problem ``pid``
    (``n`` data points): where the trial's runner will write. For the default target the
    method run's address (from plain values, no problem arrays, and the payload's reference:
    that of the trial's posterior); for any other the generic one (:func:`target_location`)."""
    if target != DEFAULT_TRIAL_TARGET:
        return target_location

    def locate(payload: dict) -> tuple[str, Path]:
        m = manifest(
            pid,
            n,
            method,
            payload["hyperparams"],
            payload["budget_sec"],
            payload["seed"],
            payload.get("ref"),
        )
        run_dir = run_dir_for(artifacts, pid, method, m)
        return run_dir.name, run_dir

    return locate


def trial_workdir(run_dir: str | Path) -> Path:
    """The isolation directory of a run: payload, result, ``progress.json``, ``stop.json``."""
    return layout.isolation_dir(run_dir)


def load_metrics(run_dir: str | Path) -> dict | None:
    """A finished run's metrics (None when missing, corrupt, or not a finished record)."""
    m = read_json(Path(run_dir) / layout.METRICS)
    if m is None or m.get("status") not in ("ok", "failed"):
        return None
    return m


def load_valid_metrics(run_dir: str | Path | None) -> dict | None:
    """The run's metrics when they are a reusable outcome: ok, or a failure whose kind is
    *reusable* (:data:`lambda_hat.trial.outcome.KINDS`: deterministic in the manifest); every
    other failure is run again when its manifest comes up again."""
    if not run_dir:
        return None
    metrics = read_json(Path(run_dir) / layout.METRICS)
    if metrics is None:
        return None
    if metrics.get("status") == "ok":
        return metrics
    kind = KINDS.get((metrics.get("failure") or {}).get("kind"))
    return metrics if metrics.get("status") == "failed" and kind and kind.reusable else None
