"""Run identity: the manifest of a method run, its content address and its stored metrics.

A manifest is built from plain values — the pid, n, the method, the resolved
hyperparameters, the budget, the seed and the posterior settings — so the tuning driver and
the worker compute the same address without loading a problem's arrays:
``<artifacts>/runs/<pid>/<method>/r_<sha256(manifest)[:12]>``.
"""

from __future__ import annotations

from pathlib import Path

from lambda_hat import methods
from lambda_hat._io import read_json
from lambda_hat.hashing import content_hash
from lambda_hat.posterior import default_beta

__all__ = ["RUN_SCHEMA", "load_metrics", "manifest", "posterior_settings", "run_dir_for"]

RUN_SCHEMA = 1


def posterior_settings(n: int, method: str, hp: dict, ref: dict | None) -> dict:
    """n, β and γ of the sampled posterior: the reference's (defaults 1/log n and 1), except
    SGLD's γ, which is its own ``gamma`` hyperparameter (plans/methods.md)."""
    ref = ref or {}
    beta = ref.get("beta")
    beta = float(beta) if beta is not None else default_beta(n)
    gamma = hp["gamma"] if method == "sgld" else ref.get("gamma")
    gamma = float(gamma) if gamma is not None else 1.0
    return {"n": int(n), "beta": beta, "gamma": gamma}


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
    hp = methods.validate_hyperparams(method, hyperparams)
    out = {
        "schema": RUN_SCHEMA,
        "pid": pid,
        "method": method,
        "hyperparams": hp,
        "seed": int(seed),
        "budget_sec": None if budget_sec is None else float(budget_sec),
        "posterior": posterior_settings(n, method, hp, ref),
    }
    revision = methods.get(method).revision(hp)
    if revision is not None:  # the adapter changed for these settings: old runs are not reused
        out["revision"] = revision
    return out


def run_dir_for(artifacts: str | Path, pid: str, method: str, manifest: dict) -> Path:
    """``<artifacts>/runs/<pid>/<method>/r_<hash of manifest>``."""
    return Path(artifacts) / "runs" / pid / method / content_hash(manifest, "r_")


def load_metrics(run_dir: str | Path) -> dict | None:
    """A finished run's metrics (None when missing, corrupt, or not a finished record)."""
    m = read_json(Path(run_dir) / "metrics.json")
    if m is None or m.get("status") not in ("ok", "failed"):
        return None
    return m
