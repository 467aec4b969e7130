"""A near-instant analytic stand-in for a method run, for plumbing checks and benchmarks.

``parsl-optuna --trial-target lambda_hat.trial.synthetic:synthetic_trial`` runs the whole
workflow (references, Parsl, studies, resume, Parquet) with trials that cost microseconds: use
it to check a new cluster config, or to measure orchestration overhead (``bench/``). Its
``llc_hat`` is ``llc_ref + Σ_i 0.01·ln(|h_i|)²`` over the numeric hyperparameters ``h_i``, so the
optimum is where every numeric hyperparameter is 1 (or the closest bound).
``LAMBDA_HAT_SYNTHETIC_SECONDS`` (environment of the workers) makes each trial sleep that long,
in ten chunks like the runner's: after each it reports its (exact) estimate with
:func:`lambda_hat.llc.channel.report_progress` and stops early, as ``pruned``, when asked to
(:func:`lambda_hat.llc.channel.stop_requested`), so pruning can be checked end to end too. Like the runner's, its metrics say where it ran
(``job_id``, ``node``, ``gpu``): the cluster tests compare those job ids with ``sacct``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from lambda_hat.llc.channel import report_progress, stop_requested
from lambda_hat.trial.runner import _where_run

CHUNKS = 10


def synthetic_llc(hyperparams: dict, llc_ref: float) -> float:
    """The analytic ``llc_hat`` of :func:`synthetic_trial`."""
    err = 0.0
    for v in hyperparams.values():
        if isinstance(v, int | float) and not isinstance(v, bool) and v != 0:
            err += 0.01 * math.log(abs(v)) ** 2
    return llc_ref + err


def synthetic_trial(*, hyperparams: dict, ref: dict | None = None, **_: Any) -> dict:
    """Metrics of a successful trial, in the runner's shape, computed analytically."""
    start = time.perf_counter()
    sleep = float(os.environ.get("LAMBDA_HAT_SYNTHETIC_SECONDS", "0") or 0)
    llc_ref = float((ref or {}).get("llc_ref") or 1.0)
    llc_hat = synthetic_llc(hyperparams, llc_ref)
    if sleep > 0:
        for chunk in range(1, CHUNKS + 1):
            time.sleep(sleep / CHUNKS)
            report_progress(chunk / CHUNKS, step=chunk, llc_hat=llc_hat)
            if chunk < CHUNKS and stop_requested():
                return {
                    "status": "failed",
                    "failure": {
                        "kind": "pruned",
                        "message": "stopped on request",
                        "step": chunk,
                        "fraction_done": chunk / CHUNKS,
                    },
                    "llc_hat": llc_hat,
                    "work": {"steps": chunk, "steps_planned": CHUNKS},
                    "seconds": time.perf_counter() - start,
                    **_where_run(),
                }
    return {
        "status": "ok",
        "llc_hat": llc_hat,
        "se_hat": 0.0,
        "error": llc_hat - llc_ref,
        "abs_error": abs(llc_hat - llc_ref),
        "seconds": time.perf_counter() - start,
        "work": {"steps": CHUNKS, "steps_planned": CHUNKS},
        "diagnostics": {"synthetic": True},
        **_where_run(),
    }
