"""Stored HMC references: where a reference lives, when a stored one is reused, its gate.

The config's reference (``reference.gamma``) lives in the problem's folder (``ref.json``,
``ref_trace.npz``), where ``lambda-hat reference`` and ``lambda-hat plots`` find it. A
reference of the same problem at another γ (a γ choice of a search space, plans/workflow.md)
lives in its own folder, ``refs/g_<hash of its settings>/``, with the same file names
(:func:`reference_home`); names from :mod:`lambda_hat.layout`.

A stored ``ref.json`` is trusted only when it is intact, of this schema and pid, and made with
the same :func:`reference_settings`; a corrupt, partial or mismatched one is ignored (logged),
never trusted. The quality gate (:func:`evaluate_gate`) is re-evaluated on every read, so
changed thresholds apply to stored references. Computing one is :mod:`lambda_hat.reference.nuts`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.hashing import content_hash
from lambda_hat.problem.build import Problem
from lambda_hat.reference.settings import ReferenceConfig

__all__ = [
    "REF_SCHEMA",
    "evaluate_gate",
    "load_reference",
    "load_reference_at",
    "ref_path",
    "reference_dir",
    "reference_home",
    "reference_settings",
    "stored_reference",
]

log = logging.getLogger("lambda_hat.reference.store")


REF_SCHEMA = 1
# Settings that change what a reference estimates or how precisely; the chunking, gate
# thresholds and worker count do not invalidate a stored reference, and the budget only does
# when it stopped the reference early (:func:`lambda_hat.reference.nuts.ensure_reference`).
_KEY_FIELDS = ("chains", "draws", "warmup", "target_accept", "max_tree_depth", "beta", "gamma")
_KEY_FIELDS += ("seed",)
_REQUIRED = ("llc_ref", "se_ref", "draws_per_chain", "gate", "settings", "beta", "gamma", "n")


def reference_settings(cfg: ReferenceConfig) -> dict:
    """The part of the reference config that a stored ref.json must match."""
    return {k: getattr(cfg, k) for k in _KEY_FIELDS}


def ref_path(problem: Problem) -> Path:
    """The ``ref.json`` of ``problem`` (seen from its reference's home)."""
    return problem.path / layout.REF


def reference_home(problem: Problem, cfg: ReferenceConfig, primary: bool = True) -> Problem:
    """``problem`` seen from the folder its reference at ``cfg`` lives in: its own folder for
    the config's reference (``primary``), ``refs/g_<hash of reference_settings(cfg)>/`` for a
    reference at another γ, so every posterior has its own content-addressed ref.json (and
    trace) and computing one never overwrites another."""
    if primary:
        return problem
    return dataclasses.replace(problem, path=_other_gamma_dir(problem.path, cfg))


def reference_dir(artifacts: str | Path, pid: str, cfg: ReferenceConfig, gamma: float) -> Path:
    """The folder of ``pid``'s reference at ``gamma`` (the other settings ``cfg``'s), without
    loading the problem: where a driver finds a running reference's progress record."""
    path = layout.problem_dir(artifacts, pid)
    if float(gamma) == cfg.gamma:
        return path
    return _other_gamma_dir(path, dataclasses.replace(cfg, gamma=float(gamma)))


def _other_gamma_dir(problem_path: Path, cfg: ReferenceConfig) -> Path:
    return problem_path / layout.REFS / content_hash(reference_settings(cfg), layout.REFS_PREFIX)


def evaluate_gate(ref: dict, cfg: ReferenceConfig) -> dict:
    """Quality gate: some draws, rank-normalized R-hat <= rhat_max, bulk ESS >= ess_min and
    divergent draws <= max_divergence_frac of the draws."""
    reasons = []
    draws = ref.get("chains", 0) * ref.get("draws_per_chain", 0)
    if not draws:
        at = f"warm-up step {ref.get('warmup_done', 0)} of {ref.get('warmup', 0)}"
        reasons.append(f"no draws: the budget stopped it ({ref.get('stopped_in')}, {at})")
    rhat, ess = ref.get("rhat"), ref.get("ess_bulk")
    if draws and (rhat is None or not rhat <= cfg.rhat_max):
        reasons.append(f"R-hat {rhat if rhat is None else f'{rhat:.4f}'} > {cfg.rhat_max}")
    if draws and (ess is None or not ess >= cfg.ess_min):
        reasons.append(f"bulk ESS {ess if ess is None else f'{ess:.0f}'} < {cfg.ess_min:g}")
    div = ref.get("divergences", 0)
    if draws and div > cfg.max_divergence_frac * draws:
        reasons.append(
            f"divergences {div}/{draws} = {div / draws:.2%} > {cfg.max_divergence_frac:.2%}"
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "rhat_max": cfg.rhat_max,
        "ess_min": cfg.ess_min,
        "max_divergence_frac": cfg.max_divergence_frac,
    }


def stored_reference(problem: Problem, cfg: ReferenceConfig) -> dict | None:
    """The stored ref.json if it is intact and was made with the same settings, else None
    (it may hold no draws: a reference stopped during warm-up)."""
    path = ref_path(problem)
    if not path.exists():
        return None
    ref = read_json(path)
    problems = []
    if ref is None:
        problems.append("unreadable or not JSON")
    else:
        if ref.get("schema") != REF_SCHEMA:
            problems.append(f"schema {ref.get('schema')} != {REF_SCHEMA}")
        if ref.get("pid") != problem.pid:
            problems.append(f"pid {ref.get('pid')} != {problem.pid}")
        missing = [k for k in _REQUIRED if k not in ref]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        elif ref["settings"] != reference_settings(cfg):
            log.info("reference %s: settings changed, recomputing", problem.pid)
            return None
        elif ref["draws_per_chain"] > 0 and finite_float(ref["llc_ref"]) is None:
            problems.append("draws but no finite estimate")
    if problems:
        log.warning(
            "reference %s: ignoring %s (%s); recomputing", problem.pid, path, "; ".join(problems)
        )
        return None
    ref["gate"] = evaluate_gate(ref, cfg)  # thresholds may have changed since it was stored
    return ref


def load_reference(problem: Problem, cfg: ReferenceConfig) -> dict | None:
    """The stored reference if it is complete, has draws and was made with the same settings."""
    ref = stored_reference(problem, cfg)
    return ref if ref is not None and ref["draws_per_chain"] > 0 else None


def load_reference_at(
    problem: Problem, cfg: ReferenceConfig, gamma: float | None = None
) -> dict | None:
    """The stored reference of the posterior at ``gamma`` (None: the config's), or None."""
    if gamma is None or float(gamma) == cfg.gamma:
        return load_reference(problem, cfg)
    cfg = dataclasses.replace(cfg, gamma=float(gamma))
    return load_reference(reference_home(problem, cfg, primary=False), cfg)
