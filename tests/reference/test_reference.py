"""HMC references against closed forms, caching, budgets, the quality gate and
``lambda-hat reference``.
"""

import dataclasses
import itertools
import json

import jax
import numpy as np
import pytest

from lambda_hat.cli import main
from lambda_hat.layout import REF_STATE as STATE_FILE
from lambda_hat.llc import engine
from lambda_hat.problem import theory
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.reference.store import evaluate_gate, ref_path

FAST = ReferenceConfig(chains=4, draws=1500, warmup=300, chunk=500, gamma=1.0)
# Budgeted references (chunked warm-up: 100 steps in chunks of 16; 4 sampling chunks of 100).
SMALL = ReferenceConfig(chains=2, draws=400, warmup=100, chunk=100, seed=21)


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


def test_tiny_budget_stops_in_warmup_is_marked_then_extended(linear_problem):
    """A budget spent during warm-up: no draws, gate failed, state saved; the same budget
    again reuses it; no budget extends it to the bits of an uninterrupted budgeted run."""
    tiny = dataclasses.replace(SMALL, budget_sec=1e-3)
    ref = ensure_reference(linear_problem, tiny, force=True)
    assert ref["stopped_early"] and ref["stopped_in"] == "warmup"
    assert ref["warmup_done"] == 16 and ref["draws_per_chain"] == 0  # the first chunk only
    assert ref["llc_ref"] is None and not ref["gate"]["passed"]
    assert ref["gate"]["reasons"] == [
        "no draws: the budget stopped it (warmup, warm-up step 16 of 100)"
    ]
    stored = json.loads(ref_path(linear_problem).read_text())
    assert stored["stopped_in"] == "warmup" and not stored["gate"]["passed"]
    assert (linear_problem.path / STATE_FILE).exists()
    again = ensure_reference(linear_problem, tiny)
    assert again["seconds"] == ref["seconds"] and again["sessions"] == 1  # reused as is
    extended = ensure_reference(linear_problem, dataclasses.replace(SMALL, budget_sec=None))
    assert extended["sessions"] == 2 and not extended["stopped_early"]
    assert extended["draws_per_chain"] == SMALL.draws and extended["gate"]["passed"]
    assert extended["seconds"]["total"] > ref["seconds"]["total"]
    assert not (linear_problem.path / STATE_FILE).exists()
    whole = ensure_reference(linear_problem, dataclasses.replace(SMALL, budget_sec=1e6), True)
    assert whole["sessions"] == 1 and whole["warmup_done"] == SMALL.warmup
    assert extended["llc_ref"] == whole["llc_ref"] and extended["rhat"] == whole["rhat"]
    assert extended["grad_evals"] == whole["grad_evals"]


def test_budget_stop_in_sampling_keeps_draws_and_is_extended(linear_problem, monkeypatch):
    """With a clock that ticks one second per reading, a budget stops the reference between
    sampling chunks; a larger budget continues it to the draws of an uninterrupted run."""
    ticks = itertools.count()
    monkeypatch.setattr(engine, "clock", lambda: float(next(ticks)))
    cfg = dataclasses.replace(SMALL, seed=22)
    for budget in range(20, 400, 4):  # the smallest budget that stops during sampling
        cut = ensure_reference(linear_problem, dataclasses.replace(cfg, budget_sec=budget), True)
        if cut["draws_per_chain"] > 0:
            break
    assert cut["stopped_in"] == "sampling", cut["stopped_in"]
    assert 0 < cut["draws_per_chain"] < cfg.draws and cut["draws_per_chain"] % cfg.chunk == 0
    assert np.isfinite(cut["llc_ref"]) and cut["stopped_early"]
    more = ensure_reference(linear_problem, dataclasses.replace(cfg, budget_sec=10 * budget))
    assert more["sessions"] == 2 and more["draws_per_chain"] == cfg.draws
    whole = ensure_reference(linear_problem, dataclasses.replace(cfg, budget_sec=1e9), True)
    assert more["llc_ref"] == whole["llc_ref"] and more["ess_bulk"] == whole["ess_bulk"]
    with np.load(linear_problem.path / "ref_trace.npz") as z:
        assert z["loss"].shape == (cfg.chains, cfg.draws)


def test_divergence_gate():
    """124 divergent of 4 x 2,000 draws (the tiny MLP's reference at target_accept 0.8) fail
    the default 1 % gate and pass a 2 % one; the reason names the numbers."""
    ref = {"chains": 4, "draws_per_chain": 2000, "rhat": 1.004, "ess_bulk": 1497.0}
    cfg = ReferenceConfig()
    gate = evaluate_gate({**ref, "divergences": 124}, cfg)
    assert not gate["passed"] and gate["max_divergence_frac"] == 0.01
    assert gate["reasons"] == ["divergences 124/8000 = 1.55% > 1.00%"]
    assert evaluate_gate({**ref, "divergences": 80}, cfg)["passed"]  # exactly 1 %
    assert evaluate_gate(
        {**ref, "divergences": 124}, dataclasses.replace(cfg, max_divergence_frac=0.02)
    )["passed"]


def test_divergent_reference_fails_its_gate(linear_problem):
    """A real reference with divergences forced by a step size adapted to 5 % acceptance."""
    cfg = dataclasses.replace(SMALL, target_accept=0.05, rhat_max=10.0, ess_min=0.0, seed=23)
    ref = ensure_reference(linear_problem, cfg, force=True)
    frac = ref["divergences"] / (cfg.chains * ref["draws_per_chain"])
    assert frac > cfg.max_divergence_frac, ref["divergences"]
    assert [r for r in ref["gate"]["reasons"] if r.startswith("divergences")] == [
        f"divergences {ref['divergences']}/{cfg.chains * cfg.draws} = {frac:.2%} > 1.00%"
    ]
    assert sum(ref["divergences_per_chain"]) == ref["divergences"]


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
    assert "0 (0.0%)" in out  # divergent draws and their fraction
    # a run YAML of the same problem and reference: the same table, read from the store
    runs = tmp_path / "runs.yaml"
    runs.write_text(cfg.read_text() + "methods: {sgld: [{}]}\nseeds: [0]\n")
    assert main(["reference", "--config", str(runs)]) == 0
    assert capsys.readouterr().out == out


def test_reference_cli_bad_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("problems: [{model: linear}]\nreference: {chians: 2}\n")
    assert main(["reference", "--config", str(cfg)]) == 2
    assert "reference.chians" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()
