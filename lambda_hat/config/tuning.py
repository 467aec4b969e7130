"""The tuning YAML's schema (``parsl-optuna``): problems x methods, the reference, the Optuna
study settings and the output paths.

Read by the one loader (:func:`lambda_hat.config.load.load_tuning`): every value is checked
against the classes below *before any work starts*; a :class:`ConfigError` names the YAML path,
the value it got, what is allowed and how to fix it; an unknown key is never silently kept.
The problems and the ``reference`` and ``paths`` sections are shared with the run YAML
(:mod:`lambda_hat.problem.spec`, :mod:`lambda_hat.config.paths`).

Field docs follow the Parsl habit: each field says its type, unit, default and what ``None``
means, in the help text next to it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from lambda_hat.config.classes import ClassConfig, ClassMembers
from lambda_hat.config.paths import PathsConfig
from lambda_hat.methods import METHODS
from lambda_hat.problem.spec import ProblemEntry, ProblemSpec
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError, config_dataclass, field

__all__ = [
    "MethodName",
    "OptunaConfig",
    "Tuning",
    "TuningConfig",
    "ValidateConfig",
    "WarmConfig",
    "check_tuning",
]

MethodName = Literal[METHODS]  # the registry's names: sgld, vi, mclmc

#: The default ``optuna.ucb_sigmas``: combined SEs the ``ucb`` objective adds (plans/objective.md).
UCB_SIGMAS = 1.0


@config_dataclass
class ValidateConfig:
    """Re-runs of each study's best configurations on fresh seeds, after tuning (the best of N
    noisy trials is biased low: its error is partly its seed's luck)."""

    top_k: int = field(3, "configurations re-run per study: the best successful trials", ge=1)
    seeds: int = field(3, "fresh seeds per configuration (tuning seed + 1, + 2, ...)", ge=1)


@config_dataclass
class WarmConfig:
    """Warm trial processes: one per worker runs trial after trial (imports, problems and
    compiled programs paid once), replaced by a fresh one after a failure that kills it and
    when it reaches either limit below (plans/warm-workers.md)."""

    max_trials: int = field(
        200, "trials one warm process runs before a fresh one replaces it", ge=1
    )
    max_rss_mb: float | None = field(
        4096.0, "replace the warm process when its resident memory exceeds this (MiB)", gt=0
    )


@config_dataclass
class OptunaConfig:
    """Tuning workflow settings (parsl-optuna).

    ``search_space`` and ``enqueue`` are keyed by method name and checked against the method's
    own search space (:func:`lambda_hat.methods.search_space`) by the workflow before any work.
    ``search_space.<method>.<param>`` is either a fixed value (the parameter is not tuned) or a
    mapping ``{low, high, log}`` (numbers) / ``{choices: [...]}`` (categorical) replacing the
    default range. ``enqueue.<method>`` is a list of hyperparameter mappings tried first
    (warm start), once per study.
    """

    max_trials: int = field(100, "finished trials per (problem, method)", ge=1)
    batch_size: int | None = field(
        None,
        "trials in flight at once, across all studies; None: the executors' capacity "
        "(workers per node x nodes per block x max blocks)",
        ge=1,
    )
    hmc_budget_sec: float | None = field(None, "alias of reference.budget_sec", gt=0)
    method_budget_sec: float = field(600.0, "wall-clock budget per trial (s)", gt=0)
    objective: Literal["ucb", "abs", "huber"] = field(
        "ucb",
        "ucb: |llc_hat - llc_ref| + ucb_sigmas x the trial's SE beyond the reference's "
        "(sqrt(se_hat^2 + se_ref^2) - se_ref), so a noisy trial that landed near the reference "
        "by chance does not win; abs: |llc_hat - llc_ref|; huber: Huber loss of that error "
        "with huber_delta",
    )
    ucb_sigmas: float = field(
        UCB_SIGMAS, "ucb: combined SEs added to the |error| (and to a validated mean's)", ge=0
    )
    huber_delta: float | None = field(None, "Huber delta; None means 2 x the reference SE", gt=0)
    objectives: list[Literal["error", "runtime"]] = field(
        ["error"], "[error] (single objective) or [error, runtime] (Pareto front)"
    )
    sampler: Literal["tpe", "random", "qmc", "gp", "cmaes", "grid"] = field(
        "tpe",
        "Optuna sampler (gp needs torch, cmaes the cmaes package; grid: every point of the "
        "search space's finite choices once, see grid_points)",
    )
    n_startup_trials: int = field(
        10,
        "tpe: scrambled Sobol (QMC) trials before TPE models the space; gp, cmaes: their "
        "random start-up trials",
        ge=0,
    )
    grid_points: int | None = field(
        None,
        "sampler: grid: cut every numeric range into this many points (log-spaced for log "
        "ranges; other samplers ignore it); None: each searched parameter needs "
        "{choices: [...]} or a stepped range of at most 100 values",
        ge=2,
    )
    stop_after_stale: int | None = field(
        None,
        "stop a study early (converged) when its last K finished trials improved the best "
        "|error| by no more than stop_min_improvement in total; None: run max_trials",
        ge=1,
    )
    stop_min_improvement: float | None = field(
        None, "the improvement stop_after_stale calls real; None: the reference's SE", ge=0
    )
    seed: int = field(0, "sampler seed (offset per study) and the seed every trial runs with")
    search_space: dict = field({}, "per-method search-space overrides {method: {param: ...}}")
    enqueue: dict = field({}, "per-method warm-start trials {method: [{param: value}, ...]}")
    storage: str | None = field(
        None,
        "Optuna storage: a database URL (sqlite:///..., postgresql://...) or a journal file "
        "path; None: the journal file <results>/studies/journal.log",
    )
    allow_failed_reference: bool = field(
        False, "tune problems whose HMC reference failed its quality gate"
    )
    isolate: bool = field(
        True, "run each trial in a killable child process (hard timeout, crash containment)"
    )
    timeout_grace: float = field(
        1.5, "a trial is killed after method_budget_sec x timeout_grace (s)", ge=1
    )
    warm: WarmConfig | None = field(
        WarmConfig(),
        "keep a warm trial process per worker (with isolate); None: a fresh process per trial",
    )
    max_consecutive_failures: int | None = field(
        10, "stop a study after this many failures without any success; None: never", ge=1
    )
    infrastructure_retries: int = field(
        2, "resubmissions of a trial whose worker or node was lost", ge=0
    )
    pruner: Literal["none", "median", "percentile", "hyperband"] = field(
        "median",
        "stop trials whose intermediate LLC estimate is worse than other trials' at the same "
        "fraction of their work (single objective only)",
    )
    pruner_warmup: float = field(
        0.3, "fraction of its work a trial does before it may be pruned", ge=0, lt=1
    )
    pruner_startup_trials: int = field(
        5, "finished trials a study needs before median/percentile pruning starts", ge=0
    )
    pruner_percentile: float = field(
        25.0, "percentile pruner: keep trials within this best percentage at a step", gt=0, lt=100
    )
    validate: ValidateConfig | None = field(
        ValidateConfig(),
        "after tuning, re-run each study's top_k configurations on fresh seeds and recommend "
        "the best validated mean |error|; None: no validation",
    )


@config_dataclass
class TuningConfig:
    """A whole tuning YAML (``parsl-optuna``)."""

    problems: list[ProblemEntry] = field([], "problems (targets) to study, one study each")
    classes: list[ClassConfig] = field(
        [], "problem classes: one study per (class, method) over its train members"
    )
    methods: list[MethodName] = field([], "methods to tune")
    reference: ReferenceConfig = field(ReferenceConfig(), "HMC reference settings")
    optuna: OptunaConfig = field(OptunaConfig(), "tuning settings")
    paths: PathsConfig = field(PathsConfig(), "output locations")


@dataclass(frozen=True)
class Tuning:
    """A loaded tuning YAML: the validated config, its resolved problems in order, its
    classes by name (members resolved) and each problem's reference kind (``kinds``: pid ->
    hmc | theory | none, class members included)."""

    config: TuningConfig
    problems: list[ProblemSpec]
    source: str
    classes: dict[str, ClassMembers] = dataclasses.field(default_factory=dict)
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)

    def reference_kind(self, pid: str) -> str:
        """What problem ``pid``'s runs are scored against: hmc | theory | none."""
        return self.kinds.get(pid, "hmc")


def check_tuning(cfg: TuningConfig) -> TuningConfig:
    """``cfg`` after the checks across fields (raises :class:`ConfigError`): at least one
    problem or class, class names once each and usable in a path, every class with train
    members; ``optuna.hmc_budget_sec`` is an alias of ``reference.budget_sec``, one value kept."""
    if not cfg.problems and not cfg.classes:
        raise ConfigError("problems", "is empty.", "list at least one problem (or a class).")
    _check_classes(cfg.classes)
    alias, canon = cfg.optuna.hmc_budget_sec, cfg.reference.budget_sec
    if alias is None:
        return cfg
    if canon is not None and canon != alias:
        raise ConfigError(
            "optuna.hmc_budget_sec",
            f"is {alias} but reference.budget_sec is {canon}.",
            "set only one of them.",
        )
    ref = dataclasses.replace(cfg.reference, budget_sec=alias)
    return dataclasses.replace(cfg, reference=ref)


def _check_classes(classes: list[ClassConfig]) -> None:
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", c.name):
            raise ConfigError(
                f"classes[{i}].name",
                f"got {c.name!r}.",
                "use letters, digits, _ and - only (it names files and studies).",
            )
        if c.name in seen:
            raise ConfigError(f"classes[{i}].name", f"{c.name!r} is listed twice.", "rename one.")
        seen.add(c.name)
        if not c.train:
            raise ConfigError(
                f"classes[{i}].train", "is empty.", "list the members to tune against."
            )
