"""The resolved specs (plain dicts) of a ``source:`` problem entry: the source called once,
its checkpoints selected, every problem checked (:mod:`lambda_hat.problem.source_checks`).

A source that returns ``params`` is one problem; one that returns ``checkpoints`` is one problem
per checkpoint (those the entry's ``checkpoints:`` steps name, else all), each with its index,
step and the source's losses in ``source``. Checkpoints are never blocked by the gradient check
(early ones are not at a minimum, by design): the measured move of the posterior's mode,
``shift_sd``, is recorded instead (``llc_runs.parquet``'s ``shift_sd`` column).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lambda_hat.problem.checkpoints import at_checkpoint, checkpoint_list
from lambda_hat.problem.source import SourceProblem, call_source
from lambda_hat.problem.source_checks import prepare_source
from lambda_hat.schema import ConfigError

__all__ = ["source_problems"]


def source_problems(entry: Any, where: str, folder: Path | str | None) -> list[dict]:
    """The resolved ProblemSpec mappings of the ``source:`` entry ``entry`` (a ProblemEntry)."""
    folder = None if folder is None else str(Path(folder).resolve())
    sp = call_source(entry.source, entry.args, entry.seed, folder, where)
    if sp.checkpoints is None:
        if entry.checkpoints is not None:
            raise ConfigError(
                f"{where}.checkpoints",
                "the source returns params, not checkpoints.",
                "remove checkpoints:, or return SourceProblem(checkpoints=[...]).",
            )
        return [_resolved(entry, sp, where, folder, entry.allow_nonminimum, {})]
    cks = checkpoint_list(sp, where)
    steps = [c.step for c in cks]
    wanted = steps if entry.checkpoints is None else entry.checkpoints
    unknown = [s for s in wanted if s not in steps]
    if unknown or not wanted:
        raise ConfigError(
            f"{where}.checkpoints",
            f"steps {unknown} are not among the source's checkpoints {steps}."
            if unknown
            else "is empty.",
            "list steps the source returns, or remove checkpoints: to estimate them all.",
        )
    return [
        _resolved(
            entry,
            at_checkpoint(sp, k, where),
            where,
            folder,
            True,
            {
                "checkpoint": k,
                "step": c.step,
                "train_loss": c.train_loss,
                "test_loss": c.test_loss,
            },
        )
        for k, c in enumerate(cks)
        if c.step in wanted
    ]


def _resolved(entry, sp: SourceProblem, where: str, folder, allow: bool, extra: dict) -> dict:
    """One source problem's resolved spec (a checkpoint: never blocked by the gradient check,
    its shift recorded as ``source.shift_sd``)."""
    prep = prepare_source(sp, where, allow)
    loss = prep.kind if prep.kind in ("gaussian", "cross_entropy") else "gaussian"
    data = {"n": prep.n, "input_dim": prep.input_dim, "output_dim": prep.output_dim}
    source = {"source": entry.source, "args": dict(entry.args), "folder": folder}
    resolved = {
        "model": {"depth": 0, "widths": []},
        "data": {**data, "loss": loss, "noise": prep.noise},
        "teacher": {},
        "seed": entry.seed,
        "source": {
            **source,
            "digest": prep.digest,
            "d": prep.d,
            "loss": prep.kind,
            "noise": prep.noise,
            "shift_sd": sd if math.isfinite(sd := prep.info.get("shift_sd", 0.0)) else None,
            **extra,
        },
    }
    return resolved
