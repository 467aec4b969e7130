"""A searched γ is scored per posterior (issue 9): the plan's checks of γ choices, one reference
per choice, every trial scored against its own γ's reference.

The linear test problem (d = 3, n = 200, nβ = 37.7, Hessian eigenvalues 89-108) barely feels
γ = 0.3..3 (exact λ̂ 1.49988 vs 1.49876), so the γ choices here are far apart (1, 1000, 10000)
and each reference is visibly a different posterior's.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from lambda_hat._io import atomic_write_json
from lambda_hat.config.load import load_tuning
from lambda_hat.parallel import worker
from lambda_hat.problem import theory
from lambda_hat.reference import app as reference_app
from lambda_hat.reference import nuts as reference
from lambda_hat.reference import store
from lambda_hat.results import tables as results
from lambda_hat.schema import ConfigError
from lambda_hat.study import driver as tuning
from lambda_hat.study import pipeline, plan, space
from lambda_hat.study import storage as studies
from lambda_hat.trial import app as trial_app
from lambda_hat.trial.synthetic import synthetic_llc

optuna.logging.set_verbosity(optuna.logging.WARNING)

LINEAR = {"model": "linear", "data": "small", "teacher": "_null", "seed": 0}
TINY_REF = {"chains": 2, "draws": 200, "warmup": 100, "chunk": 200}
SYNTHETIC = "lambda_hat.trial.synthetic:synthetic_trial"


def _experiment(tmp_path: Path, search_space: dict, **optuna_cfg):
    cfg = {
        "problems": [LINEAR],
        "methods": list(search_space),
        "reference": TINY_REF,
        "optuna": {
            "max_trials": 6,
            "batch_size": 2,
            "n_startup_trials": 6,
            "isolate": False,
            "allow_failed_reference": True,
            "search_space": search_space,
            **optuna_cfg,
        },
        "paths": {"artifacts": str(tmp_path / "artifacts"), "results": str(tmp_path / "results")},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_tuning(path)


# ------------------------------------------------------------------ the plan's checks


@pytest.mark.parametrize("method", ["sgld", "vi"])
def test_a_continuous_gamma_range_is_a_config_error_naming_the_field(method, tmp_path):
    exp = _experiment(tmp_path, {method: {"gamma": {"low": 0.3, "high": 3.0}}})
    with pytest.raises(ConfigError) as err:
        plan.check_plan(exp, None, SYNTHETIC)
    text = str(err.value)
    assert f"optuna.search_space.{method}.gamma" in text
    assert "own HMC reference" in text and "{choices: [0.3, 1.0, 3.0]}" in text
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "results").exists()


def test_gamma_choices_are_checked(tmp_path):
    bad = [
        ({"choices": [1.0, None]}, r"gamma\.choices\[1\]: got null"),
        ({"choices": [-1.0]}, r"gamma\.choices\[0\]: got -1.0, must be >= 0"),
        ({"choices": [1, 1.0]}, "lists a value twice"),
        ({"choices": []}, "list the values"),
    ]
    for spec, pattern in bad:
        with pytest.raises(ConfigError, match=pattern):
            space.method_space("vi", {"gamma": spec}, "optuna.search_space.vi")
    exp = _experiment(
        tmp_path, {"sgld": {"gamma": {"choices": [1.0, 300.0]}}}, enqueue={"sgld": [{"gamma": 2}]}
    )
    with pytest.raises(ConfigError, match=r"enqueue\.sgld\[0\]\.gamma: got 2, not one of"):
        plan.check_plan(exp, None, SYNTHETIC)


def test_plan_gammas_are_the_references_then_every_choice_and_fixed_value(tmp_path):
    exp = _experiment(
        tmp_path,
        {"sgld": {"gamma": {"choices": [3000, 1.0, 300.0]}}, "vi": {"gamma": 50.0}, "mclmc": {}},
    )
    p = plan.check_plan(exp, None, SYNTHETIC)
    assert p.gammas == [1.0, 50.0, 300.0, 3000.0]
    assert p.spaces["sgld"]["gamma"].choices == (3000.0, 1.0, 300.0)
    assert p.fixed["vi"] == {"gamma": 50.0}
    default = plan.check_plan(_experiment(tmp_path, {"sgld": {}}), None, SYNTHETIC)
    assert default.gammas == [1.0] and "gamma" not in default.spaces["sgld"]


# ------------------------------------------------------------------ one reference per posterior


def _exact_reference(problem, cfg):
    """A stand-in for NUTS: the exact λ̂ of the linear problem at ``cfg.gamma``, stored where
    the real one would be (so caching and lookup are the real ones)."""
    post = problem.posterior(cfg.beta, cfg.gamma)
    H = np.asarray(jax.hessian(post.loss)(problem.w_star))
    ref = {
        "schema": store.REF_SCHEMA,
        "pid": problem.pid,
        "llc_ref": theory.linear_gaussian_llc(H, post.n, post.beta, cfg.gamma),
        "se_ref": 0.01,
        "draws_per_chain": cfg.draws,
        "rhat": 1.0,
        "ess_bulk": 1000.0,
        "gate": {"passed": True, "reasons": []},
        "settings": store.reference_settings(cfg),
        "beta": post.beta,
        "gamma": post.gamma,
        "nbeta": post.nbeta,
        "n": post.n,
        "seconds": {"total": time.monotonic()},
    }
    atomic_write_json(store.ref_path(problem), ref)
    return ref


def _references(p, monkeypatch, compute):
    """The reference stage on a thread pool (Parsl's app body, without its JAX env setup);
    ``compute`` replaces :func:`reference.compute_reference` and is counted."""
    computed = []

    def counting(problem, cfg):
        computed.append(cfg.gamma)
        return compute(problem, cfg)

    monkeypatch.setattr(worker, "apply_env", lambda env: None)
    monkeypatch.setattr(reference, "compute_reference", counting)
    submitted = []
    with ThreadPoolExecutor(3) as pool:

        def submit(payload):
            submitted.append(payload["gamma"])
            return pool.submit(reference_app.execute_reference, payload)

        refs = pipeline.reference_stage(
            p.exp.problems, p.cfg.reference, p.artifacts, submit, dict.fromkeys(p.pids, p.gammas)
        )
    return refs, sorted(computed), submitted


CHOICES = [1.0, 1000.0, 10000.0]


def _gamma_study(tmp_path, monkeypatch, compute) -> dict[float, dict]:
    """A study over γ choices: one reference per choice (computed once, reused by a rerun),
    every trial scored against its own γ's reference. Returns the references by γ."""
    exp = _experiment(
        tmp_path,
        {"sgld": {"gamma": {"choices": CHOICES}}},
        enqueue={"sgld": [{"gamma": g} for g in CHOICES]},  # every posterior gets trials
    )
    p = plan.check_plan(exp, None, SYNTHETIC)
    refs, computed, submitted = _references(p, monkeypatch, compute)
    assert submitted == CHOICES and computed == CHOICES
    (pid,) = p.pids
    home = p.artifacts / "problems" / pid
    assert (home / "ref.json").exists()  # the config's γ: where `lambda-hat plots` reads it
    assert len(list((home / "refs").glob("g_*/ref.json"))) == 2  # the two other choices
    by_gamma = {g: refs.at(pid, g) for g in CHOICES}
    assert refs[pid] is by_gamma[1.0] and refs.at(pid, None) is by_gamma[1.0]
    assert [r["gamma"] for r in by_gamma.values()] == CHOICES

    again, computed_again, _ = _references(p, monkeypatch, compute)  # a rerun reuses them
    assert computed_again == []
    assert {g: again.at(pid, g)["seconds"] for g in CHOICES} == {
        g: r["seconds"] for g, r in by_gamma.items()
    }

    storage = studies.open_storage(p.cfg.optuna, p.results)
    tasks = pipeline.make_tasks(p, storage, refs)
    with ThreadPoolExecutor(2) as pool:
        driver = tuning.Driver(
            tasks,
            lambda payload: pool.submit(trial_app.execute_trial, payload),
            max_trials=6,
            batch_size=2,
        )
        driver.run()
    df = pd.read_parquet(
        pipeline.aggregate(tasks, results.problem_table(p.cfg.problems, p.exp.problems), p.results)
    )
    assert len(df) == 6 and set(df.status) == {"ok"} and set(df.gamma) == set(CHOICES)
    for row in df.itertuples():
        own = by_gamma[row.hp_gamma]
        assert row.gamma == row.hp_gamma and row.llc_ref == own["llc_ref"]
        assert row.se_ref == own["se_ref"] and row.nbeta == pytest.approx(own["nbeta"])
        assert row.beta == pytest.approx(1 / math.log(200))
        # the trial's payload carried its own reference: synthetic λ̂ = llc_ref(γ) + penalty
        assert row.llc_hat == pytest.approx(synthetic_llc(dict(row.hyperparams), own["llc_ref"]))
        assert row.objective == pytest.approx(abs(row.llc_hat - own["llc_ref"]))
    return by_gamma


def test_gamma_choices_get_one_reference_each_and_trials_are_scored_against_their_own(
    linear, tmp_path, monkeypatch
):
    _, post, H = linear
    by_gamma = _gamma_study(tmp_path, monkeypatch, _exact_reference)
    llc = [by_gamma[g]["llc_ref"] for g in CHOICES]
    exact = [theory.linear_gaussian_llc(H, post.n, post.beta, g) for g in CHOICES]
    assert llc == pytest.approx(exact, rel=1e-9)
    assert llc[0] > llc[1] + 0.3 > llc[2] + 0.6  # three posteriors: 1.500, 1.165, 0.398


@pytest.mark.slow
def test_gamma_choices_with_real_hmc_references(linear, tmp_path, monkeypatch):
    """The same with NUTS (2 chains x 200 draws): each reference is its own γ's exact λ̂."""
    _, post, H = linear
    by_gamma = _gamma_study(tmp_path, monkeypatch, reference.compute_reference)
    for g, ref in by_gamma.items():
        exact = theory.linear_gaussian_llc(H, post.n, post.beta, g)
        assert abs(ref["llc_ref"] - exact) < 4 * ref["se_ref"], (g, ref["llc_ref"], exact)
