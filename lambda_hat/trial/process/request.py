"""The child side of a supervised trial: resolve the target, run the payload, write the result.

Shared by the one-shot child (:mod:`lambda_hat.trial.process.oneshot`) and the warm one
(:mod:`lambda_hat.trial.process.warm`); every failure becomes a metrics dict in ``result.json``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.llc.channel import mark_started
from lambda_hat.trial.outcome import failed_metrics, from_exception
from lambda_hat.trial.process.supervise import LOG_TAIL_CHARS

__all__ = ["MOVED_TARGETS", "resolve_target", "run_request"]

#: Trial targets as they were named before the stage packages (issue 18): stored configs and
#: scripts that pass ``--trial-target lambda_hat.workflow.synthetic:synthetic_trial`` still run.
MOVED_TARGETS = {
    "lambda_hat.workflow.synthetic:synthetic_trial": "lambda_hat.trial.synthetic:synthetic_trial",
    "lambda_hat.workflow.execution:run_method_trial": "lambda_hat.trial.app:method_target",
}


def resolve_target(target: str) -> Callable[..., Any]:
    """The function named by ``target`` (``"package.module:function"``; the function part may be
    dotted, ``module:Class.method``). Raises ``ValueError`` for a malformed target, the import's
    own error for a missing module or attribute, ``TypeError`` when it is not callable."""
    module_name, sep, func_name = MOVED_TARGETS.get(target, target).partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    func = importlib.import_module(module_name)
    for part in func_name.split("."):
        func = getattr(func, part)
    if not callable(func):
        raise TypeError(f"target {target!r} is not callable")
    return func


def _exception_metrics(exc: BaseException, phase: str, tb_path: Path) -> dict:
    return failed_metrics(
        **from_exception(exc, phase=phase, traceback_path=tb_path, traceback_chars=LOG_TAIL_CHARS)
    )


def run_request(target: str, workdir: Path) -> bool:
    """Run one trial in this (child) process: load ``workdir/payload.json``, call ``target``,
    write ``result.json`` (every failure as metrics). Shared by the one-shot child and the warm
    one (:mod:`lambda_hat.trial.process.warm`). Returns False when the process should not run another trial
    (an exception that is not an ``Exception``, e.g. ``SystemExit``, escaped the target)."""
    result_path, tb_path = workdir / layout.RESULT, workdir / layout.TRACEBACK
    payload = read_json(workdir / layout.PAYLOAD)
    if payload is None:
        atomic_write_json(result_path, failed_metrics("error", "payload.json missing or corrupt"))
        return True
    try:
        func = resolve_target(target)
    except BaseException as exc:  # noqa: BLE001 - every failure must become metrics
        atomic_write_json(result_path, _exception_metrics(exc, "import", tb_path))
        return isinstance(exc, Exception)
    mark_started("imported")
    try:
        result = func(**payload)
    except BaseException as exc:  # noqa: BLE001
        atomic_write_json(result_path, _exception_metrics(exc, "run", tb_path))
        return isinstance(exc, Exception)
    if not isinstance(result, Mapping):
        result = failed_metrics(
            "error",
            f"target {target} returned {type(result).__name__}, expected a metrics dict",
            exc_type="TypeError",
        )
    atomic_write_json(result_path, dict(result))
    return True
