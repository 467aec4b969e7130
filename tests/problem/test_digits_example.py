"""The digits example's source (``examples/digits/digits.py``) returns a valid cross-entropy
SourceProblem: a few training steps here (the example trains 10,000 Adam + 30 Newton steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_hat.problem.source import call_source
from lambda_hat.problem.source_checks import prepare_source

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


@pytest.mark.slow  # tens of seconds on 2 cores
def test_the_digits_source_is_a_valid_classifier_problem():
    pytest.importorskip("sklearn")
    args = {"components": 8, "hidden": 4, "steps": 200, "newton": 3}
    sp = call_source("digits:problem", args, 0, EXAMPLE, "problems[0]")
    ready = prepare_source(sp, "problems[0]", allow_nonminimum=True)
    assert (ready.n, ready.d, ready.kind, ready.output_dim) == (
        1258,
        8 * 4 + 4 + 4 * 10 + 10,
        "cross_entropy",
        10,
    )
    assert ready.X.shape == (1258, 8) and ready.y.dtype.kind == "i"
