"""What a trial's outcome is: the failure kinds and their properties, in one table.

A trial ends with a metrics dict: ``{"status": "ok", ...}`` on success, otherwise
``{"status": "failed", "failure": {"kind": ..., "message": ..., ...}}`` (build it with
:func:`failed_metrics`; an exception becomes one with :func:`from_exception`, the one conversion
every producer uses). Each kind's consequences are the columns of :data:`KINDS`:

==================  =========  ========  =======  ========  =======  ==================================
kind                told       finished  guarded  reusable  retried  what it means
==================  =========  ========  =======  ========  =======  ==================================
``diverged``        COMPLETE   yes       yes      yes       no       non-finite loss or parameters
``timeout``         COMPLETE   yes       yes      no        no       budget spent, or killed past it
``oom``             COMPLETE   yes       yes      no        no       out of memory
``crashed``         FAIL       yes       yes      no        no       the trial process died
``error``           FAIL       yes       yes      no        no       an exception escaped the trial
``interrupted``     FAIL       no        no       no        no       the driver died while it ran
``infrastructure``  FAIL       no        no       no        yes      a Parsl worker or node was lost
``pruned``          PRUNED     yes       no       no        no       stopped by the driver's pruner
==================  =========  ========  =======  ========  =======  ==================================

*told*: the Optuna state the trial is told with (COMPLETE kinds carry a graded constraint, see
:mod:`lambda_hat.study.tell`); *finished*: counts toward ``max_trials`` (otherwise its slot is
asked again); *guarded*: counted by the all-fail guard (:mod:`lambda_hat.study.guard`);
*reusable*: a stored run with this outcome is told again without re-running (deterministic in
the run's manifest); *retried*: resubmitted up to ``max_retries`` times.

Failure fields, all optional beyond ``kind`` and ``message``, one spelling each: ``step`` and
``steps_planned`` (where a ``diverged`` run blew up), ``fraction_done`` (0..1), ``exc_type``,
``phase`` (``"import"`` for a target that cannot be imported), ``traceback_path`` (a file),
``traceback`` (the text's tail), ``signal``/``signal_name``/``exit_code``, ``log_path``.
:func:`failure_of` still reads the older spellings found in stored runs.
"""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from lambda_hat._io import atomic_write_bytes, finite_float

__all__ = [
    "failed_from",
    "FAILURE_KINDS",
    "IMPLAUSIBLE_FACTOR",
    "KINDS",
    "TRACEBACK_CHARS",
    "Kind",
    "estimate_error",
    "failed_metrics",
    "failure_of",
    "finite_float",
    "from_exception",
    "is_retryable",
    "is_success",
    "kind_of",
    "screen_estimate",
]


class Kind(NamedTuple):
    """One failure kind and what follows from it (the columns of the module's table)."""

    name: str
    told: Literal["COMPLETE", "FAIL", "PRUNED"]
    finished: bool
    guarded: bool
    reusable: bool
    retried: bool
    doc: str

    @property
    def learned(self) -> bool:
        """Whether the sampler learns from it (COMPLETE with a constraint, or PRUNED)."""
        return self.told != "FAIL"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("diverged", "COMPLETE", True, True, True, False, "non-finite loss or parameters"),
        Kind("timeout", "COMPLETE", True, True, False, False, "budget spent, or killed past it"),
        Kind("oom", "COMPLETE", True, True, False, False, "out of memory"),
        Kind("crashed", "FAIL", True, True, False, False, "the trial process died"),
        Kind("error", "FAIL", True, True, False, False, "an exception escaped the trial"),
        Kind("interrupted", "FAIL", False, False, False, False, "the driver died while it ran"),
        Kind("infrastructure", "FAIL", False, False, False, True, "a worker or node was lost"),
        Kind("pruned", "PRUNED", True, False, False, False, "stopped by the driver's pruner"),
    )
}
"""Every failure kind, by name, in a fixed order."""

FAILURE_KINDS: tuple[str, ...] = tuple(KINDS)
"""Every kind a failed trial can have (``metrics["failure"]["kind"]``)."""

#: Parsl exceptions that mean "the worker or node went away", matched by name so that this
#: module does not import Parsl.
_INFRASTRUCTURE_EXC_TYPES = frozenset(
    {
        "ManagerLost",
        "WorkerLost",
        "BadStateException",
        "ScalingFailed",
        "ConnectionError",
        "TooManyJobFailuresError",  # Parsl's block error handler gave up on failed blocks
    }
)
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating")

#: A "successful" λ̂ with |λ̂| above this many times max(d/2, |λ̂_ref|) is a blown-up chain.
#: Not 10: a short or badly initialized VI fit legitimately reads 100x too high on the tiny
#: linear problem (λ̂ ≈ 130-175 for d = 3), and that is a bad estimate the sampler must see as
#: one, not a divergence.
IMPLAUSIBLE_FACTOR = 1000.0

TRACEBACK_CHARS = 4000
"""How much of a traceback's text (its tail) a failure keeps when no file holds it."""


def estimate_error(llc_hat: Any, llc_ref: Any) -> float | None:
    """The signed error λ̂ − λ̂_ref, or ``None`` unless both are finite numbers."""
    hat, ref = finite_float(llc_hat), finite_float(llc_ref)
    return None if hat is None or ref is None else hat - ref


def kind_of(name: str) -> Kind:
    """The :class:`Kind` called ``name``; ``ValueError`` naming the valid ones otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"failure kind {name!r} is not one of {', '.join(FAILURE_KINDS)}"
        ) from None


def failed_metrics(kind: str, message: str, **extra: Any) -> dict:
    """The metrics dict of a failed trial: ``{"status": "failed", "failure": {...}}``.

    ``extra`` lands inside ``failure`` as given (e.g. ``step=12, steps_planned=10_000`` for
    ``diverged``, ``fraction_done=0.4`` for ``timeout``). Raises ``ValueError`` for an unknown
    ``kind``. With :func:`from_exception`: ``failed_metrics(**from_exception(exc))``.
    """
    kind_of(kind)
    return {"status": "failed", "failure": {"kind": kind, "message": str(message), **extra}}


def from_exception(
    exc: BaseException,
    *,
    phase: str | None = None,
    traceback_path: str | Path | None = None,
    step: int | None = None,
    traceback_chars: int = 0,
) -> dict:
    """The failure record of an exception: the one exception → failure conversion.

    The kind is ``infrastructure`` for a lost Parsl worker or manager (matched by type name),
    ``oom`` for ``MemoryError`` or an XLA ``RESOURCE_EXHAUSTED``, else ``error``. The record has
    ``kind``, ``message`` (``"Type: text"``) and ``exc_type``, plus, when given: ``phase``
    (``"import"`` or ``"run"``), ``traceback_path`` (the formatted traceback is written there,
    atomically), ``step``, and ``traceback`` (the last ``traceback_chars`` characters of it).
    Call it inside the ``except`` block or with the caught exception; it never raises for a
    well-formed exception.
    """
    name = type(exc).__name__
    if name in _INFRASTRUCTURE_EXC_TYPES:
        kind = "infrastructure"
    elif isinstance(exc, MemoryError) or any(m in str(exc) for m in _OOM_MARKERS):
        kind = "oom"
    else:
        kind = "error"
    failure: dict[str, Any] = {"kind": kind, "message": f"{name}: {exc}", "exc_type": name}
    if phase is not None:
        failure["phase"] = phase
    text = "".join(_traceback.format_exception(exc)) if traceback_path or traceback_chars else ""
    if traceback_path is not None:
        atomic_write_bytes(traceback_path, text.encode())
        failure["traceback_path"] = str(traceback_path)
    if step is not None:
        failure["step"] = step
    if traceback_chars > 0:
        failure["traceback"] = text[-traceback_chars:]
    return failure


def failed_from(exc: BaseException) -> dict:
    """The failed metrics of an exception a submission, an app or its future raised (kind from
    :func:`from_exception`, the traceback's tail kept)."""
    return failed_metrics(**from_exception(exc, traceback_chars=TRACEBACK_CHARS))


def is_success(metrics: Mapping[str, Any] | None) -> bool:
    """Whether ``metrics`` describes a successful trial (``status == "ok"``)."""
    return isinstance(metrics, Mapping) and metrics.get("status") == "ok"


# older spellings in stored runs -> the one spelling (lambda_hat.trial.runner wrote the first two)
_OLD_SPELLINGS = (("exception_type", "exc_type"), ("steps_total", "steps_planned"))


def failure_of(metrics: Mapping[str, Any] | None) -> dict | None:
    """The ``failure`` dict of a failed trial in the one spelling, ``None`` for a success.

    Malformed metrics (missing, no status, an unknown kind) count as an ``error`` failure, so a
    runner bug can never pass for a success or crash the driver. Older spellings are read:
    ``exception_type`` (``exc_type``), ``steps_total`` (``steps_planned``) and a one-line
    ``traceback`` that is a path (``traceback_path``).
    """
    if is_success(metrics):
        return None
    if not isinstance(metrics, Mapping):
        return {"kind": "error", "message": "trial produced no metrics"}
    failure = metrics.get("failure")
    if not isinstance(failure, Mapping):
        status = metrics.get("status")
        return {"kind": "error", "message": f"metrics have status {status!r} and no failure"}
    out = dict(failure)
    for old, new in _OLD_SPELLINGS:
        if out.get(new) is None and out.get(old) is not None:
            out[new] = out.pop(old)
    tb = out.get("traceback")
    if out.get("traceback_path") is None and isinstance(tb, str) and tb and "\n" not in tb:
        out["traceback_path"] = out.pop("traceback")
    if out.get("kind") not in KINDS:
        out["message"] = f"unknown failure kind {out.get('kind')!r}: {out.get('message')}"
        out["kind"] = "error"
    return out


def is_retryable(
    metrics: Mapping[str, Any] | None, attempts: int = 1, max_retries: int = 2
) -> bool:
    """Whether to resubmit a trial: a retried kind (``infrastructure``) with retries left.

    ``attempts`` is how many times the trial has run so far (1 after the first failure);
    ``max_retries`` how many resubmissions are allowed (0 disables retrying).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    failure = failure_of(metrics)
    return failure is not None and KINDS[failure["kind"]].retried and attempts <= max_retries


def screen_estimate(metrics: dict, ref: Mapping[str, Any] | None) -> dict:
    """``metrics``, or a ``diverged`` failure when a successful λ̂ is not finite or absurd.

    The true LLC is at most d/2, and a reference is a good estimate of the same quantity, so a
    λ̂ with |λ̂| > :data:`IMPLAUSIBLE_FACTOR` × max(d/2, |λ̂_ref|) comes from chains that blew
    up without overflowing (a run reported λ̂ ≈ 1.9e294 as ok): scoring it as a success would
    put an astronomic value into the sampler. It becomes ``diverged`` (a parameter failure the
    sampler learns from); the estimate stays in ``llc_hat``. Without d or a reference only
    non-finite values are caught.
    """
    if metrics.get("status") != "ok":
        return metrics
    llc = finite_float(metrics.get("llc_hat"))
    if llc is None:
        why = f"llc_hat = {metrics.get('llc_hat')!r} is not a finite number"
    else:
        d = finite_float((metrics.get("posterior") or {}).get("d"))
        scales = [d / 2] if d is not None and d > 0 else []
        llc_ref = finite_float((ref or {}).get("llc_ref"))
        if llc_ref is not None and llc_ref != 0:
            scales.append(abs(llc_ref))
        if not scales or abs(llc) <= IMPLAUSIBLE_FACTOR * max(scales):
            return metrics
        why = (
            f"llc_hat = {llc:.4g} is implausible: |llc_hat| > {IMPLAUSIBLE_FACTOR:g} x "
            f"max(d/2, |llc_ref|) = {IMPLAUSIBLE_FACTOR * max(scales):.4g} (the LLC is at most "
            "d/2): the chains blew up without overflowing"
        )
    return {
        **metrics,
        "status": "failed",
        "failure": {"kind": "diverged", "message": why, "screened": True},
    }
