"""Checkpoints of one training run from a source (issue 21 §4: LLC over training).

A source may return ``SourceProblem(checkpoints=[...], data=..., loss=... | predict=...)``
instead of ``params``: a list of :class:`~lambda_hat.problem.source.Checkpoint` (or ``(step,
params)`` / ``(step, params, {"train_loss": .., "test_loss": ..})`` tuples). Each checkpoint is
a problem of its own (its pid hashes its parameters and its index); all share the data and the
functions. :func:`checkpoint_list` checks the list before any work (a ConfigError at
``<where>.source.checkpoints``: empty, steps not strictly increasing, parameters whose pytree
or leaf shapes differ from the first checkpoint's, a non-finite loss); :func:`at_checkpoint`
is the one-checkpoint :class:`SourceProblem` that every stage then reads like any source's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lambda_hat.problem.source import Checkpoint, SourceProblem
from lambda_hat.schema import ConfigError

__all__ = ["at_checkpoint", "checkpoint_list"]

_LISTS: dict[int, tuple[SourceProblem, list[Checkpoint]]] = {}
_AT: dict[tuple[int, int], tuple[SourceProblem, SourceProblem]] = {}


def checkpoint_list(sp: SourceProblem, where: str) -> list[Checkpoint]:
    """The checked checkpoints of ``sp`` (once per return value)."""
    if id(sp) not in _LISTS or _LISTS[id(sp)][0] is not sp:
        _LISTS[id(sp)] = (sp, _check(sp.checkpoints, f"{where}.source.checkpoints"))
    return _LISTS[id(sp)][1]


def at_checkpoint(sp: SourceProblem, index: int, where: str = "problem") -> SourceProblem:
    """``sp`` with the parameters of checkpoint ``index`` and no checkpoint list."""
    key = (id(sp), index)
    if key not in _AT or _AT[key][0] is not sp:
        cks = checkpoint_list(sp, where)
        if not 0 <= index < len(cks):
            raise ConfigError(
                f"{where}.source.checkpoints",
                f"has {len(cks)} checkpoints; checkpoint {index} was planned.",
                "load the config again: the source returns another run than when it was planned.",
            )
        _AT[key] = (sp, dataclasses.replace(sp, params=cks[index].params, checkpoints=None))
    return _AT[key][1]


def _check(raw: Any, at: str) -> list[Checkpoint]:
    fix = "return checkpoints=[(step, params), ...] with steps increasing (or Checkpoint(...))."
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Sequence):
        raise ConfigError(at, f"is a {type(raw).__name__}, not a list.", fix)
    if not raw:
        raise ConfigError(at, "is empty.", fix)
    out = [_one(c, f"{at}[{i}]") for i, c in enumerate(raw)]
    for i in range(1, len(out)):
        if out[i].step <= out[i - 1].step:
            raise ConfigError(
                f"{at}[{i}].step",
                f"steps are not increasing: {out[i - 1].step} then {out[i].step}.",
                "give each checkpoint its own training step, in training order.",
            )
    first = _shapes(out[0].params)
    for i, c in enumerate(out[1:], start=1):
        if _shapes(c.params) != first:
            raise ConfigError(
                f"{at}[{i}].params",
                f"the parameters differ in structure or shapes from checkpoint 0 (step "
                f"{out[0].step}): {_shapes(c.params)[1]} against {first[1]}.",
                "checkpoints are one network at different steps: save the same pytree each time.",
            )
    return out


def _one(c: Any, at: str) -> Checkpoint:
    if isinstance(c, Checkpoint):
        ck = c
    elif isinstance(c, tuple | list) and len(c) in (2, 3):
        extra = dict(c[2]) if len(c) == 3 and isinstance(c[2], Mapping) else None
        if len(c) == 3 and (extra is None or set(extra) - {"train_loss", "test_loss"}):
            raise ConfigError(
                at, f"the third item is {c[2]!r}.", "give {'train_loss': x, 'test_loss': y}."
            )
        ck = Checkpoint(c[0], c[1], **(extra or {}))
    else:
        raise ConfigError(
            at, f"is a {type(c).__name__}.", "give (step, params) or lambda_hat.Checkpoint."
        )
    if isinstance(ck.step, bool) or not isinstance(ck.step, int | np.integer):
        raise ConfigError(f"{at}.step", f"got {ck.step!r}.", "give the step as an integer.")
    losses = {}
    for name in ("train_loss", "test_loss"):
        v = getattr(ck, name)
        if v is not None and not (isinstance(v, int | float | np.number) and math.isfinite(v)):
            raise ConfigError(f"{at}.{name}", f"got {v!r}.", "give a finite number or None.")
        losses[name] = None if v is None else float(v)
    return Checkpoint(int(ck.step), ck.params, **losses)


def _shapes(params: Any) -> tuple[str, list]:
    leaves, tree = jax.tree_util.tree_flatten(params)
    return str(tree), [tuple(np.shape(a)) for a in leaves]
