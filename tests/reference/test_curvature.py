"""Curvature at w* against dense Hessians, its stored file, the SGLD stability limit, and the
curvature record a reference job carries.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lambda_hat import methods
from lambda_hat.problem import theory
from lambda_hat.reference import curvature
from lambda_hat.reference.curvature import curvature_record, problem_curvature
from lambda_hat.study.resolved_space import study_space
from lambda_hat.trial.runner import run_method_trial


def dense_a(post) -> np.ndarray:
    """nβ·∇²L_n(w*) + γI, formed densely (tiny problems only)."""
    H = np.asarray(jax.hessian(post.loss)(post.w_star))
    return post.nbeta * H + post.gamma * np.eye(len(H))


def relocated(problem, tmp_path):
    """The same problem, its directory (and so its curvature store) under ``tmp_path``."""
    return dataclasses.replace(problem, path=tmp_path / problem.pid)


@pytest.fixture
def count_hvps(monkeypatch):
    """Counts every Hessian-vector product :func:`curvature.problem_curvature` performs."""
    calls = {"hvps": 0}
    real = curvature.lanczos_top

    def counting(matvec, *args, **kwargs):
        def counted(v):
            calls["hvps"] += 1
            return matvec(v)

        return real(counted, *args, **kwargs)

    monkeypatch.setattr(curvature, "lanczos_top", counting)
    return calls


def test_linear_matches_exact_top_eigenvalue(linear, tmp_path):
    problem, post, H = linear
    exact = np.linalg.eigvalsh(post.nbeta * H + post.gamma * np.eye(len(H)))[-1]
    c = curvature.problem_curvature(relocated(problem, tmp_path))
    assert c.converged
    assert abs(c.a_max - exact) <= 1e-6 * exact, (c.a_max, exact)
    assert c.eps_max_sgld == pytest.approx(4.0 / exact, rel=1e-6)
    assert c.h_max == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-6)
    assert (c.nbeta, c.gamma, c.d) == (post.nbeta, post.gamma, problem.d)


def test_tiny_mlp_matches_dense_hessian(tiny_mlp_problem, tmp_path):
    post = tiny_mlp_problem.posterior()
    exact = np.linalg.eigvalsh(dense_a(post))[-1]
    c = curvature.problem_curvature(relocated(tiny_mlp_problem, tmp_path))
    assert c.converged and abs(c.a_max - exact) <= 1e-6 * exact, (c.a_max, exact)
    # A basis of 3 vectors (d = 21) forces restarts; they converge to the same eigenvalue.
    small = curvature.top_eigenvalue(post, krylov_dim=3, max_iter=500)
    assert small.restarts > 0 and small.converged
    assert abs(small.value - exact) <= 1e-6 * exact, (small.value, exact)


def test_frozen_preconditioner_limit_is_on_sqrtP_A_sqrtP(linear_problem_2):
    post = linear_problem_2.posterior(gamma=0.5)
    p = np.random.default_rng(0).uniform(0.2, 3.0, post.d)
    exact = np.linalg.eigvalsh(np.sqrt(p)[:, None] * dense_a(post) * np.sqrt(p)[None, :])[-1]
    top = curvature.top_eigenvalue(post, precond=jnp.asarray(p))
    assert top.converged and abs(top.value - exact) <= 1e-6 * exact, (top.value, exact)
    assert top.value != pytest.approx(np.linalg.eigvalsh(dense_a(post))[-1], rel=1e-2)


def test_stored_result_is_reused_and_recomputed_when_corrupt(linear, tmp_path, count_hvps):
    problem = relocated(linear[0], tmp_path)
    first = curvature.problem_curvature(problem)
    spent = count_hvps["hvps"]
    assert spent == first.hvps > 0
    path = curvature.curvature_path(problem, first.settings)
    assert path.parent == tmp_path / problem.pid / "curvature" and path.name.startswith("c_")
    assert first.path == str(path) and path.is_file()

    again = curvature.problem_curvature(problem)
    assert count_hvps["hvps"] == spent  # read back: no HVPs
    assert again._replace(path="") == first._replace(path="")

    stored = json.loads(path.read_text())
    for corrupt in ("{ not json", json.dumps({**stored, "a_max": "big"}), ""):
        path.write_text(corrupt)
        before = count_hvps["hvps"]
        redone = curvature.problem_curvature(problem)
        assert count_hvps["hvps"] - before == first.hvps  # recomputed, same work
        assert redone.a_max == first.a_max
        assert json.loads(path.read_text())["a_max"] == first.a_max  # and stored again

    other = curvature.problem_curvature(problem, gamma=2.0)  # other settings, other file
    assert other.path != first.path
    assert other.a_max == pytest.approx(first.a_max + 1.0, rel=1e-9)


@pytest.mark.parametrize("factor, stable", [(0.5, True), (0.9, True), (1.1, False), (1.5, False)])
def test_full_batch_sgld_stability_limit(linear, tmp_path, factor, stable):
    """Known answer: full-batch SGLD is stable exactly below ε_max = 4/a_max."""
    problem, post, H = linear
    eps = factor * curvature.problem_curvature(relocated(problem, tmp_path)).eps_max_sgld
    hp = {"eta0": eps, "batch": problem.n, "precond_type": "none", "gamma": post.gamma}
    m = run_method_trial(
        problem, "sgld", {**hp, "steps": 4000, "eval_every": 4}, None, 0, artifacts=tmp_path
    )
    if stable:
        assert m["status"] == "ok", m["failure"]
        ula = theory.sgld_ula_llc(H, post.n, post.beta, post.gamma, eps)
        assert abs(m["llc_hat"] - ula) < 4 * m["se_hat"], (m["llc_hat"], ula, m["se_hat"])
    else:
        assert m["status"] == "failed" and m["failure"]["kind"] == "diverged", m["failure"]


def test_reference_job_record_carries_a_max_at_the_references_posterior(linear, tmp_path):
    problem, post, H = linear
    record = curvature_record(problem, post.beta, post.gamma)
    c = problem_curvature(problem, post.beta, post.gamma)
    assert record["a_max"] == c.a_max and record["d"] == problem.d
    assert record["eps_max_sgld"] == pytest.approx(4.0 / c.a_max)
    got = study_space(methods.search_space("sgld"), "sgld", {"curvature": record})
    assert got.space["eta0"].high == pytest.approx(4.0 / c.a_max)
