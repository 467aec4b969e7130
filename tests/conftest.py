"""Shared fixtures: tiny problems built under a per-session temporary artifacts directory."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lambda_hat.config import resolve_problem
from lambda_hat.problems import build_problem


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def linear_problem(artifacts):
    """Linear regression 3 -> 1, n = 200: L_n is exactly quadratic."""
    return build_problem(
        resolve_problem({"model": "linear", "data": "small", "seed": 0}), artifacts
    )


@pytest.fixture(scope="session")
def linear_problem_2(artifacts):
    """A different linear problem: 5 -> 2 (d = 10), n = 400, noise 0.3, uniform inputs."""
    spec = resolve_problem(
        {
            "model": "linear",
            "data": "small",
            "seed": 3,
            "overrides": {
                "data": {
                    "input_dim": 5,
                    "output_dim": 2,
                    "n": 400,
                    "noise": 0.3,
                    "x_dist": "uniform",
                }
            },
        }
    )
    return build_problem(spec, artifacts)


@pytest.fixture(scope="session")
def tiny_mlp_problem(artifacts):
    """A 3-4-1 tanh MLP on 200 samples (d = 21)."""
    return build_problem(resolve_problem({"model": "tiny", "data": "small", "seed": 1}), artifacts)


@pytest.fixture(scope="session")
def linear(linear_problem):
    """(problem, its posterior at the default β and γ, the exact Hessian of L_n at w*)."""
    post = linear_problem.posterior()
    H = np.asarray(jax.hessian(post.loss)(linear_problem.w_star))
    return linear_problem, post, H
