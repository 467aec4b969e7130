"""Problems (targets): data, teacher, trained w*, stored content-addressed by pid.

``pid = "p_" + sha256(canonical JSON of the fully resolved ProblemSpec)[:12]``: the same in
every process, on every machine and for every key order (see :mod:`lambda_hat.hashing`),
different whenever any resolved value differs. A problem lives in
``artifacts/problems/<pid>/``: ``data.npz`` (X, y, w_star, w_teacher) is written first and
``problem.json`` (resolved spec, d, n, L_n(w*), training summary, theoretical λ) last, both
atomically, so a directory without a valid ``problem.json`` is rebuilt, never trusted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, atomic_write_npz, read_json
from lambda_hat.hashing import content_hash
from lambda_hat.layout import problem_dir
from lambda_hat.llc.posterior import LLCPosterior, minibatch_indices, model_loss, posterior_at
from lambda_hat.log import Progress
from lambda_hat.problem import source_store, theory
from lambda_hat.problem.models import (
    Model,
    build_model,
    init_params,
    product_matrix,
    widths_for_budget,
)
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.schema import as_dict, validate

log = logging.getLogger("lambda_hat.problems")

PROBLEM_SCHEMA = 1
TRAIN_CHUNKS = 10


def pid_fields(spec: ProblemSpec) -> dict:
    """What the pid hashes: the resolved spec, ``data.loss`` only when it is not the default
    ``gaussian`` and ``source`` only when set (so the pids of problems from before they existed
    stand). A source problem: its (source, args, seed) and the digest of its arrays (a
    checkpoint's also its index and step)."""
    fields = as_dict(spec)
    src = fields.pop("source", None)
    if src is not None:
        keep = ("source", "args", "digest")
        if src.get("checkpoint") is not None:
            keep += ("checkpoint", "step")
        return {"source": {k: src[k] for k in keep}, "seed": spec.seed}
    if fields["data"].get("loss") == "gaussian":
        fields["data"] = {k: v for k, v in fields["data"].items() if k != "loss"}
    return fields


def problem_id(spec: ProblemSpec) -> str:
    """The content address of a resolved problem spec (:func:`pid_fields`)."""
    return content_hash(pid_fields(spec), prefix="p_")


def spec_loss(spec: ProblemSpec, apply) -> Callable:
    """L(w, X, y) of ``spec``: the mean NLL of its loss kind (:func:`llc.posterior.model_loss`)."""
    return model_loss(apply, spec.data.loss, spec.data.noise)


def student_widths(spec: ProblemSpec) -> list[int]:
    """Hidden widths of the student (explicit, or derived from ``target_params``)."""
    m, data = spec.model, spec.data
    if spec.source is not None:
        return []
    if m.widths is not None:
        return list(m.widths)
    if m.depth == 0:
        return []
    return widths_for_budget(data.input_dim, data.output_dim, m.depth, m.target_params, m.bias)


def student_model(spec: ProblemSpec) -> Model:
    m, data = spec.model, spec.data
    return build_model(
        m.family, data.input_dim, student_widths(spec), data.output_dim, m.activation, m.bias
    )


def teacher_model(spec: ProblemSpec) -> Model:
    m, t, data = spec.model, spec.teacher, spec.data
    hidden = list(t.widths) if t.widths is not None else student_widths(spec)
    act = t.activation or m.activation
    return build_model(m.family, data.input_dim, hidden, data.output_dim, act, m.bias)


@dataclass(frozen=True)
class Problem:
    """A built problem: everything a sampler needs to target its LLC posterior."""

    pid: str
    spec: ProblemSpec
    model: Model
    X: jax.Array
    y: jax.Array
    w_star: jax.Array
    w_teacher: jax.Array
    info: dict  # the contents of problem.json
    path: Path
    rows: Callable | None = None  # a source problem's L(w, X, y) (presets: from the model)

    @property
    def d(self) -> int:
        return self.model.d

    @property
    def n(self) -> int:
        return self.spec.data.n

    @property
    def loss(self) -> Callable:
        """L(w, X, y): the problem's mean per-example NLL (its loss kind)."""
        if self.rows is not None:
            return self.rows
        return spec_loss(self.spec, self.model.apply)

    def posterior(self, beta: float | None = None, gamma: float = 1.0) -> LLCPosterior:
        """The localized tempered posterior at w* (β = 1/log n when ``beta`` is None)."""
        return posterior_at(self.loss, self.X, self.y, self.w_star, beta, gamma)

    def summary(self) -> str:
        m = self.spec.model
        if self.spec.source is not None:
            return f"source {self.spec.source.source} d={self.d} ({self.spec.source.loss})"
        arch = "-".join(str(w) for w in self.model.layer_widths)
        return f"{m.family} {arch}" + (f" {m.activation}" if m.family == "mlp" else "")


def theoretical_llc(spec: ProblemSpec, model: Model, w_teacher) -> dict | None:
    """The learning coefficient λ when theory gives it, with where it comes from."""
    if spec.data.loss == "cross_entropy":
        if len(model.layer_widths) != 2:
            return None
        k = spec.data.output_dim  # softmax logits: one shift per input is flat (K-1 of K count)
        return {
            "lambda": theory.regular_llc(model.d * (k - 1) // k),
            "source": "regular softmax regression: d(K−1)/(2K)",
        }
    if len(model.layer_widths) == 2:  # no hidden layer: linear/affine regression is regular
        return {"lambda": theory.regular_llc(model.d), "source": "regular model: d/2"}
    if spec.model.family == "dln":
        tm = teacher_model(spec)
        r = theory.numerical_rank(product_matrix(tm, jnp.asarray(w_teacher)))
        if r <= min(model.layer_widths):
            return {
                "lambda": theory.dln_llc(model.layer_widths, r),
                "source": f"Aoyagi (2024) deep linear network, true rank {r}",
                "rank": r,
            }
    return None


def theory_unknown(spec: ProblemSpec) -> str | None:
    """Why :func:`theoretical_llc` may give no λ for ``spec`` (None: it always gives one), read
    from the spec alone, before anything is built: λ is known for a model with no hidden layer
    (regular: d/2) and for a deep linear network whose teacher's product has at most the rank of
    the student's narrowest layer (Aoyagi); a teacher that may exceed it is unrealizable."""
    if spec.source is not None:
        return "no theoretical λ is known for a problem from a source"
    student = (spec.data.input_dim, *student_widths(spec), spec.data.output_dim)
    if len(student) == 2:
        return None
    if spec.model.family != "dln":
        return (
            f"no theoretical λ is known for a {spec.model.family} with hidden layers "
            "(known: deep linear networks, by Aoyagi's formula, and models with no hidden "
            "layer, d/2)"
        )
    t = spec.teacher
    hidden = list(t.widths) if t.widths is not None else list(student[1:-1])
    bound = min(spec.data.input_dim, *hidden, spec.data.output_dim)
    bound = 0 if t.scale == 0 else min(bound, bound if t.rank is None else t.rank)
    if bound > min(student):
        return (
            f"the teacher's product may have rank {bound}, above the student's narrowest "
            f"layer ({min(student)}): Aoyagi's formula needs a realizable teacher"
        )
    return None


def _sample_inputs(key, data) -> jax.Array:
    shape = (data.n, data.input_dim)
    if data.x_dist == "uniform":
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
    return jax.random.normal(key, shape)


def _train(spec: ProblemSpec, model: Model, X, y, w0, key) -> tuple[jax.Array, list[float]]:
    """Train w* with optax in a compiled scan, in chunks that report progress."""
    tc, n = spec.model.train, spec.data.n
    lr = optax.cosine_decay_schedule(tc.lr, tc.steps, 0.01) if tc.schedule == "cosine" else tc.lr
    opt = optax.adam(lr) if tc.optimizer == "adam" else optax.sgd(lr)

    rows = spec_loss(spec, model.apply)

    def loss_fn(w, idx):
        return rows(w, X, y) if idx is None else rows(w, X[idx], y[idx])

    def step(carry, k):
        w, opt_state = carry
        idx = minibatch_indices(k, n, tc.batch_size)
        loss, g = jax.value_and_grad(loss_fn)(w, idx)
        updates, opt_state = opt.update(g, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), loss

    chunk = max(1, -(-tc.steps // TRAIN_CHUNKS))
    run_chunk = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    carry, done, curve = (w0, opt.init(w0)), 0, []
    full_loss = jax.jit(lambda w: loss_fn(w, None))
    progress = Progress(log, "training w*", tc.steps)
    while done < tc.steps:
        m = min(chunk, tc.steps - done)
        keys = jax.random.split(jax.random.fold_in(key, done), m)
        carry, _ = run_chunk(carry, keys)
        done += m
        curve.append(float(full_loss(carry[0])))
        progress.update(done, f"L_n {curve[-1]:.6g}")
    return carry[0], curve


def _targets(spec: ProblemSpec, out: jax.Array, key) -> jax.Array:
    """The teacher's output made data: plus noise·N(0, 1) (gaussian), or labels drawn from
    softmax(out) over the classes (cross_entropy)."""
    if spec.data.loss == "cross_entropy":
        return jax.random.categorical(key, out, axis=-1)
    return out + spec.data.noise * jax.random.normal(key, out.shape)


def _generate(spec: ProblemSpec) -> dict:
    """Data, teacher and trained w* for ``spec`` (deterministic in ``spec.seed``)."""
    key = jax.random.PRNGKey(spec.seed)
    k_x, k_teacher, k_noise, k_student, k_train = jax.random.split(key, 5)
    model, tm = student_model(spec), teacher_model(spec)
    w_teacher = init_params(tm, k_teacher, spec.teacher.scale, spec.teacher.rank)
    X = _sample_inputs(k_x, spec.data)
    y = _targets(spec, tm.apply(w_teacher, X), k_noise)
    w0 = init_params(model, k_student, spec.model.init_scale)
    w_star, curve = _train(spec, model, X, y, w0, k_train)
    return {"X": X, "y": y, "w_star": w_star, "w_teacher": w_teacher, "curve": curve}


def _load(spec: ProblemSpec, pid: str, path: Path) -> Problem | None:
    info = read_json(path / layout.PROBLEM_INFO)
    if info is None or info.get("schema") != PROBLEM_SCHEMA or info.get("pid") != pid:
        return None
    try:
        with np.load(path / layout.PROBLEM_DATA) as z:
            arrays = {k: jnp.asarray(z[k]) for k in ("X", "y", "w_star", "w_teacher")}
    except (OSError, KeyError, ValueError):
        return None
    if spec.source is not None:
        return _load_source(spec, pid, path, info, arrays)
    model = student_model(spec)
    if arrays["w_star"].shape != (model.d,) or arrays["X"].shape[0] != spec.data.n:
        return None
    return Problem(pid, spec, model, info=info, path=path, **arrays)


def _load_source(spec: ProblemSpec, pid: str, path: Path, info: dict, arrays: dict):
    """A stored source problem, its functions read back (:mod:`problem.source_store`)."""
    src = spec.source
    if arrays["w_star"].shape != (src.d,) or arrays["X"].shape[0] != spec.data.n:
        return None
    unravel, rows = source_store.load_source_functions(src, spec.seed, path)
    model = source_store.source_model(src, spec.data.input_dim, spec.data.output_dim, unravel)
    return Problem(pid, spec, model, info=info, path=path, rows=rows, **arrays)


def _build_source(spec: ProblemSpec, pid: str, path: Path) -> Problem:
    """Store a source problem (its arrays from the source, called once per process)."""
    t0, src = time.perf_counter(), spec.source
    prep, arrays = source_store.store_source(src, spec.seed, path)
    model = source_store.source_model(src, prep.input_dim, prep.output_dim, prep.unravel)
    info = {
        "schema": PROBLEM_SCHEMA,
        "pid": pid,
        "spec": as_dict(spec),
        "d": src.d,
        "n": prep.n,
        "layer_widths": list(model.layer_widths),
        **prep.info,
        "digest": src.digest,
        "train_curve": [],
        "theory": None,
        "build_sec": time.perf_counter() - t0,
    }
    atomic_write_json(path / layout.PROBLEM_INFO, info)
    log.info("problem %s: stored %s, d=%d, n=%d", pid, src.source, src.d, prep.n)
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    return Problem(pid, spec, model, info=info, path=path, rows=prep.loss, **arrays)


def build_problem(
    spec: ProblemSpec, artifacts: str | Path = layout.ARTIFACTS, force: bool = False
) -> Problem:
    """Load the stored problem for ``spec``, or generate, train and store it."""
    pid = problem_id(spec)
    path = problem_dir(artifacts, pid)
    if not force and (loaded := _load(spec, pid, path)) is not None:
        log.debug("problem %s: reusing %s", pid, path)
        return loaded
    if spec.source is not None:
        return _build_source(spec, pid, path)
    t0 = time.perf_counter()
    model = student_model(spec)
    log.info("problem %s: building %s, d=%d, n=%d", pid, model.layer_widths, model.d, spec.data.n)
    g = _generate(spec)

    loss = spec_loss(spec, model.apply)
    loss_star, grad = jax.jit(jax.value_and_grad(loss))(g["w_star"], g["X"], g["y"])
    loss_star, grad_norm = float(loss_star), float(jnp.linalg.norm(grad))
    info = {
        "schema": PROBLEM_SCHEMA,
        "pid": pid,
        "spec": as_dict(spec),
        "d": model.d,
        "n": spec.data.n,
        "layer_widths": list(model.layer_widths),
        "loss_star": loss_star,
        "grad_norm_star": grad_norm,
        "train_curve": g["curve"],
        "theory": theoretical_llc(spec, model, g["w_teacher"]),
        "build_sec": time.perf_counter() - t0,
    }
    atomic_write_npz(
        path / layout.PROBLEM_DATA, X=g["X"], y=g["y"], w_star=g["w_star"], w_teacher=g["w_teacher"]
    )
    atomic_write_json(path / layout.PROBLEM_INFO, info)
    log.info(
        "problem %s: L_n(w*) = %.6g, |grad| = %.2e (%.1fs)",
        pid,
        loss_star,
        grad_norm,
        info["build_sec"],
    )
    return Problem(pid, spec, model, g["X"], g["y"], g["w_star"], g["w_teacher"], info, path)


def load_problem(artifacts: str | Path, pid: str) -> Problem:
    """A stored problem by pid alone (its spec is read back from problem.json)."""
    path = problem_dir(artifacts, pid)
    info = read_json(path / layout.PROBLEM_INFO)
    if info is None:
        raise FileNotFoundError(f"no valid problem {pid} under {path}; build it first")
    spec = validate(info["spec"], ProblemSpec, "spec")
    problem = _load(spec, pid, path)
    if problem is None:
        raise FileNotFoundError(f"problem {pid} under {path} is incomplete; rebuild it")
    return problem
