"""The reference app: what a Parsl worker runs for one (problem, γ) reference."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from lambda_hat.parallel import session, worker
from lambda_hat.trial.outcome import failed_from

__all__ = ["execute_reference", "submitter"]


def execute_reference(payload: dict) -> dict:
    """The reference app body: build the problem and its HMC reference (cached by pid), or,
    for ``kind`` theory | none, its record without NUTS.

    Returns the ref.json contents, or a failed record
    (:func:`lambda_hat.trial.outcome.failed_metrics` of the exception, with the traceback's
    tail).
    """
    worker.apply_env(worker.worker_env(payload["artifacts"]))
    try:
        from lambda_hat.reference.nuts import reference_job

        return reference_job(
            payload["spec"],
            payload["reference"],
            payload["artifacts"],
            payload.get("force", False),
            verbose=None,
            gamma=payload.get("gamma"),
            kind=payload.get("kind", "hmc"),
        )
    except Exception as exc:
        return failed_from(exc)


def submitter() -> Callable[[dict], Future]:
    """``submit(payload) -> AppFuture`` running :func:`execute_reference`."""
    return session.app(execute_reference)
