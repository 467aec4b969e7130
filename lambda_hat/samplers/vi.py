"""Variational LLC: a mixture of factor analyzers fitted by *maximizing* the ELBO.

    q(w) = Σ_m π_m N(w; w* + μ_m/√a, diag(1/√a)(D_m + U_m U_mᵀ)diag(1/√a)),

with M components, factor loadings U_m of rank r and diagonal D_m, written in whitened
coordinates z = √a ⊙ (w − w*). The ELBO of the localized posterior,

    ELBO(q) = E_q[ −nβ L_B(w) − (γ/2)‖w − w*‖² ] + H[q],

is estimated with reparameterized draws from every component, weighted by π (so the mixture
weights get exact gradients), and a minibatch L_B. Adam *descends −ELBO*, i.e. climbs the ELBO
(the public prototype descended the ELBO itself and reported λ̂ ≈ 6.6e13).
λ̂ = nβ(E_q[L_n] − L_n(w*)) uses independent draws from the fitted q and full-data L_n.

The coordinates z (:class:`Whitening`, w = w* + Q diag(scale) z) make the family well
conditioned:

- ``lanczos`` (the default): Q's first m columns are the top Ritz directions of
  A = nβ∇²L_n(w*) + γI (Lanczos on Hessian-vector products), scale θ^{-1/2} there: the Laplace
  approximation N(w*, A⁻¹) is N(0, I) in z and every component's diagonal is diagonal in the
  curvature basis (plans/vi.md: in diagonal coordinates the small MLP's fit stayed
  mean-field-like, λ̂ 48 against HMC's 19; here 35).
- ``none``: Q = I, scale (nβ + γ)^{-1/2} (isotropic, as if L_n had unit curvature).
- ``rmsprop``: Q = I, scale a^{-1/2}, a = nβ·B·v + γ with v the EMA of squared minibatch
  loss gradients at w* (no bias correction). With rows drawn with replacement, B·Var(∇L_B)
  is the per-sample Fisher, which equals the Hessian of L_n for a well-specified Gaussian model.
- ``adam``: as rmsprop with bias-corrected moments and the squared mean removed (a variance,
  robust to a w* that is not exactly a minimum).

Whatever the mode, one pass of minibatch gradients at w* also gives the curvature estimate â
(``adam``'s a), and every component starts at w* with per-coordinate sd √(a/â) in the
diagonal modes, 1 for ``lanczos`` (:func:`whitening_and_curvature`, :func:`init_params`).

A Gaussian family (M = 1, r large enough) contains the exact posterior of a linear-Gaussian
model, so the estimate is exact there up to Monte Carlo and optimization error.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lambda_hat.llc.posterior import LLCPosterior, draw_rows, minibatch_indices

__all__ = [
    "MFAParams",
    "VIState",
    "VIInfo",
    "Whitening",
    "to_weights",
    "log_det",
    "lanczos_eigenpairs",
    "whitening_and_curvature",
    "init_params",
    "component_logpdf",
    "log_q",
    "sample",
    "build_optimizer",
    "init",
    "build_step",
    "build_eval",
]


class MFAParams(NamedTuple):
    """Mixture of factor analyzers in whitened coordinates."""

    logits: jax.Array  # (M,) mixture weights π = softmax(logits)
    mu: jax.Array  # (M, d) component means
    log_sd: jax.Array  # (M, d) log √D_m
    U: jax.Array  # (M, d, r) factor loadings


class VIState(NamedTuple):
    params: MFAParams
    opt_state: optax.OptState


class VIInfo(NamedTuple):
    """Per-step record: the ELBO estimate at the step's parameters (minibatch, MC)."""

    elbo: jax.Array


def _gradient_moments(posterior: LLCPosterior, key, batch: int, steps: int, decay):
    """EMA first and second moments of ``steps`` minibatch loss gradients at w*."""
    grad = jax.grad(posterior.batch_loss)
    w_star = posterior.w_star

    def body(carry, k):
        m, v = carry
        g = grad(w_star, draw_rows(k, posterior.n, batch))
        return (decay * m + (1 - decay) * g, decay * v + (1 - decay) * g**2), None

    zeros = jnp.zeros_like(w_star)
    (m, v), _ = jax.lax.scan(body, (zeros, zeros), jax.random.split(key, steps))
    return m, v


def _variance_precision(posterior: LLCPosterior, m, v, batch: int, steps: int, decay):
    """nβ·B·Var(∇L_B) + γ from bias-corrected moments (the ``adam`` estimate)."""
    corr = 1 - decay**steps
    var = jnp.maximum(v / corr - (m / corr) ** 2, 0.0)
    return posterior.nbeta * batch * var + posterior.gamma


class Whitening(NamedTuple):
    """The fixed linear map w = w* + Q diag(scale) z, Q = I − Y T Yᵀ orthogonal (compact WY
    form of m Householder reflectors; m = 0 and Q = I for the diagonal modes). For ``lanczos``
    Q's first m columns are the Ritz directions, so z's first m axes are curvature axes."""

    scale: jax.Array  # (d,)
    Y: jax.Array  # (d, m) Householder vectors
    T: jax.Array  # (m, m) upper triangular


def to_weights(wh: Whitening, z: jax.Array) -> jax.Array:
    """Q diag(scale) z (d,), the displacement w − w* of whitened ``z``, in O(d m)."""
    x = wh.scale * z
    if wh.Y.shape[1] == 0:
        return x
    return x - wh.Y @ (wh.T @ (wh.Y.T @ x))


def log_det(wh: Whitening) -> jax.Array:
    """log |det dw/dz| = Σ log scale (Q is orthogonal)."""
    return jnp.sum(jnp.log(wh.scale))


def _orthogonal_completion(V: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Y, T) with Q = I − Y T Yᵀ orthogonal and Q[:, :m] = ±V (V orthonormal, (d, m)): the
    Householder QR of V (Q = H_1⋯H_m, H_j = I − τ_j y_j y_jᵀ) and the triangular factor T of
    its reflectors (T_jj = τ_j, T[:j, j] = −τ_j T[:j, :j] Y[:, :j]ᵀ y_j), in O(d m²)."""
    d, m = V.shape
    rows = jnp.arange(d)

    def reflect(j, carry):
        R, Y, taus = carry
        x = jnp.where(rows >= j, R[:, j], 0.0)
        alpha = -jnp.where(x[j] >= 0, 1.0, -1.0) * jnp.linalg.norm(x)
        y = x.at[j].add(-alpha)
        tau = jnp.where(y @ y > 0, 2.0 / jnp.maximum(y @ y, 1e-300), 0.0)
        return R - tau * jnp.outer(y, y @ R), Y.at[:, j].set(y), taus.at[j].set(tau)

    init = (V, jnp.zeros_like(V), jnp.zeros((m,), V.dtype))
    _, Y, taus = jax.lax.fori_loop(0, m, reflect, init)

    def column(j, T):
        below = (jnp.arange(m) < j).astype(V.dtype)
        col = -taus[j] * (T @ (below * (Y.T @ Y[:, j])))
        return T.at[:, j].set(below * col).at[j, j].set(taus[j])

    return Y, jax.lax.fori_loop(0, m, column, jnp.zeros((m, m), V.dtype))


def lanczos_eigenpairs(
    matvec, key: jax.Array, d: int, m: int, dtype=jnp.float64
) -> tuple[jax.Array, jax.Array]:
    """(θ (m,), V (d, m)): Ritz pairs of the symmetric ``matvec`` from ``m`` Lanczos steps
    (vectors in ``dtype``, the posterior's).

    Fully reorthogonalized (classical Gram–Schmidt twice); on breakdown (the Krylov space is
    invariant, e.g. A = γI + low rank) it continues from a fresh random direction, so V is
    always an orthonormal basis of m dimensions. Traceable (``fori_loop``): m ≤ d products.
    """
    k_start, k_fresh = jax.random.split(key)
    start = jax.random.normal(k_start, (d,), dtype)
    basis = jnp.zeros((m + 1, d), dtype).at[0].set(start / jnp.linalg.norm(start))

    def orthogonalize(basis, w, mask):
        for _ in range(2):
            w = w - basis.T @ (mask * (basis @ w))
        return w

    def body(j, carry):
        basis, alphas, betas = carry
        w = matvec(basis[j])
        alpha = basis[j] @ w
        mask = (jnp.arange(m + 1) <= j).astype(w.dtype)
        r = orthogonalize(basis, w, mask)
        beta = jnp.linalg.norm(r)
        fresh = orthogonalize(
            basis, jax.random.normal(jax.random.fold_in(k_fresh, j), (d,), dtype), mask
        )
        broke = beta <= 1e-9 * jnp.linalg.norm(w)
        nxt = jnp.where(broke, fresh / jnp.maximum(jnp.linalg.norm(fresh), 1e-300), r / beta)
        beta = jnp.where(broke, 0.0, beta)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta)

    zeros = jnp.zeros((m,), dtype)
    basis, alphas, betas = jax.lax.fori_loop(0, m, body, (basis, zeros, zeros))
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, S = jnp.linalg.eigh(tri)
    return theta, basis[:m].T @ S


def _lanczos_whitening(posterior: LLCPosterior, key, m: int, curvature: jax.Array) -> Whitening:
    """w − w* = Q diag(scale) z with the Laplace N(w*, A⁻¹), A = nβ∇²L_n(w*) + γI, ≈ N(0, I)
    in z: scale θ^{-1/2} on the m Ritz directions (θ ≥ γ); on the rest c^{-1/2}, c their mean
    precision (tr â − Σθ)/(d − m) clipped to [γ, max θ] (â: the gradient-moment estimate)."""
    w_star, nbeta, gamma, d = posterior.w_star, posterior.nbeta, posterior.gamma, posterior.d
    grad = jax.grad(posterior.loss)

    def matvec(v):
        return nbeta * jax.jvp(grad, (w_star,), (v,))[1] + gamma * v

    theta, V = lanczos_eigenpairs(matvec, key, d, m, w_star.dtype)
    theta = jnp.maximum(theta, gamma)
    rest = (jnp.sum(curvature) - jnp.sum(theta)) / max(d - m, 1)
    c = jnp.clip(rest, gamma, jnp.max(theta))
    Y, T = _orthogonal_completion(V)
    return Whitening(jnp.concatenate([theta, jnp.full((d - m,), c)]) ** -0.5, Y, T)


def whitening_and_curvature(
    posterior: LLCPosterior,
    mode: Literal["none", "rmsprop", "adam", "lanczos"],
    key: jax.Array,
    batch: int,
    steps: int,
    decay: float,
    lanczos_steps: int = 128,
) -> tuple[Whitening, jax.Array]:
    """(T, s): the whitening of ``mode`` and the posterior's sd (d,) in its units, where each
    fit starts (:func:`init_params`), from one pass of ``steps`` minibatch gradients at w*
    (the curvature estimate â, ``adam``'s precision) and, for ``lanczos``, min(d,
    ``lanczos_steps``) Hessian-vector products.

    Diagonal modes: T = diag(1/√a) and s = √(a/â), which is 1 for ``adam`` and far from 1 for
    ``none`` on a model whose curvature is not 1 (the linear problem: ~0.1). ``lanczos``: T ≈
    A^{-1/2} from the top curvature directions (the Laplace approximation N(w*, A⁻¹) is
    N(0, I) in z) and s = 1.
    """
    if mode not in ("none", "rmsprop", "adam", "lanczos"):
        raise ValueError(f"whitening mode must be none, rmsprop, adam or lanczos, got {mode!r}")
    m, v = _gradient_moments(posterior, key, batch, steps, decay)
    curvature = _variance_precision(posterior, m, v, batch, steps, decay)
    if mode == "lanczos":
        k_lanczos = jax.random.fold_in(key, 1)
        wh = _lanczos_whitening(posterior, k_lanczos, min(posterior.d, lanczos_steps), curvature)
        return wh, jnp.ones_like(curvature)
    if mode == "none":
        a = jnp.full_like(posterior.w_star, posterior.nbeta + posterior.gamma)
    elif mode == "rmsprop":
        a = posterior.nbeta * batch * v + posterior.gamma
    else:
        a = curvature
    d = posterior.d
    none = Whitening(1.0 / jnp.sqrt(a), jnp.zeros((d, 0)), jnp.zeros((0, 0)))
    return none, jnp.sqrt(a / curvature)


def init_params(
    key: jax.Array, d: int, M: int, r: int, spread: float, scale: jax.Array | None = None
) -> MFAParams:
    """Components centred near w* (whitened 0) with per-coordinate sd ``scale`` (d,) (default
    1), means spread by ``spread`` × ``scale`` and small factor loadings (0.1 × ``scale``)."""
    k_mu, k_u = jax.random.split(key)
    scale = jnp.ones((d,)) if scale is None else scale
    return MFAParams(
        logits=jnp.zeros((M,)),
        mu=spread * scale * jax.random.normal(k_mu, (M, d)),
        log_sd=jnp.broadcast_to(jnp.log(scale), (M, d)),
        U=0.1 * scale[:, None] * jax.random.normal(k_u, (M, d, r)) / math.sqrt(max(r, 1)),
    )


def _one_logpdf(mu, log_sd, U, z):
    """log N(z; μ, D + UUᵀ) in O(d r²) through the Woodbury identity."""
    d = z.shape[-1]
    d_inv = jnp.exp(-2 * log_sd)
    x = z - mu
    quad = jnp.sum(d_inv * x**2)
    logdet = 2 * jnp.sum(log_sd)
    if U.shape[-1] > 0:
        utdx = U.T @ (d_inv * x)
        K = jnp.eye(U.shape[-1]) + U.T @ (d_inv[:, None] * U)
        chol = jnp.linalg.cholesky(K)
        sol = jax.scipy.linalg.cho_solve((chol, True), utdx)
        quad = quad - utdx @ sol
        logdet = logdet + 2 * jnp.sum(jnp.log(jnp.diag(chol)))
    return -0.5 * (quad + logdet + d * math.log(2 * math.pi))


def component_logpdf(params: MFAParams, z: jax.Array) -> jax.Array:
    """(M,) log-density of ``z`` (d,) under each component."""
    return jax.vmap(_one_logpdf, in_axes=(0, 0, 0, None))(params.mu, params.log_sd, params.U, z)


def log_q(params: MFAParams, z: jax.Array) -> jax.Array:
    """log q(z) of the mixture."""
    log_pi = jax.nn.log_softmax(params.logits)
    return jax.scipy.special.logsumexp(log_pi + component_logpdf(params, z))


def _draw(params: MFAParams, m, e_d, e_r):
    return params.mu[m] + jnp.exp(params.log_sd[m]) * e_d + params.U[m] @ e_r


def sample(params: MFAParams, key: jax.Array, num: int) -> jax.Array:
    """``num`` independent draws (num, d) from the mixture (whitened coordinates)."""
    M, d, r = params.U.shape
    k_c, k_d, k_r = jax.random.split(key, 3)
    comps = jax.random.categorical(k_c, params.logits, shape=(num,))
    e_d = jax.random.normal(k_d, (num, d))
    e_r = jax.random.normal(k_r, (num, r))
    return jax.vmap(lambda m, a, b: _draw(params, m, a, b))(comps, e_d, e_r)


def build_optimizer(lr, steps, alpha: float = 0.01) -> optax.GradientTransformation:
    """Adam with a cosine decay of the learning rate to ``alpha`` × ``lr`` over ``steps``.

    optax's ``cosine_decay_schedule`` written so that ``lr`` and ``steps`` may be traced (one
    compiled VI program serves every learning rate and run length).
    """

    def schedule(count):
        decay_steps = jnp.maximum(jnp.asarray(steps, jnp.float64), 1.0)
        t = jnp.minimum(count, decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
        return lr * ((1 - alpha) * cosine + alpha)

    return optax.adam(schedule)


def init(params: MFAParams, optimizer: optax.GradientTransformation) -> VIState:
    return VIState(params, optimizer.init(params))


def build_step(
    posterior: LLCPosterior,
    whitening: Whitening,
    optimizer: optax.GradientTransformation,
    batch: int,
    mc_samples: int,
):
    """``step(key, state) -> (state, VIInfo)``: one Adam step up the ELBO (unjitted).

    Every component contributes ``mc_samples`` reparameterized draws, weighted by π; all of
    them share the step's minibatch. log q enters with its parameters held fixed ("sticking
    the landing", Roeder et al. 2017): the gradient stays unbiased (E_q[∇_θ log q] = 0) and
    its variance vanishes as q approaches the posterior, so a Gaussian q on a Gaussian
    posterior converges to it instead of jittering around it.
    """
    nbeta, gamma, w_star, n = posterior.nbeta, posterior.gamma, posterior.w_star, posterior.n
    log_jac = log_det(whitening)  # log |dw/dz|

    def log_target(z, idx):
        w = w_star + to_weights(whitening, z)
        loss = posterior.loss(w) if idx is None else posterior.batch_loss(w, idx)
        return -nbeta * loss - 0.5 * gamma * jnp.sum((w - w_star) ** 2) + log_jac

    def elbo(params: MFAParams, key, idx):
        M, d, r = params.U.shape
        k_d, k_r = jax.random.split(key)
        e_d = jax.random.normal(k_d, (M, mc_samples, d))
        e_r = jax.random.normal(k_r, (M, mc_samples, r))
        comp = jnp.broadcast_to(jnp.arange(M)[:, None], (M, mc_samples))
        z = jax.vmap(jax.vmap(lambda m, a, b: _draw(params, m, a, b)))(comp, e_d, e_r)
        flat = z.reshape(M * mc_samples, d)
        frozen = jax.lax.stop_gradient(params)  # "sticking the landing" (Roeder et al. 2017)
        integrand = jax.vmap(lambda zz: log_target(zz, idx) - log_q(frozen, zz))(flat)
        per_comp = integrand.reshape(M, mc_samples).mean(axis=1)
        return jnp.sum(jax.nn.softmax(params.logits) * per_comp)

    def step(key, state: VIState):
        k_batch, k_mc = jax.random.split(key)
        idx = minibatch_indices(k_batch, n, batch)
        value, grads = jax.value_and_grad(elbo)(state.params, k_mc, idx)
        neg = jax.tree_util.tree_map(jnp.negative, grads)  # ascend the ELBO
        updates, opt_state = optimizer.update(neg, state.opt_state, state.params)
        return VIState(optax.apply_updates(state.params, updates), opt_state), VIInfo(value)

    return step


def build_eval(posterior: LLCPosterior, whitening: Whitening, num: int, map_batch: int = 8):
    """``evaluate(key, params) -> (L, log_w)``, both (num,): full-data L_n at independent draws
    from q and their log importance weights log p̃(w) − log q(w) (unnormalized posterior
    density over q's, in w coordinates): how far q is from the posterior, for free."""
    log_jac = log_det(whitening)

    def one(zz):
        dw = to_weights(whitening, zz)
        return posterior.loss(posterior.w_star + dw), dw

    def evaluate(key, params: MFAParams):
        z = sample(params, key, num)
        loss, dw = jax.lax.map(one, z, batch_size=map_batch)
        log_p = -posterior.nbeta * loss - 0.5 * posterior.gamma * jnp.sum(dw**2, axis=-1)
        log_w = log_p + log_jac - jax.vmap(lambda zz: log_q(params, zz))(z)
        return loss, log_w

    return evaluate
