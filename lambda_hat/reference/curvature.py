"""The posterior's curvature at w*: the top eigenvalue of A = nβ·∇²L_n(w*) + γI, and step limits.

A is the precision of the localized posterior's quadratic approximation at w*, and its top
eigenvalue a_max sets every sampler's smallest scale: full-batch Langevin
Δw = −(ε/2)∇U + √ε ξ contracts the stiffest direction by |1 − ε·a_max/2| per step, so it is
stable only for ε < 4/a_max (:func:`lambda_hat.methods.stability.langevin_step_limit`). With a frozen diagonal
preconditioner P the limit is on the top eigenvalue of P^{1/2} A P^{1/2} (``precond=``).
``plans/curvature.md`` derives these and what holds for Adam-SGLD and MCLMC.

a_max is found by Lanczos on Hessian-vector products (forward-over-reverse, ``jax.jvp`` of
``jax.grad`` of the problem's own L_n): the Hessian is never formed, memory is ``krylov_dim``
vectors of length d, and each iteration costs one HVP (≈ 2–3 gradients). Lanczos, not power
iteration: it converges much faster when the top eigenvalues are close, and it finds the
largest *algebraic* eigenvalue even where A has negative ones (w* not an exact minimum), where
power iteration would find the largest in magnitude. The basis is fully reorthogonalized and,
when ``krylov_dim`` vectors are used up, restarted from the current top Ritz vector.

Stopping rule: the Ritz residual ‖Av − θv‖ ≤ tol·|θ|. Some eigenvalue of A then lies within
tol·|θ| of θ, and θ ≤ a_max always (θ is a Rayleigh quotient); from a random start that
eigenvalue is the top one (a start orthogonal to the top eigenvector has probability 0).

:func:`problem_curvature` stores the result with the problem, content-addressed:
``<problem dir>/curvature/c_<sha256(settings)[:12]>.json``, settings = (schema, β, γ,
method, tol, max_iter, krylov_dim, seed); computed once, reused, recomputed when the file is
missing, corrupt or for other settings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.hashing import content_hash
from lambda_hat.llc.posterior import LLCPosterior
from lambda_hat.methods.stability import langevin_step_limit
from lambda_hat.problem.build import Problem

__all__ = [
    "CURVATURE_SCHEMA",
    "TopEigen",
    "Curvature",
    "hvp_operator",
    "lanczos_top",
    "top_eigenvalue",
    "curvature_settings",
    "curvature_path",
    "problem_curvature",
    "curvature_record",
    "stored_curvature_record",
]

log = logging.getLogger("lambda_hat.curvature")

CURVATURE_SCHEMA = 1
_RITZ_KEPT = 5  # top Ritz values stored (the gap below a_max, for the record)


class TopEigen(NamedTuple):
    """The largest eigenvalue of a symmetric operator, as Lanczos found it.

    value: the top Ritz value θ (≤ the true top eigenvalue).
    vector: (d,) its unit Ritz vector.
    residual: ‖Av − θv‖ (an eigenvalue lies within it of θ).
    converged: residual ≤ tol·|θ| within ``max_iter`` products.
    hvps: operator applications spent (one per Lanczos iteration).
    restarts: times the Krylov basis was full and restarted from the top Ritz vector.
    ritz: the top Ritz values of the last basis, largest first.
    """

    value: float
    vector: jax.Array
    residual: float
    converged: bool
    hvps: int
    restarts: int
    ritz: list[float]


class Curvature(NamedTuple):
    """Curvature of a problem's posterior at w* and the step limit it implies (stored as JSON).

    a_max: top eigenvalue of A = nβ·∇²L_n(w*) + γI.
    h_max: (a_max − γ)/nβ, the top eigenvalue of the loss Hessian ∇²L_n(w*).
    eps_max_sgld: 4/a_max, full-batch Langevin's stability limit on ε (SGLD's ``eta0``), P = I
        (the stored field's name).
    """

    pid: str
    d: int
    n: int
    beta: float
    gamma: float
    nbeta: float
    a_max: float
    h_max: float
    eps_max_sgld: float
    residual: float
    converged: bool
    hvps: int
    restarts: int
    ritz: list[float]
    seconds: dict  # {"compile": tracing and compiling the HVP, "run": the Lanczos iterations}
    settings: dict  # what the content address hashes
    path: str


def hvp_operator(
    posterior: LLCPosterior, precond: jax.Array | None = None
) -> Callable[[jax.Array], jax.Array]:
    """``v ↦ P^{1/2} A P^{1/2} v``, A = nβ·∇²L_n(w*) + γI, compiled here (P = I without ``precond``).

    The Hessian-vector product differentiates ``posterior.loss`` (the problem's one L_n)
    forward-over-reverse; ``precond`` is the diagonal of P, shape (d,), positive.
    """
    grad = jax.grad(posterior.loss)
    w_star, nbeta, gamma = posterior.w_star, posterior.nbeta, posterior.gamma
    root = None if precond is None else jnp.sqrt(jnp.asarray(precond, w_star.dtype))

    def apply_a(w, v):
        return nbeta * jax.jvp(grad, (w,), (v,))[1] + gamma * v

    def matvec(w, v):
        return apply_a(w, v) if root is None else root * apply_a(w, root * v)

    # w* is an argument, not a constant: with both w* and the data embedded, XLA constant-folds
    # the first layer (X·W₁, 20 s of compilation on mlp10k/large) for nothing.
    compiled = jax.jit(matvec).lower(w_star, w_star).compile()
    return lambda v: compiled(w_star, v)


@jax.jit
def _orthogonalize(basis: jax.Array, w: jax.Array, j: jax.Array):
    """One Lanczos step after w = A·basis[j]: α = basis[j]·w, then w made orthogonal to
    basis[:j+1] (classical Gram–Schmidt, twice), β = ‖w‖, basis[j+1] = w/β."""
    alpha = basis[j] @ w
    mask = (jnp.arange(basis.shape[0]) <= j).astype(w.dtype)
    for _ in range(2):
        w = w - basis.T @ (mask * (basis @ w))
    beta = jnp.linalg.norm(w)
    basis = basis.at[j + 1].set(w / jnp.where(beta > 0, beta, 1.0))
    return basis, alpha, beta


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the Lanczos tridiagonal matrix."""
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    return np.linalg.eigh(T)


def lanczos_top(
    matvec: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    tol: float = 1e-6,
    max_iter: int = 300,
    krylov_dim: int = 40,
) -> TopEigen:
    """Largest eigenvalue of the symmetric operator ``matvec`` by restarted Lanczos from ``start``.

    Stops when the residual ‖Av − θv‖ ≤ ``tol``·|θ| or after ``max_iter`` products
    (``converged`` False). Holds ``krylov_dim + 1`` vectors; a full basis restarts from the
    top Ritz vector. ``matvec`` is called exactly ``hvps`` times.
    """
    if not tol > 0 or max_iter < 1 or krylov_dim < 1:
        raise ValueError(
            f"need tol > 0, max_iter >= 1, krylov_dim >= 1; got {tol}, {max_iter}, {krylov_dim}"
        )
    d = int(start.shape[0])
    m = min(krylov_dim, d)
    v = start / jnp.linalg.norm(start)
    hvps = restarts = 0
    while True:
        basis = jnp.zeros((m + 1, d), v.dtype).at[0].set(v)
        alphas: list[float] = []
        betas: list[float] = []
        for j in range(m):
            basis, alpha, beta = _orthogonalize(basis, matvec(basis[j]), jnp.asarray(j))
            hvps += 1
            alphas.append(float(alpha))
            betas.append(float(beta))
            theta, s = _ritz(alphas, betas)
            residual = float(abs(betas[-1] * s[-1, -1]))
            done = bool(residual <= tol * abs(theta[-1]) or betas[-1] == 0.0)
            if done or hvps >= max_iter:
                vector = basis[: j + 1].T @ jnp.asarray(s[:, -1])
                ritz = [float(t) for t in theta[::-1][:_RITZ_KEPT]]
                return TopEigen(float(theta[-1]), vector, residual, done, hvps, restarts, ritz)
        v = basis[:m].T @ jnp.asarray(s[:, -1])
        v = v / jnp.linalg.norm(v)
        restarts += 1


def top_eigenvalue(
    posterior: LLCPosterior,
    precond: jax.Array | None = None,
    tol: float = 1e-6,
    max_iter: int = 300,
    krylov_dim: int = 40,
    seed: int = 0,
) -> TopEigen:
    """Top eigenvalue of P^{1/2}(nβ·∇²L_n(w*) + γI)P^{1/2} (P = I without ``precond``).

    Lanczos (:func:`lanczos_top`) from a Gaussian start drawn with ``seed``; not stored.
    """
    start = jax.random.normal(jax.random.PRNGKey(seed), posterior.w_star.shape)
    return lanczos_top(hvp_operator(posterior, precond), start, tol, max_iter, krylov_dim)


def curvature_settings(
    posterior: LLCPosterior, tol: float, max_iter: int, krylov_dim: int, seed: int
) -> dict:
    """Everything that determines a stored curvature result (the content address hashes it)."""
    return {
        "schema": CURVATURE_SCHEMA,
        "beta": float(posterior.beta),
        "gamma": float(posterior.gamma),
        "method": "lanczos",
        "tol": float(tol),
        "max_iter": int(max_iter),
        "krylov_dim": int(krylov_dim),
        "seed": int(seed),
    }


def curvature_path(problem: Problem, settings: dict) -> Path:
    """``<problem dir>/curvature/c_<hash of settings>.json``."""
    name = f"{content_hash(settings, layout.CURVATURE_PREFIX)}.json"
    return Path(problem.path) / layout.CURVATURE / name


def _load(path: Path, settings: dict) -> Curvature | None:
    """The stored result at ``path`` if it is whole and was made with ``settings``."""
    info = read_json(path)
    if info is None or info.get("settings") != settings:
        return None
    try:
        stored = Curvature(**{k: info[k] for k in Curvature._fields})
    except (KeyError, TypeError):
        return None
    numbers = (stored.a_max, stored.h_max, stored.eps_max_sgld, stored.residual)
    if not all(isinstance(x, float) and math.isfinite(x) for x in numbers) or stored.a_max <= 0:
        return None
    return stored._replace(path=str(path))


def problem_curvature(
    problem: Problem,
    beta: float | None = None,
    gamma: float = 1.0,
    tol: float = 1e-6,
    max_iter: int = 300,
    krylov_dim: int = 40,
    seed: int = 0,
) -> Curvature:
    """The curvature of ``problem``'s posterior at (β, γ), computed once and stored with it.

    β = 1/log n when None (as :meth:`Problem.posterior`). Reads
    ``<problem dir>/curvature/<hash>.json`` when it is valid for these settings; otherwise
    runs :func:`top_eigenvalue` and writes that file atomically. Raises ValueError when the
    top eigenvalue is not positive (no stability limit exists).
    """
    post = problem.posterior(beta, gamma)
    settings = curvature_settings(post, tol, max_iter, krylov_dim, seed)
    path = curvature_path(problem, settings)
    if (stored := _load(path, settings)) is not None:
        log.debug("curvature %s: reusing %s", problem.pid, path)
        return stored
    t0 = time.perf_counter()
    start = jax.random.normal(jax.random.PRNGKey(seed), post.w_star.shape)
    matvec = hvp_operator(post)
    t1 = time.perf_counter()
    top = lanczos_top(matvec, start, tol, max_iter, krylov_dim)
    t2 = time.perf_counter()
    result = Curvature(
        pid=problem.pid,
        d=post.d,
        n=post.n,
        beta=float(post.beta),
        gamma=float(post.gamma),
        nbeta=float(post.nbeta),
        a_max=top.value,
        h_max=(top.value - post.gamma) / post.nbeta,
        eps_max_sgld=langevin_step_limit(top.value),
        residual=top.residual,
        converged=top.converged,
        hvps=top.hvps,
        restarts=top.restarts,
        ritz=top.ritz,
        seconds={"compile": t1 - t0, "run": t2 - t1},
        settings=settings,
        path=str(path),
    )
    atomic_write_json(path, result._asdict())
    _log_computed(result, t2 - t0)
    return result


def _log_computed(c: Curvature, seconds: float) -> None:
    log.info(
        "curvature %s: a_max = %.6g (h_max %.6g, nβ %.6g, γ %g), 4/a_max = %.3g; %d HVPs, %.1fs%s",
        c.pid,
        c.a_max,
        c.h_max,
        c.nbeta,
        c.gamma,
        c.eps_max_sgld,
        c.hvps,
        seconds,
        "" if c.converged else f", NOT converged (residual {c.residual:.2e})",
    )


_RECORD = ("a_max", "h_max", "d", "n", "beta", "gamma", "eps_max_sgld", "converged", "path")


def stored_curvature_record(problem_path: str | Path, beta: float, gamma: float) -> dict | None:
    """The :func:`curvature_record` stored with the problem at (β, γ), read from its file
    (no JAX, nothing computed), or None when there is none."""
    for path in sorted((Path(problem_path) / layout.CURVATURE).glob(layout.CURVATURE_GLOB)):
        info = read_json(path) or {}
        settings = info.get("settings") or {}
        if not (
            math.isclose(settings.get("beta", -1.0), beta)
            and math.isclose(settings.get("gamma", -1.0), gamma)
        ):
            continue
        if (stored := _load(path, settings)) is not None:
            return {k: getattr(stored, k) for k in _RECORD}
    return None


def curvature_record(problem: Problem, beta: float, gamma: float) -> dict:
    """a_max of nβ·∇²L_n(w*) + γI at the reference's β, γ, as plain numbers for the driver (it
    resolves the ``scale: stability`` ranges with them and loads no arrays); ``{"error": ..}``
    when it could not be computed (the reference itself stands: scaled ranges then search
    their absolute fallback)."""
    try:
        c = problem_curvature(problem, beta, gamma)
    except Exception as exc:  # an optional extra: never lose the reference over it
        log.warning("curvature %s: not computed (%s: %s)", problem.pid, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {k: getattr(c, k) for k in _RECORD}
