"""Problem classes (the tuning YAML's ``classes:``): named sets of problems tuned as one.

A class lists ``train`` members (tuned against: each needs a reference) and ``holdout``
members (never seen by the tuner; the held-out proof runs the class's settings on them). A
member is written as a problem (:class:`lambda_hat.problem.spec.ProblemEntry`), optionally with
``sweep:`` — dotted paths into the entry, each with a list of values — which expands into one
member per combination (the cartesian product, in the order written)::

    train:
      - model: dln
        data: dln
        overrides: {model: {widths: [3]}}
        sweep: {model.widths: [[2], [3], [4]], data.n: [1000, 2000], seed: [0, 1]}

``seed``, ``source`` and ``model``/``data``/``teacher`` (preset names) are entry keys;
``args.<name>`` is a source's keyword argument; any other path is an override (``model.widths``
is ``overrides.model.widths``). plans/transfer.md says why a class
study is scored and pruned as it is.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Literal

from lambda_hat.problem.spec import PRESET_GROUPS, ProblemEntry, ProblemSpec
from lambda_hat.schema import ConfigError, config_dataclass, field, validate

__all__ = ["ClassConfig", "ClassMembers", "expand_members"]

_ENTRY_KEYS = ("model", "data", "teacher", "seed", "source")


@config_dataclass
class ClassConfig:
    """One problem class: its members and how a class study scores and prunes a setting."""

    name: str = field(help="the class's name (its studies are class:<name>:<method>)")
    train: list[dict] = field([], "members tuned against (problems, each may carry sweep:)")
    holdout: list[dict] = field([], "members never seen by the tuner: the held-out proof")
    objective: Literal["rel", "z"] = field(
        "rel",
        "rel: mean over train members of |λ̂ − λ_ref| / λ_ref (with optuna.objective ucb, plus "
        "ucb_sigmas × the run's SE beyond the reference's, also / λ_ref); z: mean |z| with the "
        "combined SE",
    )
    halving: bool = field(
        True,
        "successive halving over members: a setting worse than the median of earlier settings "
        "on the first third of the members (smallest d first) stops before the rest",
    )
    max_trials: int | None = field(
        None, "finished trials of each class study; None: optuna.max_trials", ge=1
    )
    top_k: int = field(3, "settings run on every holdout member (the best by objective)", ge=1)
    holdout_seeds: int = field(2, "seeds per holdout run (fresh: tuning seed + 1, + 2, ...)", ge=1)
    baseline: bool = field(
        True,
        "run the fixed SGLD baseline on the holdout members too (ε = 1e-4 absolute, RMSProp, "
        "4 chains × 2,000 steps, the same posterior)",
    )


@dataclass(frozen=True)
class ClassMembers:
    """A class with its members resolved (in the order written, sweeps expanded)."""

    config: ClassConfig
    train: list[ProblemSpec]
    holdout: list[ProblemSpec]
    train_entries: list[ProblemEntry]
    holdout_entries: list[ProblemEntry]


def expand_members(raw: list, where: str) -> list[tuple[str, ProblemEntry]]:
    """``(where, entry)`` of every member of ``raw`` (a class's ``train`` or ``holdout``),
    each ``sweep`` expanded; ConfigError naming the member and the fix."""
    out = []
    for i, member in enumerate(raw):
        sub = f"{where}[{i}]"
        if not isinstance(member, dict):
            raise ConfigError(sub, f"got {member!r}, expected a problem mapping.")
        member = copy.deepcopy(member)
        sweep = member.pop("sweep", None) or {}
        if not isinstance(sweep, dict):
            raise ConfigError(f"{sub}.sweep", f"got {sweep!r}.", "write {path: [values], ...}.")
        for path, values in sweep.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"{sub}.sweep.{path}", f"got {values!r}.", "give a non-empty list of values."
                )
        names = list(sweep)
        for j, combo in enumerate(itertools.product(*(sweep[k] for k in names))):
            entry = copy.deepcopy(member)
            for path, value in zip(names, combo, strict=True):
                _set(entry, path, value, f"{sub}.sweep.{path}")
            label = f"{sub}" if not names else f"{sub} (sweep #{j})"
            out.append((label, validate(entry, ProblemEntry, label)))
    return out


def _set(entry: dict, path: str, value, where: str) -> None:
    """Set dotted ``path`` of a member entry (an entry key, or a path under ``overrides``)."""
    head, _, rest = path.partition(".")
    if head in _ENTRY_KEYS and not rest:
        entry[head] = value
        return
    if head == "args" and rest:  # a source's keyword argument
        entry.setdefault("args", {})[rest] = value
        return
    if head not in PRESET_GROUPS or not rest:
        raise ConfigError(
            where,
            f"cannot sweep {path!r}.",
            "sweep seed, model/data/teacher (preset names) or a path under them "
            "(model.widths, data.n, teacher.rank, ...), or a source's args.<name>.",
        )
    node = entry.setdefault("overrides", {}).setdefault(head, {})
    keys = rest.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
