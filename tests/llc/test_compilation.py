"""Trials reuse compiled programs: a second trial with other continuous hyperparameters traces
nothing (BlackJAX's tests/test_compilation.py habit: count the traces of the loss)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lambda_hat.llc import engine
from lambda_hat.trial.runner import run_method_trial

# Two trials per method: every continuous hyperparameter differs, and so does ``steps`` (within
# one chunk-capacity bucket); the discrete ones (batch, precond_type, M, r, chains) are shared.
# The first trials use the discrete settings of the known-answer tests (methods/test_sgld,
# test_vi, test_mclmc, trial/test_runner), which then find these programs compiled.
TRIALS = {
    "sgld": (
        {"eta0": 1e-4, "gamma": 1.0, "batch": 32, "steps": 400, "chains": 2},
        {"eta0": 3e-4, "gamma": 0.5, "batch": 32, "steps": 460, "chains": 2, "eval_every": 3},
    ),
    "vi": (
        {"lr": 1e-2, "M": 1, "r": 3, "steps": 2000, "batch_size": 256, "eval_samples": 1024},
        {
            "lr": 3e-2,
            "M": 1,
            "r": 3,
            "steps": 1500,
            "batch_size": 256,
            "eval_samples": 1024,
            "init_spread": 0.3,
            "whiten_decay": 0.95,
        },
    ),
    "mclmc": (
        {"steps": 2000},
        {"steps": 1800, "step_size": 0.05, "target_accept": 0.7, "L": 2.0},
    ),
}


class Counting:
    """The problem with an ``apply`` that counts how often the loss is traced."""

    def __init__(self, problem):
        self.traces = 0
        apply = problem.model.apply

        def counting_apply(w, X):
            self.traces += 1  # runs only while JAX traces (compiled code never calls Python)
            return apply(w, X)

        model = problem.model._replace(apply=counting_apply)
        self.problem = dataclasses.replace(problem, model=model)


def trial(problem, method, hp, path, seed=0):
    m = run_method_trial(problem, method, hp, None, seed, None, path)
    assert m["status"] == "ok", m["failure"]
    with np.load(Path(m["run_dir"]) / "trace.npz") as z:
        return m, {k: z[k] for k in z.files}


@pytest.mark.parametrize("method", ["sgld", "vi", "mclmc"])
def test_second_trial_traces_the_loss_zero_times(method, linear_problem, tmp_path):
    engine.clear_compiled_cache()
    counting = Counting(linear_problem)
    first, second = TRIALS[method]
    m1, t1 = trial(counting.problem, method, first, tmp_path)
    traces_one_trial = counting.traces
    assert traces_one_trial > 0 and m1["compiled_programs"] > 0
    m2, t2 = trial(counting.problem, method, second, tmp_path)
    assert counting.traces == traces_one_trial, f"{method}: the second trial retraced the loss"
    assert m2["run_id"] != m1["run_id"]
    assert not np.allclose(t1["loss"][:, :10], t2["loss"][:, :10])  # it did run other settings
    if method != "mclmc":  # MCLMC compiles only its small ESS program for a new phase length
        assert m2["compiled_programs"] == 0 and m2["seconds"]["compile"] == 0.0
    assert m2["seconds"]["compile"] < 0.25 * m1["seconds"]["compile"]
    # Cached programs give the numbers fresh ones gave: the first trial again, bit for bit.
    m3, t3 = trial(counting.problem, method, first, tmp_path / "again")
    assert counting.traces == traces_one_trial and m3["compiled_programs"] == 0
    assert t1.keys() == t3.keys()
    for name in t1:
        np.testing.assert_array_equal(t1[name], t3[name], err_msg=name)


def test_chunk_capacity_buckets_run_lengths():
    caps = {engine.chunk_capacity(n) for n in range(5000, 10001)}
    assert caps == {256, 512}  # 5k..10k steps share two chunk programs
    assert {engine.chunk_capacity(n) for n in range(1, 321)} == {engine.MIN_CHUNK}
    for n in (400, 4000, 123457):
        c = engine.chunk_capacity(n)
        assert c & (c - 1) == 0 and n / engine.TARGET_CHUNKS <= c < 2 * n / engine.TARGET_CHUNKS
