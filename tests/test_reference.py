"""HMC references against closed forms, caching, budgets and the quality gate."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lambda_hat import theory
from lambda_hat.cli import main
from lambda_hat.config import ReferenceConfig
from lambda_hat.reference import ensure_reference, ref_path

FAST = ReferenceConfig(chains=4, draws=1500, warmup=300, chunk=500, gamma=1.0)


def exact_llc(problem, cfg):
    """½ Σ nβh/(nβh+γ) from the problem's own data (general form if w* is not exact)."""
    post = problem.posterior(cfg.beta, cfg.gamma)
    H = np.asarray(jax.hessian(post.loss)(post.w_star))
    g = np.asarray(jax.grad(post.loss)(post.w_star))
    return theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma, grad=g)


@pytest.mark.parametrize("fixture", ["linear_problem", "linear_problem_2"])
def test_hmc_reference_matches_closed_form(fixture, request):
    problem = request.getfixturevalue(fixture)
    cfg = dataclasses.replace(FAST, gamma=5.0 if fixture == "linear_problem_2" else 1.0)
    ref = ensure_reference(problem, cfg, force=True)
    expected = exact_llc(problem, cfg)
    assert abs(ref["llc_ref"] - expected) < 3 * ref["se_ref"], (ref["llc_ref"], expected)
    assert ref["se_ref"] < 0.05 * expected  # the check has teeth
    assert ref["gate"]["passed"] and ref["rhat"] < 1.01
    assert ref["draws_per_chain"] == cfg.draws and not ref["stopped_early"]
    assert ref["grad_evals"]["warmup"] > 0 and ref["grad_evals"]["sampling"] > 0
    assert ref["llc_theory"] == problem.d / 2


def test_reference_is_cached_and_corruption_is_recomputed(linear_problem):
    cfg = dataclasses.replace(FAST, draws=300, seed=7)
    first = ensure_reference(linear_problem, cfg)
    again = ensure_reference(linear_problem, cfg)
    assert again["seconds"] == first["seconds"]  # reused, not recomputed
    path = ref_path(linear_problem)
    path.write_text(path.read_text()[:100])  # a torn file
    redone = ensure_reference(linear_problem, cfg)
    assert redone["seconds"] != first["seconds"]
    assert json.loads(path.read_text())["llc_ref"] == redone["llc_ref"]
    changed = ensure_reference(linear_problem, dataclasses.replace(cfg, gamma=3.0))
    assert changed["gamma"] == 3.0 and changed["seconds"] != redone["seconds"]


def test_budget_stops_early_and_keeps_draws(linear_problem):
    cfg = dataclasses.replace(FAST, draws=200_000, chunk=200, budget_sec=1e-3, seed=11)
    ref = ensure_reference(linear_problem, cfg, force=True)
    assert ref["stopped_early"]
    assert 0 < ref["draws_per_chain"] < cfg.draws
    assert np.isfinite(ref["llc_ref"])


def test_failed_gate_is_marked(linear_problem):
    cfg = dataclasses.replace(FAST, draws=100, ess_min=1e9, seed=13)
    ref = ensure_reference(linear_problem, cfg, force=True)
    assert not ref["gate"]["passed"]
    assert any("ESS" in r for r in ref["gate"]["reasons"])


def test_reference_cli_prints_table(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "problems: [{model: linear, data: small, seed: 0}]\n"
        "reference: {chains: 2, draws: 400, warmup: 200, ess_min: 100}\n"
        f"paths: {{artifacts: {tmp_path / 'art'}}}\n"
    )
    assert main(["reference", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "p_" in out and "dln 3-1" in out and "1.5" in out


def test_reference_cli_bad_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("problems: [{model: linear}]\nreference: {chians: 2}\n")
    assert main(["reference", "--config", str(cfg)]) == 2
    assert "reference.chians" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()
