"""The reference stage: the HMC reference of every (problem, posterior γ), for every command.

``parsl-optuna`` (stage 1, :mod:`lambda_hat.study.pipeline`), ``lambda-hat run``
(:mod:`lambda_hat.runs.stage`) and ``lambda-hat reference`` all call :func:`reference_stage`
with plain values: the problems, the reference settings, the γ of each problem's posteriors,
the artifacts folder and a ``submit(payload) -> Future`` that computes one reference
elsewhere (a Parsl app, or :func:`process_submitter`'s local processes).

A reference already stored in the artifacts is read here, on the driver, before anything is
submitted (:func:`cached_reference`): the problem, its ``ref.json`` at the requested settings
and the curvature record that ``scale: stability`` ranges need. Only a missing (or stopped
early, or mismatched) reference is submitted, so a resumed run starts tuning without
waiting for a block (on SLURM, 104 s for a job to start, measured, when every reference was
cached). What counts as reusable is :mod:`lambda_hat.reference.store`'s rule: a driver-side
read never computes.

Whether runs may be scored against a reference is decided once, here (:func:`usable_reason`,
:func:`unusable`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.log import fmt_value
from lambda_hat.parallel import result_of
from lambda_hat.problem.build import build_problem, load_problem, problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference import checkpoint
from lambda_hat.reference.checkpoint import read_progress
from lambda_hat.reference.curvature import curvature_record
from lambda_hat.reference.kinds import announce, stored_plain_reference
from lambda_hat.reference.nuts import reference_job
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.reference.store import load_reference, reference_dir, reference_home
from lambda_hat.schema import as_dict
from lambda_hat.trial.outcome import failed_from

__all__ = [
    "ReferenceInterrupted",
    "References",
    "cached_reference",
    "is_reference",
    "process_submitter",
    "reference_stage",
    "report",
    "unusable",
    "usable_reason",
]

log = logging.getLogger("lambda_hat.workflow")

Submit = Callable[[dict], Future]


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
    for path in (problem_path / layout.CURVATURE).glob(layout.CURVATURE_GLOB):
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
        "kind": "hmc",
        "summary": problem.summary(),
        "curvature": curvature_record(problem, ref["beta"], ref["gamma"]),
    }


def _cached(
    spec: ProblemSpec, cfg: ReferenceConfig, artifacts: str | Path, gamma: float, kind: str
) -> dict | None:
    """The stored record of ``kind`` (:func:`cached_reference`, or for theory | none
    :func:`lambda_hat.reference.kinds.stored_plain_reference`), or None."""
    if kind == "hmc":
        return cached_reference(spec, cfg, artifacts, gamma)
    cfg = dataclasses.replace(cfg, gamma=float(gamma))
    return stored_plain_reference(spec, cfg, artifacts, kind)


def _store_sources(specs: Iterable[ProblemSpec], artifacts: str | Path) -> list[ProblemSpec]:
    """``specs`` as a list, each problem from a source stored on the driver (its source was
    called when the config was loaded): workers load it like a preset's problem."""
    specs = list(specs)
    for spec in specs:
        if spec.source is not None:
            build_problem(spec, artifacts)
    return specs


def reference_stage(
    specs: Iterable[ProblemSpec],
    cfg: ReferenceConfig,
    artifacts: str | Path,
    submit: Submit,
    gammas: Mapping[str, Sequence[float]] | None = None,
    force: bool = False,
    watch: bool = True,
    kinds: Mapping[str, str] | None = None,
) -> References:
    """One reference per (problem of ``specs``, γ of ``gammas[pid]``: ``cfg.gamma`` first; the
    default is ``cfg.gamma`` alone), read on the driver when stored (:func:`cached_reference`),
    else ``submit(payload)`` each, all in flight at once; ``force`` recomputes every one
    (nothing is read on the driver).

    The payload is ``{spec, reference, artifacts, gamma}`` (plain dicts; ``force: True`` when
    forced), the arguments of :func:`lambda_hat.reference.nuts.reference_job`. A submission
    that raises or returns no dict becomes a failed record
    (:func:`lambda_hat.trial.outcome.failed_metrics`). Problems are taken once per pid.

    While submitted references run, ``watch`` prints their progress (:func:`_wait`); leave it
    off when they log to this terminal themselves (local processes). Ctrl-C raises
    :class:`ReferenceInterrupted`, saying where each unfinished reference last saved its run.

    ``kinds[pid]`` (default hmc) is a problem's reference kind: theory | none run no NUTS
    (:mod:`lambda_hat.reference.kinds`; ``kind`` in the payload) and the stage says once per
    such problem what its runs are scored against.
    """
    by_gamma: dict[str, dict[float, dict]] = {}
    order: dict[str, list[float]] = {}
    futures: dict[tuple[str, float], Future] = {}
    base = {"reference": dataclasses.asdict(cfg), "artifacts": str(artifacts)}
    homes: dict[tuple[str, float], Path] = {}
    try:
        for spec in _store_sources(specs, artifacts):
            pid = problem_id(spec)
            if pid in by_gamma:
                continue
            by_gamma[pid], order[pid] = {}, [float(g) for g in (gammas or {}).get(pid, [cfg.gamma])]
            kind = (kinds or {}).get(pid, "hmc")
            payload = {"spec": as_dict(spec), **base, **({"force": True} if force else {})}
            payload.update({"kind": kind} if kind != "hmc" else {})
            for g in order[pid]:
                cached = None if force else _cached(spec, cfg, artifacts, g, kind)
                if cached is not None:
                    by_gamma[pid][g] = cached
                    continue
                homes[pid, g] = reference_dir(artifacts, pid, cfg, g)
                futures[pid, g] = submit({**payload, "gamma": g})
        _log_counts(order, len(futures))
        for (pid, g), ref in _wait(futures, homes, watch).items():
            by_gamma[pid][g] = ref
    except KeyboardInterrupt:
        left = [k for k in homes if k not in futures or not futures[k].done()]
        raise ReferenceInterrupted(_saved(left, homes)) from None
    for pid, gs in order.items():  # in γ order, whichever came from where
        by_gamma[pid] = {g: by_gamma[pid][g] for g in gs}
        if (kind := (kinds or {}).get(pid, "hmc")) != "hmc":
            announce(pid, kind, by_gamma[pid][gs[0]])
    return References(by_gamma, float(cfg.gamma))


class ReferenceInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) during the reference stage; the message says where each
    unfinished reference last saved its run (the rerun continues from there)."""


def _saved(keys: list[tuple[str, float]], homes: dict[tuple[str, float], Path]) -> str:
    """What the unfinished references ``keys`` saved, from their progress records."""
    parts = []
    for pid, g in keys:
        rec = read_progress(homes[pid, g])
        if rec is None:
            parts.append(f"{pid} (γ = {g:g}): no chunk finished yet, nothing saved")
        elif rec.get("phase") == "warmup":
            parts.append(
                f"{pid} (γ = {g:g}): saved at warm-up step {rec['warmup_done']}/{rec['warmup']}"
            )
        else:
            parts.append(
                f"{pid} (γ = {g:g}): saved at {rec['draws_done']}/{rec['draws']} draws per chain"
            )
    return "; ".join(parts) or "every reference had finished"


def _wait(
    futures: dict[tuple[str, float], Future], homes: dict[tuple[str, float], Path], watch: bool
) -> dict[tuple[str, float], dict]:
    """Each submitted reference's record (:func:`_result`) as it finishes; meanwhile, with
    ``watch``, a line per reference whose progress record changed (at most one per
    :data:`checkpoint.PROGRESS_EVERY_SEC` each, and one at each phase change): references
    computed on workers whose logs the user does not see (Parsl's go to runinfo)."""
    out: dict[tuple[str, float], dict] = {}
    pending = dict(futures)
    seen = {k: (read_progress(homes[k]) or {}).get("updated_at") for k in pending}
    shown: dict[tuple[str, float], tuple[str, float]] = {}
    while pending:
        done, _ = cf.wait(list(pending.values()), POLL_SEC, cf.FIRST_COMPLETED)
        for key in [k for k, f in pending.items() if f in done]:
            out[key] = _result(pending.pop(key))
        for key in pending if watch else ():
            rec = read_progress(homes[key])
            if rec is None or rec.get("updated_at") == seen[key]:
                continue
            phase, at = shown.get(key, ("", -math.inf))
            now = time.monotonic()
            if rec.get("phase") != phase or now - at >= checkpoint.PROGRESS_EVERY_SEC:
                seen[key], shown[key] = rec.get("updated_at"), (rec.get("phase"), now)
                log.info("%s", checkpoint.progress_line(rec))
    return out


def _log_counts(order: dict[str, list[float]], submitted: int) -> None:
    every = list(dict.fromkeys(g for gs in order.values() for g in gs))
    total = sum(len(gs) for gs in order.values())
    log.info(
        "references: %d problem(s) x %d γ (%s): %d cached, %d submitted",
        len(order),
        len(every),
        ", ".join(f"{g:g}" for g in every),
        total - submitted,
        submitted,
    )


#: Seconds between two looks at the running references (their results, their progress).
POLL_SEC = 2.0


def _result(fut: Future) -> dict:
    """A submitted reference's record; an exception or a non-dict becomes a failed record."""
    return result_of(fut, "app", failed_from)


@contextlib.contextmanager
def process_submitter(workers: int, verbose: int = 0) -> Iterator[Submit]:
    """``submit(payload) -> Future`` computing :func:`lambda_hat.reference.nuts.reference_job`
    on this machine: in ``workers`` spawned processes (started at the first submission, shut
    down on exit; never a fork of a process that imported JAX), or here, one after the other,
    for one worker. ``verbose`` is each process's logging level."""
    pool: cf.ProcessPoolExecutor | None = None

    def submit(payload: dict) -> Future:
        nonlocal pool
        args = (payload["spec"], payload["reference"], payload["artifacts"])
        args += (payload.get("force", False), verbose, payload.get("gamma"))
        args += (payload.get("kind", "hmc"),)
        if workers > 1:
            if pool is None:
                ctx = multiprocessing.get_context("spawn")
                pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
            return pool.submit(reference_job, *args)
        fut: Future = Future()
        try:
            fut.set_result(reference_job(*args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    try:
        yield submit
    finally:
        if pool is not None:
            pool.shutdown()


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
    if ref.get("kind", "hmc") != "hmc":  # theory | none: no HMC, no gate
        return None
    if finite_float(ref.get("llc_ref")) is None:  # never a silent zero-draw reference
        return (
            f"the HMC reference has no draws ({_why_empty(ref)}), so there is nothing to score "
            f"runs against ({key} does not change that). Raise reference.budget_sec (or lower "
            "reference.warmup), or set this problem's reference: none (runs reported unscored) "
            "or reference: theory (deep linear networks, regular models)."
        )
    gate = ref.get("gate") or {}
    if not gate.get("passed", False) and not allow_failed:
        reasons = "; ".join(gate.get("reasons") or ["no reason recorded"])
        return (
            f"the HMC reference failed its quality gate ({reasons}). Raise reference.draws "
            f"or reference.warmup, or set {key}: true to use it anyway."
        )
    return None


def _why_empty(ref: dict) -> str:
    """Why a reference has no draws, from its gate (the budget, in words) or its fields."""
    reasons = (ref.get("gate") or {}).get("reasons") or []
    return next((r for r in reasons if r.startswith("no draws")), "no estimate recorded")


def unusable(
    refs: dict, pid: str, allow_failed: bool, key: str = "optuna.allow_failed_reference"
) -> str | None:
    """Why a problem's runs cannot be scored: the first of its references (one per γ) that is
    not usable (:func:`usable_reason`), or None."""
    by_gamma = refs.by_gamma[pid] if isinstance(refs, References) else {None: refs[pid]}
    for gamma, ref in by_gamma.items():
        why = usable_reason(ref, allow_failed, key)
        if why:
            return why if len(by_gamma) == 1 else f"at γ = {gamma:g}, {why}"
    return None


def report(refs: References, pid: str) -> None:
    """Log each HMC reference of ``pid``: λ̂_ref ± SE and its gate (a theory or no reference
    was announced by the stage)."""
    for gamma, ref in refs.by_gamma[pid].items():
        if is_reference(ref) and ref.get("kind", "hmc") == "hmc":
            theory = ref.get("llc_theory")
            log.info(
                "reference %s (γ = %g): llc_ref = %s ± %s, gate %s%s",
                pid,
                gamma,
                fmt_value(ref.get("llc_ref"), ".4g"),
                fmt_value(ref.get("se_ref"), ".2g"),
                "passed" if ref["gate"]["passed"] else "FAILED",
                "" if theory is None else f" (theory {theory:.4g})",
            )
