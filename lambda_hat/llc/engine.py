"""The compiled-program cache, the timer and the one chunked drive loop.

Every sampler run (the HMC reference and each cheap method) goes through :func:`drive`: it
calls a compiled *chunk* program over ``total`` units, and between chunks it checks for
non-finite values (:class:`Diverged`), reports progress and the λ̂ so far to the tuning driver
and honours its stop requests (:class:`Pruned`), and stops at the wall-clock budget
(``stopped_early``; the work so far is kept).

Programs are compiled with ``jit(...).lower(...).compile()`` through :class:`Timer` (compile
time reported apart from run time) and **reused by later runs in the process**: a program is
cached under a key naming what it computes and the static settings that shape it, plus the
abstract signature of its arguments. Everything that varies between trials — continuous
hyperparameters, β, γ, w*, L_n(w*), keys, step counts — is an argument, so a new trial of the
same shapes compiles nothing (``tests/llc/test_compilation.py``). Chunk programs loop over a
*traced* number of units up to a power-of-two capacity (:func:`chunk_capacity`), so varying
``steps`` between trials does not create a program per value.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat.llc import channel

__all__ = [
    "CACHE_SIZE",
    "MIN_CHUNK",
    "TARGET_CHUNKS",
    "Diverged",
    "Drive",
    "Pruned",
    "Timer",
    "chunk_capacity",
    "clear_compiled_cache",
    "concat",
    "drive",
    "drive_units",
    "f64",
    "first_nonfinite",
    "i64",
    "unit_chunk",
]

TARGET_CHUNKS = 20  # budget/divergence checks per run: at most this many, at least half
MIN_CHUNK = 16  # units per chunk at least (short runs: fewer chunks, fewer programs)
CACHE_SIZE = 256  # programs kept per process (least recently used dropped first)
clock = time.perf_counter  # the one clock (tests may substitute it)

# key = (what the program computes, the static settings that shape it, argument signature).
# A program closes over nothing but what its key names (static settings, a problem's ``apply``
# and noise, which its pid fixes).
_COMPILED: OrderedDict[tuple, Any] = OrderedDict()


class Diverged(Exception):
    """A non-finite loss or parameter: the run stops at ``step``."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


class Pruned(Exception):
    """The tuning driver asked the run to stop (:func:`lambda_hat.llc.channel.stop_requested`)."""

    def __init__(self, step: int, steps_planned: int, llc_hat: float | None):
        super().__init__(f"stopped on request (pruned) at step {step} of {steps_planned}")
        self.step, self.steps_planned, self.llc_hat = step, steps_planned, llc_hat


def clear_compiled_cache() -> None:
    """Forget this process's compiled programs (the next run compiles afresh)."""
    _COMPILED.clear()


def _signature(args) -> tuple:
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (
        tree,
        tuple((np.shape(x), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves),
    )


def f64(x) -> np.ndarray:
    """``x`` as a float64 host array (a traced argument, never a weak-typed constant)."""
    return np.asarray(x, np.float64)


def i64(x) -> np.ndarray:
    """``x`` as an int64 host array."""
    return np.asarray(x, np.int64)


def chunk_capacity(total: int) -> int:
    """Units per compiled chunk: total / TARGET_CHUNKS rounded up to a power of two, >= 16.

    The chunk program loops over a *traced* number of units (<= capacity), so a run of any
    length uses the executable of its capacity bucket (a run has 10–20 chunks, fewer when
    short).
    """
    return max(MIN_CHUNK, 1 << math.ceil(math.log2(max(1, -(-total // TARGET_CHUNKS)))))


class Timer:
    """Compile and run seconds of one run, and how many programs it had to compile."""

    def __init__(self) -> None:
        self.compile = 0.0
        self.run = 0.0
        self.compiled_programs = 0

    def compiled(self, key: tuple, fn: Callable, *args) -> Callable:
        """The program ``fn`` for ``args`` from the process cache, compiled (and timed) once.

        ``fn`` must close over nothing but what ``key`` names (static settings, the problem).
        """
        full = (key, _signature(args))
        exe = _COMPILED.get(full)
        if exe is None:
            t0 = clock()
            exe = jax.jit(fn).lower(*args).compile()
            self.compile += clock() - t0
            self.compiled_programs += 1
            _COMPILED[full] = exe
            while len(_COMPILED) > CACHE_SIZE:
                _COMPILED.popitem(last=False)
        else:
            _COMPILED.move_to_end(full)
        return exe

    def call(self, compiled: Callable, *args) -> Any:
        """Run a compiled program to completion, timing it as run time."""
        t0 = clock()
        out = jax.block_until_ready(compiled(*args))
        self.run += clock() - t0
        return out

    def once(self, key: tuple, fn: Callable, *args) -> Any:
        """Run the (cached) program ``fn`` on ``args``: setup work, one executable."""
        return self.call(self.compiled(key, fn, *args), *args)


def _fill(shape: jax.ShapeDtypeStruct, capacity: int) -> jax.Array:
    out = (shape.shape[0], capacity, *shape.shape[1:])
    if jnp.issubdtype(shape.dtype, jnp.floating):
        return jnp.full(out, jnp.nan, shape.dtype)
    return jnp.zeros(out, shape.dtype)


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves]))


def unit_chunk(unit: Callable, capacity: int, watch: Callable = lambda carry: carry) -> Callable:
    """A chunk program ``(consts, carry, first, m) -> (carry, outputs, finite)`` from a unit.

    ``unit(consts, carry, u) -> (carry, out)`` does one unit of work (chains vmapped inside,
    ``out`` leaves shaped (C, ...)); the chunk runs units ``first .. first + m − 1`` (``m``
    traced, at most ``capacity``) in a ``fori_loop`` and stacks ``out`` into (C, capacity, ...)
    buffers (NaN past ``m``). ``finite`` says whether ``watch(carry)`` is all finite.
    """

    def chunk(consts, carry, first, m):
        out_shapes = jax.eval_shape(lambda c, u: unit(consts, c, u), carry, first)[1]
        bufs = jax.tree_util.tree_map(lambda s: _fill(s, capacity), out_shapes)

        def body(j, c):
            carry, bufs = c
            carry, out = unit(consts, carry, first + j)
            bufs = jax.tree_util.tree_map(
                lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, j, 1), bufs, out
            )
            return carry, bufs

        carry, bufs = jax.lax.fori_loop(0, m, body, (carry, bufs))
        return carry, bufs, _all_finite(watch(carry))

    return chunk


class Drive(NamedTuple):
    """What :func:`drive` returns: the final carry, per-chunk host outputs (C, m, ...), the
    units done and whether the budget stopped the run early."""

    carry: Any
    infos: list
    done: int
    stopped_early: bool


def drive(
    run_chunk: Callable[[Any, int, int], tuple[Any, Any, bool]],
    carry,
    total: int,
    chunk_len: int,
    deadline: float,
    *,
    first_bad: Callable[[Any, bool], int | None] | None = None,
    unit_steps: int = 1,
    estimate: Callable[[list], float | None] | None = None,
    on_chunk: Callable[[int, Any], None] | None = None,
    predict_budget: bool = False,
) -> Drive:
    """The one chunk loop: ``run_chunk(carry, first, m) -> (carry, outputs, finite)`` over
    ``total`` units, ``chunk_len`` at a time.

    Between chunks: ``first_bad(outputs, finite)`` (index of the first non-finite unit or None)
    raises :class:`Diverged` at the step ``(done + bad + 1) · unit_steps``; under isolation the
    fraction done and ``estimate(infos)`` are reported to the tuning driver and a stop request
    raises :class:`Pruned`; ``on_chunk(done, outputs)`` logs progress. The budget (``deadline``,
    a :data:`clock` time) is checked after each chunk, or with ``predict_budget`` before it (a
    chunk that would end past the deadline at the rate so far is not started).
    """
    infos: list = []
    done, ran = 0, 0.0
    while done < total:
        m = min(chunk_len, total - done)
        if predict_budget and done and clock() + ran / done * m > deadline:
            return Drive(carry, infos, done, True)
        t0 = clock()
        carry, info, finite = run_chunk(carry, done, m)
        ran += clock() - t0
        bad = first_bad(info, bool(finite)) if first_bad is not None else None
        if bad is not None:
            step = (done + bad + 1) * unit_steps
            raise Diverged(step, f"non-finite loss or parameters by step {step}")
        infos.append(info)
        done += m
        if on_chunk is not None:
            on_chunk(done, info)
        if channel.active():
            llc = estimate(infos) if estimate is not None else None
            channel.report_progress(done / total, step=done * unit_steps, llc_hat=llc)
            if done < total and channel.stop_requested():
                raise Pruned(done * unit_steps, total * unit_steps, llc)
        if not predict_budget and done < total and clock() >= deadline:
            return Drive(carry, infos, done, True)
    return Drive(carry, infos, done, False)


def drive_units(
    timer: Timer,
    key: tuple,
    unit: Callable,
    consts,
    carry,
    total: int,
    deadline: float,
    first_bad: Callable[[Any, bool], int | None],
    unit_steps: int,
    watch: Callable = lambda carry: carry,
    estimate: Callable[[list], float | None] | None = None,
) -> Drive:
    """:func:`drive` over a unit function: one cached chunk program per ``key`` and capacity."""
    capacity = chunk_capacity(total)
    chunk = unit_chunk(unit, capacity, watch)
    exe = timer.compiled((*key, "chunk", capacity), chunk, consts, carry, i64(0), i64(0))

    def run_chunk(carry, first, m):
        carry, bufs, finite = timer.call(exe, consts, carry, i64(first), i64(m))
        info = jax.tree_util.tree_map(lambda b: np.asarray(b)[:, :m], jax.device_get(bufs))
        return carry, info, finite

    return drive(
        run_chunk,
        carry,
        total,
        capacity,
        deadline,
        first_bad=first_bad,
        unit_steps=unit_steps,
        estimate=estimate,
    )


def concat(infos: list, field) -> np.ndarray:
    """Per-chunk outputs joined along the step axis (``field``: attribute name or index)."""
    return np.concatenate(
        [np.asarray(getattr(i, field) if isinstance(field, str) else i[field]) for i in infos],
        axis=1,
    )


def first_nonfinite(loss: np.ndarray, finite: bool = True) -> int | None:
    """Index along axis 1 of the first non-finite loss in any chain (the last if not finite)."""
    bad = ~np.isfinite(loss).all(axis=0)
    if not finite:
        bad[-1] = True
    return int(np.argmax(bad)) if bad.any() else None
