"""Failure kinds (lambda_hat.trial.outcome): the metrics shape, the kinds table and its
consequences, the one exception conversion, retries, and the estimate's error.
"""

from __future__ import annotations

import optuna
import pytest
from helpers.failures import diverged
from optuna.trial import TrialState

from lambda_hat._io import finite_float
from lambda_hat.study.tell import counts_as_finished
from lambda_hat.trial.outcome import (
    FAILURE_KINDS,
    KINDS,
    estimate_error,
    failed_metrics,
    from_exception,
    is_retryable,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- shapes and grading ---------------------------------------------------------------------


def test_failed_metrics_shape_and_unknown_kind():
    m = failed_metrics("timeout", "budget spent", fraction_done=0.4)
    assert m == {
        "status": "failed",
        "failure": {"kind": "timeout", "message": "budget spent", "fraction_done": 0.4},
    }
    with pytest.raises(ValueError, match="not one of"):
        failed_metrics("exploded", "x")


def test_retry_only_infrastructure_and_only_up_to_the_count():
    lost = failed_metrics(**from_exception(type("WorkerLost", (Exception,), {})("node gone")))
    assert lost["failure"]["kind"] == "infrastructure"
    assert is_retryable(lost, attempts=1, max_retries=2)
    assert is_retryable(lost, attempts=2, max_retries=2)
    assert not is_retryable(lost, attempts=3, max_retries=2)
    assert not is_retryable(lost, attempts=1, max_retries=0)
    assert not is_retryable(diverged(5), attempts=1)
    assert failed_metrics(**from_exception(KeyError("x")))["failure"]["kind"] == "error"


# --- the one vocabulary: kinds table, exception conversion, the estimate's error ------------


def test_the_kinds_table_gives_each_kind_its_consequences():
    def having(prop):
        return {k.name for k in KINDS.values() if prop(k)}

    assert having(lambda k: k.told == "COMPLETE") == {"diverged", "timeout", "oom"}
    assert having(lambda k: k.told == "PRUNED") == {"pruned"}
    assert having(lambda k: not k.finished) == {"interrupted", "infrastructure"}
    assert having(lambda k: not k.guarded) == {"interrupted", "infrastructure", "pruned"}
    assert having(lambda k: k.reusable) == {"diverged"} and having(lambda k: k.retried) == {
        "infrastructure"
    }
    assert having(lambda k: k.learned) == {"diverged", "timeout", "oom", "pruned"}
    assert FAILURE_KINDS == tuple(KINDS)
    assert not counts_as_finished(TrialState.FAIL, "infrastructure")
    assert counts_as_finished(TrialState.FAIL, "error") and counts_as_finished(
        TrialState.FAIL, None
    )


def test_from_exception_is_the_one_conversion(tmp_path):
    try:
        raise KeyError("x")
    except KeyError as exc:
        f = from_exception(exc, phase="run", traceback_path=tmp_path / "tb.txt", step=7)
    assert f == {
        "kind": "error",
        "message": "KeyError: 'x'",
        "exc_type": "KeyError",
        "phase": "run",
        "traceback_path": str(tmp_path / "tb.txt"),
        "step": 7,
    }
    assert (tmp_path / "tb.txt").read_text().endswith("KeyError: 'x'\n")
    assert from_exception(MemoryError("no"))["kind"] == "oom"
    assert from_exception(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))["kind"] == "oom"
    tail = from_exception(ValueError("v" * 50), traceback_chars=20)["traceback"]
    assert tail == "v" * 19 + "\n"


def test_estimate_error_and_the_finite_check():
    assert estimate_error(1.75, 1.5) == 0.25 and estimate_error(1.25, 1.5) == -0.25
    for bad in (None, float("nan"), float("inf"), True, "1.5"):
        assert estimate_error(bad, 1.5) is None and estimate_error(1.5, bad) is None
    assert finite_float(3) == 3.0 and finite_float(True) is None and finite_float("2") is None
