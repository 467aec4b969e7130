"""Variational LLC through the runner: a Gaussian family is exact on a linear-Gaussian problem;
a fit still climbing is a learned failure; a fit keeps its budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from lambda_hat.methods.vi import _unconverged, elbo_trend
from lambda_hat.problem import theory
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import validate
from lambda_hat.trial.runner import run_method_trial


def test_gaussian_vi_reproduces_exact_llc_by_maximizing_the_elbo(linear, tmp_path):
    problem, post, H = linear
    hp = {"M": 1, "r": 3, "steps": 2000, "batch_size": 256, "eval_samples": 1024}
    m = run_method_trial(problem, "vi", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert abs(m["llc_hat"] - exact) < 4 * m["se_hat"], (m["llc_hat"], exact, m["se_hat"])
    assert m["se_hat"] < 0.03 * exact  # enough draws from q that the SE is small
    with np.load(f"{m['run_dir']}/trace.npz") as z:
        elbo = z["elbo"]
    assert elbo.shape == (4, 2000)
    # the ELBO's maximum over Gaussians is the log normalizer of the (Gaussian) posterior
    log_z = -post.nbeta * post.loss_star + 1.5 * np.log(2 * np.pi)
    log_z -= 0.5 * np.linalg.slogdet(post.nbeta * H + post.gamma * np.eye(3))[1]
    assert elbo[:, -100:].mean() == pytest.approx(log_z, abs=1e-4)  # reached it
    assert elbo[:, -100:].std() < 1e-3  # and settled (sticking-the-landing gradients)
    assert log_z - elbo[:, :20].mean() < 0.05  # it started close: at the curvature estimate
    assert not m["diagnostics"]["elbo_moving"]
    assert abs(m["diagnostics"]["elbo_gain"]) < 1e-3
    # 4 fits x 2000 full-batch steps; whitening once: 200 gradients of 256 rows (drawn with
    # replacement) of n = 200; evaluation: 4 x 1024 full-data L_n passes; the drift check:
    # 4 x 32 draws x (200 MALA steps + 1), and q is the posterior, so MALA leaves λ̂ in place
    assert m["work"]["fge"] == pytest.approx(4 * 2000 + 200 * 256 / 200 + 4 * 1024 + 4 * 32 * 201)
    assert abs(m["diagnostics"]["llc_relaxed"] / m["llc_hat"] - 1) < 0.1


def test_defaults_are_within_5_percent_on_the_linear_problem(linear, tmp_path):
    """Measured: 1.559 ± 0.040 against 1.4996 (+4.0 %; Lanczos coordinates, importance ESS
    0.998 of the draws); diagonal coordinates 1.529 ± 0.040; before issue 9: 1.546 ± 0.042."""
    problem, post, H = linear
    m = run_method_trial(problem, "vi", {}, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert abs(m["llc_hat"] / exact - 1) < 0.05, m["llc_hat"]
    assert abs(m["llc_hat"] - exact) < 4 * m["se_hat"]
    dg = m["diagnostics"]
    assert m["se_hat"] >= dg["se_between_fits"] and m["se_hat"] >= dg["se_mc"]
    assert dg["is_ess_frac"] > 0.9  # q is the (Gaussian) posterior: the weights are flat


def test_the_fit_starts_from_the_curvature_whatever_the_whitening(linear, tmp_path):
    """Isotropic whitening (a = nβ + γ) is ~10x too wide here; the fit used to start at unit
    sd in those units, and a small lr left it there (searched settings read 143-175). Now
    each component starts at the curvature estimate's sd: 1.581 with lr 1e-4."""
    problem, post, H = linear
    hp = {"whitening_mode": "none", "lr": 1e-4}
    m = run_method_trial(problem, "vi", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert abs(m["llc_hat"] / exact - 1) < 0.1, m["llc_hat"]


def test_a_fit_still_climbing_is_a_learned_failure(linear_problem, tmp_path):
    """Means started 10 sd away with a short fit: the ELBO rose 4.9 ± 0.8 nats between the
    third and last quarter, λ̂ read 31.8 ± 22.8 (exact 1.50)."""
    hp = {"steps": 300, "init_spread": 10.0, "lr": 3e-2}
    m = run_method_trial(linear_problem, "vi", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "failed"
    f, dg = m["failure"], m["diagnostics"]
    assert f["kind"] == "diverged" and f["check"] == "elbo_trend", f
    assert dg["elbo_moving"] and dg["elbo_gain"] > 4 * dg["elbo_gain_se"]
    assert m["llc_hat"] is not None and m["fraction_done"] == 1.0
    assert abs(m["llc_hat"] - 1.4996) < 3 * m["se_hat"]  # the SE covers the spread of fits


def test_elbo_trend_rule():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, (4, 2000))
    flat = elbo_trend(noise, d=3)
    assert not flat["elbo_moving"] and abs(flat["elbo_gain"]) < 4 * flat["elbo_gain_se"]
    # a ramp of slope s per step: the last quarter's mean is s·T/4 above the third's
    ramp = noise + 0.002 * np.arange(2000)
    moving = elbo_trend(ramp, d=3)
    assert moving["elbo_gain"] == pytest.approx(flat["elbo_gain"] + 0.002 * 500)
    assert moving["elbo_moving"]
    # many SEs above 0 but below d·ε²/4 nats (ε = 5 %): converged for λ̂'s purposes
    tiny = elbo_trend(1e-4 * noise + 2e-6 * np.arange(2000), d=3)
    assert tiny["elbo_gain"] > 10 * tiny["elbo_gain_se"] and not tiny["elbo_moving"]
    assert elbo_trend(noise[:, :50], d=3)["elbo_gain"] is None  # too short to judge
    # cut short by the budget it is a timeout (machine-dependent), else a reusable failure
    assert _unconverged(moving, 150, 300, early=True)["kind"] == "timeout"
    assert _unconverged(moving, 300, 300, early=False)["check"] == "elbo_trend"


def test_a_fit_keeps_its_budget(linear_problem, tmp_path):
    """Chunks of capacity/8 steps, none started past the deadline at the rate so far; a fit
    cut short before half its steps is a timeout with its fraction done (issue 10: with
    ``method_budget_sec: 20`` every VI trial ran into the 30 s hard limit)."""
    budget = 2.0
    hp = {"steps": 200_000}
    m = run_method_trial(linear_problem, "vi", hp, budget, 0, artifacts=tmp_path)
    assert m["stopped_early"] and m["status"] == "failed", m["failure"]
    assert m["failure"]["kind"] == "timeout" and 0 < m["fraction_done"] < 0.5
    s = m["seconds"]
    assert s["total"] - s["compile"] < 1.5 * budget, s  # compiling is not the fit's to cut
    assert m["llc_hat"] is not None


@pytest.mark.slow  # an HMC reference (~4 min on 2 shared cores) and a 5000-step VI fit
def test_defaults_on_the_small_mlp_are_close_or_flagged(artifacts, tmp_path):
    """Small MLP (d = 92), HMC 4 x 2000 draws: 19.09 ± 0.05. The 15 % target is NOT met
    (plans/vi.md): in diagonal coordinates default VI read 48.1 (a mean-field-like fit that
    never rotated into the curvature basis; ELBO −141.8); in the Lanczos eigenbasis it reads
    35.0 (ELBO −88.9, 53 nats higher), and the ELBO-optimal Gaussian-like q is ~32. At γ = 1
    the posterior spreads over the localization ball through several modes, which no q fitted
    from w* reaches (an 8-layer flow: ELBO +68 nats, λ̂ 31.5; bench/vi_small_mlp.py). The run
    says so: its ELBO was still rising (``elbo_trend``) and its importance ESS is a few draws."""
    problem = build_problem(
        resolve_problem({"model": "small", "data": "small", "seed": 5}), artifacts
    )
    cfg = validate({"chains": 4, "draws": 2000, "warmup": 500}, ReferenceConfig, "reference")
    ref = ensure_reference(problem, cfg)
    m = run_method_trial(problem, "vi", {}, None, 0, ref=ref, artifacts=tmp_path)
    close = m["status"] == "ok" and abs(m["llc_hat"] / ref["llc_ref"] - 1) < 0.15
    flagged = m["status"] == "failed" and m["failure"].get("check") == "elbo_trend"
    assert close or flagged, (m["llc_hat"], ref["llc_ref"], m["failure"])
    assert m["llc_hat"] < 40  # the eigenbasis (diagonal coordinates: 48.1)
    assert close or m["diagnostics"]["is_ess_frac"] < 0.02  # and q is visibly far from p
