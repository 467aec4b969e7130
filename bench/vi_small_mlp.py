"""Why VI misses HMC on the small MLP (issue 9): the posterior's geometry and a richer family.

Reproduces the measurements in plans/vi.md, "Beyond the Gaussian family". Two parts:

``geometry``: NUTS draws of the localized posterior (BlackJAX window adaptation, one chain)
and where they sit: λ̂, the localization term E[γ/2·‖w − w*‖²] against the prior's d/2, the
mean squared displacement per layer block, and the modes found by descending
nβL_n + γ/2·‖w − w*‖² from a few draws (their Laplace λ).

``flow``: reverse-KL VI with an affine-coupling flow (RealNVP-style: ``--layers`` coupling
layers with tanh conditioners, zero-initialized so the fit starts as the diagonal Gaussian)
on top of a diagonal Gaussian in the Lanczos eigenbasis that the VI method uses
(:func:`lambda_hat.samplers.vi.whitening_and_curvature`). ``--layers 0`` is the Gaussian.
Prints λ̂, the ELBO (up to the constant −nβL_n(w*) + log|det|, the same for every fit), the
localization term and the entropy of q. ``--anneal F`` scales nβ from F to 1 over the first
60 % of the steps.

    python bench/vi_small_mlp.py geometry
    python bench/vi_small_mlp.py flow --layers 8 --hidden 128 --steps 20000 --lr 1e-3

A research script, not part of the package: the flow did not close the gap (plans/vi.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lambda_hat.problem import theory
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.samplers import vi

SPEC = {"model": "small", "data": "small", "seed": 5}


def laplace_llc(post, w) -> float:
    """The Laplace value ½ Σ nβh/(nβh + γ) over the Hessian of L_n at ``w`` (negative
    eigenvalues clipped to 0): :func:`lambda_hat.problem.theory.linear_gaussian_llc`."""
    return theory.linear_gaussian_llc(jax.hessian(post.loss)(w), post.n, post.beta, post.gamma)


def geometry(post, model, args) -> None:
    import blackjax

    adapt = blackjax.window_adaptation(blackjax.nuts, post.logdensity, target_acceptance_rate=0.8)
    (state, params), _ = jax.jit(lambda k: adapt.run(k, post.w_star, num_steps=args.warmup))(
        jax.random.PRNGKey(args.seed)
    )
    kernel = blackjax.nuts(post.logdensity, **params)

    def body(s, k):
        s, _ = kernel.step(k, s)
        return s, s.position

    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.draws)
    _, pos = jax.jit(lambda s, k: jax.lax.scan(body, s, k))(state, keys)
    pos = np.asarray(pos)
    w_star = np.asarray(post.w_star)
    loss = np.asarray(jax.jit(jax.vmap(post.loss))(pos))
    dw2 = (pos - w_star) ** 2
    print(f"NUTS {args.draws} draws: λ̂ {post.nbeta * (loss.mean() - post.loss_star):.2f}")
    print(
        f"E[γ/2·‖w − w*‖²] {0.5 * post.gamma * dw2.sum(1).mean():.1f} "
        f"(the prior alone: d/2 = {post.d / 2:.1f}); Laplace λ at w* {laplace_llc(post, w_star):.1f}"
    )
    start = 0
    for i, (a, b) in enumerate(zip(model.layer_widths[:-1], model.layer_widths[1:], strict=True)):
        for name, size in ((f"W{i + 1}", a * b), (f"b{i + 1}", b)):
            block = slice(start, start + size)
            print(
                f"  {name}: mean (w − w*)² per weight {dw2[:, block].mean():.2f}, "
                f"rms w* {np.sqrt((w_star[block] ** 2).mean()):.2f}"
            )
            start += size
    energy = jax.jit(
        lambda w: post.nbeta * post.loss(w) + 0.5 * post.gamma * jnp.sum((w - post.w_star) ** 2)
    )
    opt = optax.adam(1e-3)

    @jax.jit
    def descend(w):
        def step(c, _):
            w, s = c
            u, s = opt.update(jax.grad(energy)(w), s, w)
            return (optax.apply_updates(w, u), s), None

        return jax.lax.scan(step, (w, opt.init(w)), None, length=20000)[0][0]

    for i in np.linspace(args.draws // 4, args.draws - 1, 4).astype(int):
        w = descend(jnp.asarray(pos[i]))
        print(
            f"  descent from draw {i}: ‖w − w*‖² {float(jnp.sum((w - post.w_star) ** 2)):.2f}, "
            f"nβ(L_n − L*) {float(post.nbeta * (post.loss(w) - post.loss_star)):.2f}, "
            f"Laplace λ {laplace_llc(post, w):.1f}"
        )


def flow(post, args) -> None:
    d, half, H, K = post.d, post.d // 2, args.hidden, args.layers
    wh, _ = jax.jit(lambda k: vi.whitening_and_curvature(post, "lanczos", k, 128, 200, 0.99))(
        jax.random.PRNGKey(0)
    )
    rng = np.random.default_rng(0)
    perms = [rng.permutation(d) for _ in range(K)]

    def init(key):
        layers = []
        for k in jax.random.split(key, K):
            k1, k2 = jax.random.split(k)
            layers.append(
                {
                    "W1": jax.random.normal(k1, (half, H)) / np.sqrt(half),
                    "b1": jnp.zeros(H),
                    "W2": jax.random.normal(k2, (H, H)) / np.sqrt(H),
                    "b2": jnp.zeros(H),
                    "Ws": jnp.zeros((H, d - half)),
                    "bs": jnp.zeros(d - half),
                    "Wt": jnp.zeros((H, d - half)),
                    "bt": jnp.zeros(d - half),
                }
            )
        return {"mu": jnp.zeros(d), "log_sd": jnp.zeros(d), "layers": layers}

    def forward(p, eps):
        """ε ~ N(0, I) → (z, log q(z))."""
        x = p["mu"] + jnp.exp(p["log_sd"]) * eps
        log_q = -0.5 * jnp.sum(eps**2) - 0.5 * d * np.log(2 * np.pi) - jnp.sum(p["log_sd"])
        for perm, lp in zip(perms, p["layers"], strict=True):
            xp = x[perm]
            a, b = xp[:half], xp[half:]
            h = jnp.tanh(jnp.tanh(a @ lp["W1"] + lp["b1"]) @ lp["W2"] + lp["b2"])
            s = 2.0 * jnp.tanh((h @ lp["Ws"] + lp["bs"]) / 2.0)  # log-scale in (−2, 2)
            x = jnp.zeros(d).at[perm].set(jnp.concatenate([a, b * jnp.exp(s) + h @ lp["Wt"]]))
            log_q = log_q - jnp.sum(s)
        return x, log_q

    def terms(p, eps, temp=1.0):
        z, log_q = forward(p, eps)
        dw = vi.to_weights(wh, z)
        excess = post.nbeta * (post.loss(post.w_star + dw) - post.loss_star)
        return temp * excess, 0.5 * post.gamma * jnp.sum(dw**2), log_q

    opt = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.01))

    @jax.jit
    def fit(key):
        p = init(key)

        def step(c, xs):
            k, i = xs
            p, s = c
            frac = jnp.minimum(i / (0.6 * args.steps), 1.0)
            temp = args.anneal ** (1 - frac) if args.anneal else 1.0

            def neg_elbo(p):
                e, loc, lq = jax.vmap(lambda x: terms(p, x, temp))(
                    jax.random.normal(k, (args.mc, d))
                )
                return jnp.mean(e + loc + lq)

            v, g = jax.value_and_grad(neg_elbo)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), -v

        xs = (jax.random.split(key, args.steps), jnp.arange(args.steps))
        (p, _), elbo = jax.lax.scan(step, (p, opt.init(p)), xs)
        return p, elbo

    evaluate = jax.jit(lambda p, eps: jax.vmap(lambda x: terms(p, x))(eps))
    for seed in range(args.fits):
        t0 = time.time()
        p, elbo = fit(jax.random.PRNGKey(10 + seed))
        eps = jax.random.normal(jax.random.PRNGKey(100 + seed), (2000, d))
        e, loc, lq = (np.asarray(x) for x in evaluate(p, eps))
        q = args.steps // 4
        print(
            f"layers {K} (hidden {H}), {args.steps} steps, lr {args.lr}, anneal {args.anneal}, "
            f"fit {seed}: λ̂ {e.mean():.2f} ± {e.std() / np.sqrt(e.size):.2f}, ELBO "
            f"{float(elbo[-q:].mean()):.1f} (3rd quarter {float(elbo[-2 * q : -q].mean()):.1f}), "
            f"E[γ/2·‖w − w*‖²] {loc.mean():.1f}, entropy {-lq.mean():.1f}, "
            f"{time.time() - t0:.0f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["geometry", "flow"])
    ap.add_argument("--artifacts", default=None, help="problem store (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--draws", type=int, default=1500)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mc", type=int, default=8, help="reparameterized draws per step")
    ap.add_argument("--anneal", type=float, default=0.0)
    ap.add_argument("--fits", type=int, default=1)
    ap.add_argument("--gamma", type=float, default=1.0, help="localization strength")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        problem = build_problem(resolve_problem(SPEC), args.artifacts or tmp)
        post = problem.posterior(gamma=args.gamma)
        print(
            f"small MLP {problem.model.layer_widths}: d {post.d}, n {post.n}, "
            f"nβ {post.nbeta:.2f}, γ {post.gamma}"
        )
        if args.part == "geometry":
            geometry(post, problem.model, args)
        else:
            flow(post, args)


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
