"""References where HMC cannot go: a problem's ``reference: theory | none``.

``theory`` scores runs against the theoretical λ the problem was built with
(``problem.json``'s ``theory``: Aoyagi's λ of a deep linear network, d/2 of a regular model)
with ``se_ref`` 0, so a run's z uses its own SE only; ``none`` leaves runs unscored
(``llc_ref`` None). Neither runs NUTS: the job builds the problem and its curvature record
(ε_max, which ``scale: stability`` values need); nothing else is stored, so a driver reads a
record back from the problem and its curvature file alone (:func:`stored_plain_reference`,
no JAX). Every record has the keys the scorers read (``kind``, ``llc_ref``, ``se_ref``,
``llc_theory``, ``beta``, ``gamma``, ``n``, ``d``, ``curvature``, ``summary``, ``gate``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lambda_hat.llc.posterior import default_beta
from lambda_hat.log import fmt_value
from lambda_hat.problem.build import Problem, load_problem, problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference.curvature import curvature_record, stored_curvature_record
from lambda_hat.reference.settings import ReferenceConfig

__all__ = ["announce", "plain_reference", "stored_plain_reference"]

log = logging.getLogger("lambda_hat.workflow")


def _beta(problem: Problem, cfg: ReferenceConfig) -> float:
    """The posterior's β, as :meth:`Problem.posterior` sets it (computes nothing)."""
    return default_beta(problem.n) if cfg.beta is None else float(cfg.beta)


def _record(problem: Problem, kind: str, beta: float, gamma: float, curvature: dict) -> dict:
    theory = problem.info.get("theory")
    lam = None if theory is None else float(theory["lambda"])
    if kind == "theory" and lam is None:
        raise ValueError(
            f"problem {problem.pid} ({problem.summary()}) has no theoretical λ: set its "
            "reference: hmc (an HMC reference) or reference: none (runs unscored)"
        )
    return {
        "kind": kind,
        "pid": problem.pid,
        "llc_ref": lam if kind == "theory" else None,
        "se_ref": 0.0 if kind == "theory" else None,
        "llc_theory": lam,
        "theory": theory,
        "beta": beta,
        "gamma": float(gamma),
        "nbeta": problem.n * beta,
        "n": problem.n,
        "d": problem.d,
        "gate": {"passed": True, "reasons": []},  # no HMC, no HMC gate
        "curvature": curvature,
        "summary": problem.summary(),
    }


def plain_reference(problem: Problem, cfg: ReferenceConfig, kind: str) -> dict:
    """The ``theory`` or ``none`` record of ``problem`` at ``cfg``'s posterior (the job's
    side: its curvature record is computed when not stored). ValueError for ``theory`` on a
    problem without a theoretical λ."""
    beta = _beta(problem, cfg)
    if kind == "theory" and problem.info.get("theory") is None:
        return _record(problem, kind, beta, cfg.gamma, {})  # raises, naming the fix
    return _record(problem, kind, beta, cfg.gamma, curvature_record(problem, beta, cfg.gamma))


def stored_plain_reference(
    spec: ProblemSpec, cfg: ReferenceConfig, artifacts: str | Path, kind: str
) -> dict | None:
    """:func:`plain_reference` read on the driver when the problem and its curvature record
    at (β, ``cfg.gamma``) are stored, else None (then the job runs on a worker)."""
    try:
        problem = load_problem(artifacts, problem_id(spec))
    except (FileNotFoundError, OSError, ValueError):
        return None
    beta = _beta(problem, cfg)
    curvature = stored_curvature_record(problem.path, beta, cfg.gamma)
    if curvature is None or (kind == "theory" and problem.info.get("theory") is None):
        return None
    return _record(problem, kind, beta, cfg.gamma, curvature)


def announce(pid: str, kind: str, ref: dict) -> None:
    """The one line per problem that says what its runs are scored against, plainly."""
    if kind == "none":
        log.warning(
            "problem %s: reference: none. It has no reference; its runs are reported unscored "
            "(no error, no z).",
            pid,
        )
    elif kind == "theory" and ref.get("status") != "failed":
        log.info(
            "problem %s: reference: theory. Runs are scored against λ = %s (%s), no HMC; z uses "
            "each run's own SE.",
            pid,
            fmt_value(ref.get("llc_theory"), ".4g"),
            (ref.get("theory") or {}).get("source", "theory"),
        )
