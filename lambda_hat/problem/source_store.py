"""A ``source:`` problem stored under its pid and read back, on the driver and on workers.

Stored like a preset's problem (``data.npz``: X, y, flat w*; ``problem.json``) plus
``source.pkl``: the parameters' pytree (as numpy) and the functions, pickled with dill. A
function of an importable module is pickled by reference, so reading it back imports that
module (the spec's ``folder`` first on ``sys.path``) without calling the source; when the pickle
cannot be read, the source is called again and must give the stored digest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dill
import jax
import numpy as np

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes, atomic_write_npz
from lambda_hat.problem.checkpoints import at_checkpoint
from lambda_hat.problem.models import Model
from lambda_hat.problem.source import (
    SourceConfig,
    SourceProblem,
    add_to_path,
    call_source,
    flatten_params,
    mean_loss,
)
from lambda_hat.problem.source_checks import PreparedSource, prepare_source

__all__ = ["load_source_functions", "source_model", "store_source"]

log = logging.getLogger("lambda_hat.problems")


class SourceChanged(RuntimeError):
    """The source now returns other arrays than those its pid was taken from."""


def prepared(spec_source: SourceConfig, seed: int) -> PreparedSource:
    """The source of a spec called (once per process) and checked, its digest the spec's."""
    src = spec_source
    prep = prepare_source(called(src, seed), "problem", allow_nonminimum=True)  # checked at load
    if prep.digest != src.digest:
        raise SourceChanged(
            f"{src.source} now returns other data or parameters than when its pid was taken "
            f"(digest {prep.digest[:12]}, expected {src.digest[:12]}): load the config again "
            "to plan the new problem"
        )
    return prep


def called(src: SourceConfig, seed: int) -> SourceProblem:
    """What the source of a spec returns (once per process), at the spec's checkpoint."""
    sp = call_source(src.source, src.args, seed, src.folder, "problem")
    return sp if src.checkpoint is None else at_checkpoint(sp, src.checkpoint)


def source_model(src: SourceConfig, input_dim: int, output_dim: int, unravel: Callable) -> Model:
    """A :class:`Model` record for a source problem (no ``apply``: its loss is its own)."""
    return Model("source", (input_dim, output_dim), "", False, src.d, unravel, None)


def store_source(src: SourceConfig, seed: int, path: Path) -> tuple[PreparedSource, dict]:
    """Write ``data.npz`` and ``source.pkl`` of the source under ``path``; returns the prepared
    source and its arrays (X, y, w_star, w_teacher: empty)."""
    prep = prepared(src, seed)
    sp = called(src, seed)
    to_numpy = jax.tree_util.tree_map(np.asarray, sp.params)
    record = {
        "params": to_numpy,
        "loss": sp.loss,
        "predict": sp.predict,
        "loss_kind": sp.loss_kind,
        "noise": sp.noise,
    }
    try:
        atomic_write_bytes(path / layout.PROBLEM_SOURCE, dill.dumps(record))
    except Exception as exc:  # workers call the source again instead
        log.warning(
            "problem from %s: its functions cannot be pickled (%s: %s); every worker will call "
            "the source again",
            src.source,
            type(exc).__name__,
            exc,
        )
        (path / layout.PROBLEM_SOURCE).unlink(missing_ok=True)
    arrays = {"X": prep.X, "y": prep.y, "w_star": prep.w_star, "w_teacher": np.zeros(0)}
    atomic_write_npz(path / layout.PROBLEM_DATA, **arrays)
    return prep, arrays


def load_source_functions(src: SourceConfig, seed: int, path: Path) -> tuple[Callable, Callable]:
    """``(unravel, L(w, X, y))`` of a stored source problem: from ``source.pkl``, else by
    calling the source again (its digest checked)."""
    add_to_path(src.folder)
    try:
        record = dill.loads((path / layout.PROBLEM_SOURCE).read_bytes())
        sp = SourceProblem(data=(), **record)
        w, unravel = flatten_params(sp.params, "problem.source")
        if w.size != src.d:
            raise ValueError(f"{w.size} parameters, expected {src.d}")
        return unravel, mean_loss(sp, unravel)
    except Exception as exc:
        log.info(
            "problem from %s: calling the source (%s: %s)", src.source, type(exc).__name__, exc
        )
    prep = prepared(src, seed)
    return prep.unravel, prep.loss
