"""One trial of a cheap LLC method (SGLD, VI, MCLMC): the single entry point.

:func:`run_method_trial` is what the tuning workflow (through the trial app's default target,
:func:`lambda_hat.trial.app.method_target`) and ``lambda-hat trial`` call. Contract:

- It validates the hyperparameters first (a :class:`~lambda_hat.schema.ConfigError`
  naming the field is the only exception it raises, before any work or file).
- It writes ``<artifacts>/runs/<pid>/<method>/<run id>/manifest.json`` (everything that
  determines the run, :func:`lambda_hat.trial.identity.manifest`), then runs the method's adapter
  (:mod:`lambda_hat.methods`) through the engine's chunk loop (:mod:`lambda_hat.llc.engine`), then
  writes ``metrics.json`` and ``trace.npz`` — all atomically. ``metrics.json`` is written in
  every case and is strict JSON (no NaN/Infinity): a parameter-dependent problem (divergence,
  an exception, a spent budget) becomes ``status: failed`` with a ``failure`` record, never an
  exception (:func:`lambda_hat.trial.outcome.from_exception`). An exception's traceback is stored in
  ``traceback.txt`` beside it.

The posterior is :class:`~lambda_hat.llc.posterior.LLCPosterior` with β and γ taken from ``ref``
(the HMC reference's settings, so that λ̂ and λ̂_HMC estimate the same quantity; defaults
1/log n and 1 without one) — except SGLD, whose ``gamma`` hyperparameter is its own
localization strength (see plans/methods.md). The data, w* and the posterior's numbers are cast
to the method's ``dtype`` hyperparameter (:func:`lambda_hat.methods._base.make_target`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lambda_hat import layout, methods
from lambda_hat._io import atomic_write_json, atomic_write_npz
from lambda_hat.llc import diagnostics, engine
from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import LLCPosterior
from lambda_hat.log import fmt_seconds
from lambda_hat.methods._base import MIN_DRAWS, Target, make_target
from lambda_hat.problem.build import Problem
from lambda_hat.trial import identity as runs
from lambda_hat.trial.outcome import estimate_error, from_exception

__all__ = ["run_method_trial", "run_on_target"]

log = logging.getLogger("lambda_hat.runner")


def _where_run() -> dict[str, str | None]:
    """Where this trial runs: the scheduler's job id (``SLURM_JOB_ID`` or ``PBS_JOBID``; None
    outside a batch job), the node, and the GPUs it may use (``CUDA_VISIBLE_DEVICES``), so that a
    result can be traced to its job's logs and accounting (``sacct -j``, ``qstat -x``)."""
    env = os.environ
    return {
        "job_id": env.get("SLURM_JOB_ID") or env.get("PBS_JOBID"),
        "node": socket.gethostname(),
        "gpu": env.get("CUDA_VISIBLE_DEVICES"),
    }


def _new_metrics(manifest: dict, run_id: str) -> dict[str, Any]:
    return {
        "schema": runs.RUN_SCHEMA,
        "run_id": run_id,
        "pid": manifest["pid"],
        "method": manifest["method"],
        "seed": manifest["seed"],
        "hyperparams": manifest["hyperparams"],
        "status": "failed",
        "failure": None,
        "llc_hat": None,
        "se_hat": None,
        "llc_per_chain": None,
        "stopped_early": False,
        "fraction_done": 0.0,
        "diagnostics": {},
        "work": {},
        "draws": {},
        "posterior": dict(manifest["posterior"]),
        **_where_run(),
    }


def run_method_trial(
    problem: Problem,
    method: str,
    hyperparams: dict | None,
    budget_sec: float | None,
    seed: int,
    ref: dict | None = None,
    artifacts: str | Path = layout.ARTIFACTS,
) -> dict:
    """Run one trial of ``method`` on ``problem`` and return (and store) its metrics.

    ``ref`` is a ref.json dict: its ``beta``/``gamma`` fix the posterior and, when it has
    ``llc_ref``, the metrics gain ``llc_ref``, ``se_ref``, ``error = llc_hat − llc_ref`` and
    ``abs_error``. Raises only :class:`ConfigError` for invalid hyperparameters (before any
    work); every other problem is reported in the returned metrics (``status: failed``).
    """
    t_start = engine.clock()
    manifest = runs.manifest(
        problem.pid, problem.n, method, hyperparams or {}, budget_sec, seed, ref
    )
    run_dir = runs.run_dir_for(artifacts, problem.pid, method, manifest)
    atomic_write_json(run_dir / layout.MANIFEST, manifest)
    hp, ps = manifest["hyperparams"], manifest["posterior"]
    deadline = t_start + budget_sec if budget_sec is not None else math.inf
    timer = engine.Timer()
    metrics = _new_metrics(manifest, run_dir.name)
    log.info("trial %s: %s on %s, %s", run_dir.name, method, problem.pid, hp)
    try:
        _run(problem, method, hp, ps, seed, deadline, timer, metrics, run_dir)
    except engine.Pruned as exc:
        _record_pruned(metrics, exc)
    except engine.Diverged as exc:
        metrics["failure"] = {
            "kind": "diverged",
            "message": str(exc),
            "step": exc.step,
            "fraction_done": min(1.0, exc.step / max(1, hp["steps"])),
        }
    except Exception as exc:  # a trial never raises: the failure is the result
        metrics["failure"] = from_exception(exc, traceback_path=run_dir / layout.TRACEBACK)
    except BaseException as exc:  # interrupted: still leave a valid record, then re-raise
        metrics["failure"] = {
            "kind": "interrupted",
            "message": type(exc).__name__,
            "step": None,
            "fraction_done": None,
        }
        raise
    finally:
        _finish(metrics, timer, t_start, ref, run_dir)
    _log_result(metrics)
    return metrics


def _run(
    problem: Problem,
    method: str,
    hp: dict,
    ps: dict,
    seed: int,
    deadline: float,
    timer: engine.Timer,
    metrics: dict,
    run_dir: Path,
) -> None:
    """The method on the posterior ``ps`` of ``problem``: fills ``metrics``, writes the trace."""
    target = make_target(
        problem.pid,
        problem.loss,
        problem.X,
        problem.y,
        problem.w_star,
        ps["beta"],
        ps["gamma"],
        timer,
        hp.get("dtype", "float64"),  # every cheap method's schema has it
    )
    out = run_on_target(target, method, hp, seed, deadline, timer, metrics)
    atomic_write_npz(run_dir / layout.TRACE, **out["trace"])


def run_on_target(
    target: Target,
    method: str,
    hp: dict,
    seed: int,
    deadline: float,
    timer: engine.Timer,
    metrics: dict,
) -> dict:
    """``method`` (resolved hyperparameters ``hp``) on ``target``; fills ``metrics`` with the
    posterior's numbers, λ̂, its SE and the diagnostics (the keys of metrics.json) and returns
    the adapter's RunOutput (its ``trace``: per-step arrays). Writes nothing; raises what the
    adapter raises (:class:`engine.Diverged`, :class:`engine.Pruned`, errors). The one path from
    a target to an estimate: trials and :func:`lambda_hat.estimate` both take it."""
    post = target.post
    metrics.setdefault("posterior", {}).update(nbeta=post.nbeta, loss_star=post.loss_star, d=post.d)
    out = methods.get(method).run(target, hp, jax.random.PRNGKey(seed), deadline, timer)
    _fill_result(metrics, out, post)
    return out


def _record_pruned(metrics: dict, exc: engine.Pruned) -> None:
    """A trial its driver asked to stop: the failure ``pruned`` and its estimate so far."""
    metrics["failure"] = {
        "kind": "pruned",
        "message": str(exc),
        "step": exc.step,
        "steps_planned": exc.steps_planned,
        "fraction_done": exc.step / max(1, exc.steps_planned),
    }
    metrics["llc_hat"] = exc.llc_hat
    metrics["work"] = {"steps": exc.step, "steps_planned": exc.steps_planned}


def _finish(metrics: dict, timer: engine.Timer, t_start: float, ref, run_dir: Path) -> None:
    """Seconds, the objective and the atomic metrics.json, whatever happened."""
    if metrics["failure"] is not None:
        metrics["status"] = "failed"
        metrics["fraction_done"] = metrics["failure"].get("fraction_done")
    metrics["seconds"] = {
        "compile": timer.compile,
        "run": timer.run,
        "total": engine.clock() - t_start,
    }
    metrics["compiled_programs"] = timer.compiled_programs
    _add_objective(metrics, ref)
    atomic_write_json(run_dir / layout.METRICS, metrics)
    metrics["run_dir"] = str(run_dir)


def _fill_result(metrics: dict, out: dict, post: LLCPosterior) -> None:
    kept = out["kept"]
    frac = out["units_done"] / max(1, out["units_total"])
    metrics.update(stopped_early=out["stopped_early"], fraction_done=frac)
    metrics["work"] = {
        "steps": out["steps_done"],
        "steps_planned": out["steps_planned"],
        "chains": int(kept.shape[0]),
        **out["work"],
    }
    metrics["draws"] = {
        "chains": int(kept.shape[0]),
        "kept_per_chain": int(kept.shape[1]),
        "burnin_per_chain": out["burnin"],
    }
    metrics["diagnostics"] = dict(out["diagnostics"])
    if kept.shape[1] < MIN_DRAWS:
        metrics["failure"] = {
            "kind": "timeout",
            "message": f"budget spent with {kept.shape[1]} kept draws per chain (need {MIN_DRAWS})",
            "step": out["steps_done"],
            "fraction_done": frac,
        }
        return
    est = estimate_llc(kept, post.loss_star, post.nbeta, independent=out.get("independent", False))
    se = est["se_hat"]
    if out.get("independent") and kept.shape[0] >= 2:
        # Independent fits: the spread of their λ̂ also holds the optimization noise, which the
        # Monte Carlo SE of the pooled draws does not see; report the larger of the two.
        between = float(np.std(est["llc_per_chain"], ddof=1) / math.sqrt(kept.shape[0]))
        metrics["diagnostics"].update(se_mc=se, se_between_fits=between)
        se = max(se, between) if se is not None and math.isfinite(se) else between
    metrics.update(llc_hat=est["llc_hat"], se_hat=se, llc_per_chain=est["llc_per_chain"])
    metrics["diagnostics"].update(
        rhat=est["rhat"],
        ess_bulk=est["ess_bulk"],
        ess_tail=est["ess_tail"],
        chain_health=diagnostics.chain_health(
            out["loss"] if out["burnin"] else kept, post.loss_star
        ),
    )
    metrics["status"] = "ok"
    if out.get("failure"):  # the adapter's own check failed (MCLMC tuning, VI convergence)
        metrics["failure"] = {**out["failure"], "fraction_done": frac}


def _add_objective(metrics: dict, ref: dict | None) -> None:
    if not ref or ref.get("llc_ref") is None:
        return
    metrics["llc_ref"] = float(ref["llc_ref"])
    metrics["se_ref"] = None if ref.get("se_ref") is None else float(ref["se_ref"])
    metrics["error"] = estimate_error(metrics.get("llc_hat"), metrics["llc_ref"])
    metrics["abs_error"] = None if metrics["error"] is None else abs(metrics["error"])


def _log_result(m: dict) -> None:
    secs = m["seconds"]
    if m["status"] == "ok":
        log.info(
            "trial %s: λ̂ = %.4g ± %.2g%s (%s, compile %s)",
            m["run_id"],
            m["llc_hat"],
            m["se_hat"] or float("nan"),
            " [stopped early]" if m["stopped_early"] else "",
            fmt_seconds(secs["total"]),
            fmt_seconds(secs["compile"]),
        )
    else:
        f = m["failure"]
        log.warning("trial %s: failed (%s): %s", m["run_id"], f["kind"], f["message"])
