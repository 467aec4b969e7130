"""Stored artifacts are found by their content address: pids and run ids must not drift.

The run ids below were produced by the code before the architecture change (issue 8) for the
linear test problem; the same manifests must hash to the same ids, or every stored run of every
user would be recomputed (and resumed studies would not find their trials). The one deliberate
change: preconditioned SGLD now freezes its preconditioner after burn-in (issue 9), so its
manifests carry a ``revision`` and its runs from before (biased) are not reused: the Adam run's
id was ``r_eb209dececaf``. Likewise VI now starts from the curvature estimate and checks its
ELBO trend (issue 9): its manifests carry a ``revision`` (the run below was ``r_a97b6f6818a6``,
then ``r_8098c8e99c8d``; it changed again when VI's default coordinates became the Lanczos
eigenbasis of the curvature at w*, plans/vi.md).

Second deliberate change (issue 9, every method samples the reference's posterior): SGLD's
``gamma`` defaults to None, "the reference's γ", instead of its own 1.0, so a default SGLD
manifest's hyperparameters say ``gamma: null`` and its id changes (was ``r_9e8b47c2aa8a`` for the
plain run and ``r_a99c6c2b4cf3`` for Adam). The sampled γ is in the manifest's ``posterior``
either way; an SGLD run that sets ``gamma: 1.0`` explicitly keeps its old id (pinned below).
The manifest's ``posterior`` also records nβ, which is derived (n·β) and left out of the hash
(:func:`lambda_hat.trial.identity.run_id`), so MCLMC's ids are unchanged.

Third deliberate change (issue 11, plans/sgld-estimator.md): SGLD gained the hyperparameters
``estimator`` (default ``minibatch``: λ̂ from the steps' own minibatch losses instead of full-data
L_n passes, a different estimate of the same quantity) and ``dtype`` (default ``float64``), VI
gained ``dtype``; the resolved hyperparameters enter the hash, so their ids changed. Before:
SGLD plain ``r_a3e09c7ac8f2``, with ``gamma: 1.0`` ``r_9e8b47c2aa8a``, Adam ``r_4e0a5f3f4183``;
VI ``r_8098c8e99c8d``. MCLMC has no ``dtype`` (BlackJAX's MCLMC tuner does not run in float32
under x64), so its id is unchanged.

Fourth deliberate change (issue 19, plans/methods.md "MCLMC's tuning"): MCLMC gained
``energy_frac`` (default 0.2: energy-variance rounds that pool the chains and hold their energy
error at the target before sampling, where BlackJAX's per-chain tuning alone missed it by 10–370×
on deep linear networks) and ``miss_factor`` (default 10, the energy check's limit, hard-coded
before), and the energy check now covers untuned runs too; the resolved hyperparameters enter
the hash, so the MCLMC id changed (was ``r_cba942237ced``). In the same issue VI gained the
drift check (MALA from draws of the fitted q; a fit whose estimate moves by more than
``drift_tol`` fails, plans/vi.md): the hyperparameters ``drift_steps`` and ``drift_tol`` and the
revision "lanczos whitening, importance diagnostics, drift check" changed its ids (were
``r_13aad4bafa12`` and, in float32, ``r_0ccdf7f7f5fb``). SGLD's ids are unchanged.
"""

from __future__ import annotations

import math

import pytest

from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.trial import identity as runs

LINEAR_PID = "p_ff2e65329cb6"
REF = {"beta": 1 / math.log(200), "gamma": 1.0}


def test_linear_problem_pid_is_frozen():
    assert (
        problem_id(resolve_problem({"model": "linear", "data": "small", "seed": 0})) == LINEAR_PID
    )


@pytest.mark.parametrize(
    ("method", "hp", "run_id"),
    [
        ("sgld", {"steps": 400, "batch": 32, "precond_type": "none"}, "r_e0b2b56f9440"),
        (
            "sgld",
            {"steps": 400, "batch": 32, "precond_type": "none", "gamma": 1.0},
            "r_0b5c62f22828",
        ),
        ("sgld", {"steps": 400, "precond_type": "adam"}, "r_6f6bfbc9ec56"),
        (
            "sgld",
            {"steps": 400, "batch": 32, "estimator": "full", "dtype": "float32"},
            "r_975bfb4c2054",
        ),
        ("vi", {"steps": 300}, "r_1cef7e024160"),
        ("vi", {"steps": 300, "dtype": "float32"}, "r_38f3b38ef64b"),
        ("mclmc", {"steps": 300}, "r_3197910128f8"),
    ],
)
def test_run_ids_are_frozen(method, hp, run_id, tmp_path):
    manifest = runs.manifest(LINEAR_PID, 200, method, hp, None, 3, REF)
    assert runs.run_id(manifest) == run_id
    assert manifest["posterior"]["nbeta"] == pytest.approx(200 * REF["beta"])
    assert runs.run_dir_for(tmp_path, LINEAR_PID, method, manifest).name == run_id
