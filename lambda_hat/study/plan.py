"""The checked plan of a ``parsl-optuna`` run: stage 0, before anything is written.

The experiment YAML with the CLI overrides, every problem's presets, the methods'
search-space overrides and warm-start trials (:mod:`lambda_hat.study.space`), the sampler's
package and the Parsl config file are checked; any error is a :class:`ConfigError` naming the
field and the fix. Each stage then takes what it needs from the :class:`Plan` once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution

from lambda_hat import layout
from lambda_hat.config.tuning import Tuning, TuningConfig
from lambda_hat.parallel import configs
from lambda_hat.problem.build import problem_id
from lambda_hat.schema import ConfigError
from lambda_hat.study.grid_sampler import check_grid
from lambda_hat.study.optuna_samplers import check_sampler
from lambda_hat.study.space import Searched, check_enqueue, method_space
from lambda_hat.trial import identity as runs

log = logging.getLogger("lambda_hat.workflow")

#: Trials in flight when neither optuna.batch_size nor the executors say how many.
DEFAULT_BATCH = 16


@dataclass
class Plan:
    """Everything the run needs, checked before anything is written."""

    exp: Tuning
    pids: list[str]
    spaces: dict[str, dict[str, Searched]]
    fixed: dict[str, dict[str, Any]]
    enqueue: dict[str, list[dict]]
    parsl_config: Any
    artifacts: Path
    results: Path
    trial_target: str

    @property
    def cfg(self) -> TuningConfig:
        return self.exp.config

    @property
    def batch_size(self) -> int:
        """Trials in flight: ``optuna.batch_size``, or (None) the executors' capacity."""
        given = self.cfg.optuna.batch_size
        return given or configs.capacity(self.parsl_config) or DEFAULT_BATCH

    @property
    def gammas(self) -> list[float]:
        """γ of every posterior a trial may sample: the reference's, then each fixed γ and γ
        choice of a method's search space (sorted, each once). One HMC reference each."""
        out = {float(self.cfg.reference.gamma)}
        for m in self.cfg.methods:
            if self.fixed[m].get("gamma") is not None:
                out.add(float(self.fixed[m]["gamma"]))
            dist = self.spaces[m].get("gamma")
            if isinstance(dist, CategoricalDistribution):
                out.update(float(c) for c in dist.choices)
        rest = sorted(out - {float(self.cfg.reference.gamma)})
        return [float(self.cfg.reference.gamma), *rest]


def check_plan(exp: Tuning, parsl_config_path: str | None, trial_target: str | None) -> Plan:
    """Check everything that can be checked without writing a byte; raises ConfigError.

    ``parsl_config_path`` None means the local default (``--local``)."""
    cfg = exp.config
    _check_lists(cfg, exp.source)
    try:
        check_sampler(cfg.optuna)
        spaces, fixed, enqueue = _check_spaces(cfg)
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=exp.source) from None
    paths = cfg.paths
    artifacts, res = Path(paths.artifacts).resolve(), Path(paths.results).resolve()
    parsl_config = (
        configs.load_parsl_config(parsl_config_path)
        if parsl_config_path
        else configs.local_config(run_dir=res / layout.RUNINFO)
    )
    pids = list(dict.fromkeys(problem_id(s) for s in exp.problems))
    _warn_batch_size(cfg.optuna.batch_size, configs.capacity(parsl_config))
    return Plan(
        exp,
        pids,
        spaces,
        fixed,
        enqueue,
        parsl_config,
        artifacts,
        res,
        trial_target or runs.DEFAULT_TRIAL_TARGET,
    )


def _check_lists(cfg: TuningConfig, source: str | None) -> None:
    """The methods (some, each once), the objectives, and that every per-method entry of
    ``optuna.search_space`` and ``optuna.enqueue`` names one of the methods."""
    if not cfg.methods:
        raise ConfigError(
            "methods", "is empty.", "list methods to tune, e.g. [sgld, vi].", source=source
        )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(
            "methods",
            f"lists a method twice: {cfg.methods}.",
            "list each method once.",
            source=source,
        )
    oc = cfg.optuna
    if len(set(oc.objectives)) != len(oc.objectives) or oc.objectives[0] != "error":
        raise ConfigError(
            "optuna.objectives",
            f"got {oc.objectives}.",
            "use [error] or [error, runtime].",
            source=source,
        )
    for key in ("search_space", "enqueue"):
        for m in getattr(oc, key):
            if m not in cfg.methods:
                raise ConfigError(
                    f"optuna.{key}.{m}",
                    f"{m!r} is not in methods {cfg.methods}.",
                    "add the method to methods or remove this entry.",
                    source=source,
                )


def _check_spaces(cfg: TuningConfig) -> tuple[dict, dict, dict]:
    """Per method: its search space, its fixed values and its warm-start trials (checked)."""
    oc = cfg.optuna
    spaces, fixed, enqueue = {}, {}, {}
    for m in cfg.methods:
        spaces[m], fixed[m] = method_space(m, oc.search_space.get(m), f"optuna.search_space.{m}")
        enqueue[m] = check_enqueue(m, oc.enqueue.get(m), spaces[m], fixed[m])
        check_grid(oc, spaces[m], f"optuna.search_space.{m}")
    return spaces, fixed, enqueue


def _warn_batch_size(given: int | None, capacity: int | None) -> None:
    """Warn when ``optuna.batch_size`` differs from what the executors run at once."""
    if given is not None and capacity is not None and given != capacity:
        log.warning(
            "optuna.batch_size = %d trials in flight, but the executors run %d at once: %s",
            given,
            capacity,
            "workers will idle (set batch_size: null to fill them)"
            if given < capacity
            else "trials will queue",
        )
