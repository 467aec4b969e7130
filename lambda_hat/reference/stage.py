"""Stage 1 of ``parsl-optuna``: the HMC reference of every (problem, posterior γ).

A reference already stored in the artifacts is read here, on the driver, before anything is
submitted (:func:`cached_reference`): the problem, its ``ref.json`` at the requested settings
and the curvature record that ``scale: stability`` ranges need. Only a missing (or stopped
early, or mismatched) reference goes through Parsl, so a resumed run starts tuning without
waiting for a block (on SLURM, 104 s for a job to start, measured, when every reference was
cached). What counts as reusable is :mod:`lambda_hat.reference.nuts`'s rule: a driver-side read
never computes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from lambda_hat._io import read_json
from lambda_hat.config.problem import ProblemSpec
from lambda_hat.config.schema import as_dict
from lambda_hat.config.sections import ReferenceConfig
from lambda_hat.parallel import apps as execution
from lambda_hat.problem.build import load_problem, problem_id
from lambda_hat.reference.curvature import curvature_record
from lambda_hat.reference.nuts import load_reference, reference_home
from lambda_hat.trial.outcome import failed_metrics, from_exception

log = logging.getLogger("lambda_hat.workflow")


class References(dict):
    """The reference stage's result: ``refs[pid]`` is the problem's reference at the config's
    settings (or a failed record, :func:`lambda_hat.trial.outcome.failed_metrics`), and
    ``refs.at(pid, γ)`` the reference of the posterior at γ (None: the config's)."""

    def __init__(self, by_gamma: dict[str, dict[float, dict]], gamma: float) -> None:
        super().__init__({pid: refs[gamma] for pid, refs in by_gamma.items()})
        self.by_gamma, self.gamma = by_gamma, gamma

    def at(self, pid: str, gamma: float | None) -> dict:
        """``{}`` for a γ this run has no reference of (a stored trial from an earlier search
        space): such a trial is not scored."""
        return self.by_gamma[pid].get(self.gamma if gamma is None else float(gamma), {})


def _curvature_stored(problem_path: Path, beta: float, gamma: float) -> bool:
    """Whether a curvature record at (β, γ) is stored with the problem (no file: computing it
    is the reference job's, on a worker)."""
    for path in (problem_path / "curvature").glob("c_*.json"):
        settings = (read_json(path) or {}).get("settings") or {}
        if math.isclose(settings.get("beta", -1.0), beta) and math.isclose(
            settings.get("gamma", -1.0), gamma
        ):
            return True
    return False


def cached_reference(
    spec: ProblemSpec, cfg: ReferenceConfig, artifacts: str | Path, gamma: float
) -> dict | None:
    """What the reference job would return for (``spec``, ``gamma``) when all of it is stored
    (the problem, a ``ref.json`` with draws at these settings that is not stopped early, its
    curvature record), else None: then the job runs on a worker. Reads, never computes."""
    try:
        problem = load_problem(artifacts, problem_id(spec))
    except (FileNotFoundError, OSError, ValueError):
        return None
    primary = float(gamma) == cfg.gamma
    cfg = cfg if primary else dataclasses.replace(cfg, gamma=float(gamma))
    ref = load_reference(reference_home(problem, cfg, primary), cfg)
    if ref is None or ref.get("stopped_early"):  # a larger budget may extend it: the job's call
        return None
    if not _curvature_stored(Path(problem.path), ref["beta"], ref["gamma"]):
        return None
    return {
        **ref,
        "summary": problem.summary(),
        "curvature": curvature_record(problem, ref["beta"], ref["gamma"]),
    }


def reference_stage(plan, submit: Callable[[dict], Future] | None = None) -> References:
    """Stage 1 for ``plan`` (a :class:`lambda_hat.study.plan.Plan`): one reference per
    (problem, γ of ``plan.gammas``), read on the driver when stored (:func:`cached_reference`),
    else one Parsl app each, all in parallel. ``submit(payload) -> Future`` defaults to the
    app :func:`execution.execute_reference`; it is called only for missing references."""
    ref_cfg = plan.cfg.reference
    gammas = plan.gammas
    by_gamma: dict[str, dict[float, dict]] = {}
    futures: dict[tuple[str, float], Future] = {}
    for spec in plan.exp.problems:
        pid = problem_id(spec)
        if pid in by_gamma:
            continue
        by_gamma[pid] = {}
        payload = {
            "spec": as_dict(spec),
            "reference": dataclasses.asdict(ref_cfg),
            "artifacts": str(plan.artifacts),
        }
        for g in gammas:
            cached = cached_reference(spec, ref_cfg, plan.artifacts, g)
            if cached is not None:
                by_gamma[pid][g] = cached
                continue
            submit = submit or execution.reference_submitter()
            futures[pid, g] = submit({**payload, "gamma": g})
    log.info(
        "references: %d problem(s) x %d γ (%s): %d cached, %d submitted",
        len(by_gamma),
        len(gammas),
        ", ".join(f"{g:g}" for g in gammas),
        len(by_gamma) * len(gammas) - len(futures),
        len(futures),
    )
    for (pid, g), fut in futures.items():
        try:
            by_gamma[pid][g] = fut.result()
        except Exception as exc:
            by_gamma[pid][g] = failed_metrics(**from_exception(exc))
    for pid in by_gamma:  # in γ order, whichever came from where
        by_gamma[pid] = {g: by_gamma[pid][g] for g in gammas}
    return References(by_gamma, gammas[0])


def is_reference(ref: dict) -> bool:
    """Whether a reference stage result is a reference (not a failed record)."""
    return ref.get("status") != "failed"


def usable_reason(
    ref: dict, allow_failed: bool, key: str = "optuna.allow_failed_reference"
) -> str | None:
    """Why runs cannot be scored against this reference, or None when they can; ``key`` is
    the config key that lets a failed gate through (named in the fix)."""
    if not is_reference(ref):
        return f"the reference could not be computed: {ref['failure']['message']}"
    gate = ref.get("gate") or {}
    if not gate.get("passed", False) and not allow_failed:
        reasons = "; ".join(gate.get("reasons") or ["no reason recorded"])
        return (
            f"the HMC reference failed its quality gate ({reasons}). Raise reference.draws "
            f"or reference.warmup, or set {key}: true to use it anyway."
        )
    return None


def unusable(refs: dict, pid: str, allow_failed: bool) -> str | None:
    """Why a problem cannot be tuned: the first of its references (one per γ) that is not
    usable, or None."""
    by_gamma = refs.by_gamma[pid] if isinstance(refs, References) else {None: refs[pid]}
    for gamma, ref in by_gamma.items():
        why = usable_reason(ref, allow_failed)
        if why:
            return why if len(by_gamma) == 1 else f"at γ = {gamma:g}, {why}"
    return None


def _num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def report(refs: References, pid: str) -> None:
    """Log each reference of ``pid``: λ̂_ref ± SE and its gate."""
    for gamma, ref in refs.by_gamma[pid].items():
        if is_reference(ref):
            log.info(
                "reference %s (γ = %g): llc_ref = %s ± %s, gate %s",
                pid,
                gamma,
                _num(ref.get("llc_ref"), ".4g"),
                _num(ref.get("se_ref"), ".2g"),
                "passed" if ref["gate"]["passed"] else "FAILED",
            )
