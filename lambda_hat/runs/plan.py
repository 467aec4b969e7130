"""Stage 0 of ``lambda-hat run``: the check, before anything is written.

The runs YAML (:mod:`lambda_hat.config.runs`), every ``from_study`` set resolved against its
stored study — ``pick: best`` the study's best successful trial (its full hyperparameters from
the trial's ``metrics.json``), ``pick: validated`` the validation stage's recommendation
(:func:`lambda_hat.study.validation.recommendation`) — every ``from_study: {class: NAME}``
set read from the class study's recommendation (:mod:`lambda_hat.config.recommendation`), and
the Parsl config. A missing results folder, study, recommendation or validation is a
:class:`ConfigError` that says what to run first. Values in ε_max units (``scale: stability``,
a class recommendation's scaled names) stay units here: each problem's ε_max comes with its
reference record (:meth:`RunSet.absolute`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from lambda_hat import layout, methods
from lambda_hat.config.recommendation import ClassSetting, read_class_recommendation
from lambda_hat.config.runs import FromStudy, HyperSet, Runs, has_stability_limit, split_units
from lambda_hat.log import fmt_seconds
from lambda_hat.parallel import configs
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.results import tables as results
from lambda_hat.schema import ConfigError
from lambda_hat.study import storage as studies
from lambda_hat.study import validation
from lambda_hat.study.tell import best_successful
from lambda_hat.trial import identity as runs

__all__ = ["ExperimentPlan", "RunSet", "describe", "plan_experiments"]


@dataclass(frozen=True)
class RunSet:
    """One resolved hyperparameter set of a method on one problem: its index in
    ``methods.<method>``, the full hyperparameters, the study and trial they came from, and
    that trial's validation verdict (``{"reliable", "reliability"}``; None: not validated).

    ``units``: the hyperparameters given as fractions of the problem's ε_max (a ``fixed``
    ``{value, scale: stability}``, a class recommendation's scaled names); ``hyperparams``
    holds the fractions in their place until :meth:`absolute` converts them. ``from_class``: the class study
    the set came from."""

    method: str
    index: int
    hyperparams: dict
    source_study: str | None = None
    source_trial: int | None = None
    source_pick: str | None = None
    source_verdict: dict | None = None
    units: dict = field(default_factory=dict)
    from_class: str | None = None

    def absolute(self, curvature: dict | None) -> tuple[dict, float | None]:
        """(the hyperparameters with every unit converted, ε_max of the method on the problem
        whose curvature record this is; None when unknown). ValueError when units need an
        ε_max the record does not give."""
        try:
            eps_max = methods.step_limit(self.method, curvature["a_max"], curvature["d"])
        except (KeyError, TypeError, ValueError):
            eps_max = None
        if not self.units:
            return self.hyperparams, eps_max
        if eps_max is None:
            why = (curvature or {}).get("error", "no curvature record")
            raise ValueError(
                f"{', '.join(self.units)} given in ε_max units, but this problem's ε_max is "
                f"unknown ({why}): give absolute values"
            )
        hp = {**self.hyperparams, **{k: f * eps_max for k, f in self.units.items()}}
        return runs.resolve_hyperparams(self.method, hp), eps_max


@dataclass
class ExperimentPlan:
    """Everything the run needs, checked before anything is written."""

    exp: Runs
    specs: dict[str, ProblemSpec]
    problems: dict[str, dict]  # pid -> results.problem_columns
    sets: dict[str, list[RunSet]]  # pid -> its sets, every method
    parsl_config: Any
    artifacts: Path
    results: Path

    def gammas(self, pid: str) -> list[float]:
        """γ of every posterior the problem's runs sample: the reference's, then the sets'."""
        first = float(self.exp.config.reference.gamma)
        out = {self.gamma_of(s) for s in self.sets[pid]}
        return [first, *sorted(out - {first})]

    def gamma_of(self, runset: RunSet) -> float:
        """The γ of the posterior a set's runs sample (the reference's unless it sets one)."""
        gamma = runset.hyperparams.get("gamma")
        return float(self.exp.config.reference.gamma if gamma is None else gamma)


def _storage_of(fs: FromStudy, where: str):
    """The tuning run's storage; a ConfigError saying what to run when there is none."""
    tune = "run parsl-optuna with the tuning config first (e.g. parsl-optuna --config "
    tune += "config/optuna_demo.yaml --local), or point from_study.results at its paths.results."
    if fs.storage is not None:
        return studies.open_storage_at(fs.storage), studies.describe_storage(fs.storage)
    folder = Path(fs.results)
    if not folder.is_dir():
        raise ConfigError(f"{where}.results", f"there is no results folder {folder}.", tune)
    journal = studies.journal_path(folder)
    if not journal.is_file():
        raise ConfigError(f"{where}.results", f"{folder} holds no study journal {journal}.", tune)
    return studies.open_storage_at(journal), str(journal)


def _verdict(found: dict | None) -> dict | None:
    """``{"reliable", "reliability"}`` of a stored verdict or recommendation (None: none)."""
    if not found or "reliable" not in found:
        return None
    return {"reliable": bool(found["reliable"]), "reliability": found.get("reliability")}


def _tuned(study: optuna.Study, fs: FromStudy, where: str) -> tuple[dict, int, dict | None]:
    """The picked hyperparameters of ``study``, the trial they came from and its validation
    verdict (None when that trial was not validated)."""
    name = study.study_name
    if fs.pick == "validated":
        rec = validation.recommendation(study)
        if rec is None:
            raise ConfigError(
                f"{where}.pick",
                f"study {name} has no validated recommendation.",
                "run parsl-optuna with optuna.validate set (e.g. {top_k: 3, seeds: 3}) and "
                "the same config first, or use pick: best.",
            )
        return dict(rec["hyperparams"]), int(rec["trial_number"]), _verdict(rec)
    best = best_successful(study)
    if best is None:
        raise ConfigError(
            f"{where}.pick",
            f"study {name} has no successful trial.",
            "tune it further (raise optuna.max_trials and rerun parsl-optuna) or use fixed values.",
        )
    metrics = runs.load_metrics(best.user_attrs.get("run_dir") or "")
    if not metrics or not isinstance(metrics.get("hyperparams"), dict):
        raise ConfigError(
            f"{where}.pick",
            f"the run of trial #{best.number} of {name} ({best.user_attrs.get('run_dir')}) has "
            "no metrics.json with its hyperparameters.",
            "run lambda-hat run where the tuning run's artifacts are, or use fixed values.",
        )
    verdict = _verdict(validation.verdict_of_trial(study, best.number))
    return dict(metrics["hyperparams"]), best.number, verdict


def _from_study(fs: FromStudy, pid: str, method: str, where: str, opened: dict) -> tuple:
    """``(hyperparams, study name, trial number, verdict)`` of a ``from_study`` set on problem
    ``pid``."""
    key = fs.storage or str(Path(fs.results).resolve())
    if key not in opened:
        opened[key] = _storage_of(fs, f"{where}.from_study")
    storage, described = opened[key]
    name = studies.study_name(pid, method)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise ConfigError(
            f"{where}.from_study",
            f"{described} has no study {name} (it has: {', '.join(sorted(names)) or 'none'}).",
            f"tune this problem with {method} first (the problem must be written as in the "
            "tuning config, so that its pid is the same), or use fixed values.",
        )
    study = optuna.load_study(study_name=name, storage=storage)
    hp, number, verdict = _tuned(study, fs, f"{where}.from_study")
    return hp, name, number, verdict


def _from_class(fs: FromStudy, method: str, where: str) -> tuple[dict, dict, ClassSetting]:
    """(absolute values, ``{name: fraction of ε_max}``, the setting) of a class set."""
    rec = read_class_recommendation(fs.results, fs.class_, method, fs.pick, f"{where}.from_study")
    units = {k: float(rec.units[k]) for k in rec.scaled}
    plain = {k: v for k, v in rec.units.items() if k not in units}
    for name in units:
        if not has_stability_limit(method, name, plain):
            raise ConfigError(
                f"{where}.from_study.class",
                f"class {rec.name!r} scales {method}'s {name}, which has no stability limit.",
                "rewrite the recommendation with that value absolute (not in scaled).",
            )
    return plain, units, rec


def _one_set(hs: HyperSet, method: str, where: str, pids: list[str], opened: dict) -> dict:
    """pid -> the :class:`RunSet` of set ``hs`` on that problem."""
    fixed, fixed_units = split_units(method, hs.fixed, f"{where}.fixed")
    fs, out = hs.from_study, {}
    if fs is not None and fs.class_ is not None:
        plain, units, rec = _from_class(fs, method, where)
        units = {k: v for k, v in {**units, **fixed_units}.items() if k not in fixed}
        hp = runs.resolve_hyperparams(method, {**plain, **fixed, **units}, f"{where}.fixed")
        source = dict(source_trial=rec.trial, source_pick=rec.pick, from_class=rec.name)
        return {pid: RunSet(method, 0, hp, units=units, **source) for pid in pids}
    for pid in pids:
        hp, source = dict(fixed), {}
        if fs is not None:
            tuned, name, number, verdict = _from_study(fs, pid, method, where, opened)
            hp = {**tuned, **fixed}
            source = dict(
                source_study=name, source_trial=number, source_pick=fs.pick, source_verdict=verdict
            )
        hp = runs.resolve_hyperparams(method, {**hp, **fixed_units}, f"{where}.fixed")
        out[pid] = RunSet(method, 0, hp, units=fixed_units, **source)
    return out


def _resolve_sets(exp: Runs, pids: list[str]) -> dict[str, list[RunSet]]:
    cfg, opened = exp.config, {}
    out: dict[str, list[RunSet]] = {pid: [] for pid in pids}
    try:
        for method, sets in cfg.methods.items():
            for i, hs in enumerate(sets):
                for pid, runset in _one_set(
                    hs, method, f"methods.{method}[{i}]", pids, opened
                ).items():
                    out[pid].append(dataclasses.replace(runset, index=i))
    finally:
        for storage, _ in opened.values():
            if isinstance(storage, studies.Journal):
                storage.backend.close()
    return out


def plan_experiments(exp: Runs, parsl_config_path: str | None = None) -> ExperimentPlan:
    """Stage 0: resolve every set and load the Parsl config; raises ConfigError, writes nothing.

    ``parsl_config_path`` None: this machine, one worker per core (``--local``)."""
    specs: dict[str, ProblemSpec] = {}
    for spec in exp.problems:
        specs.setdefault(problem_id(spec), spec)
    try:
        sets = _resolve_sets(exp, list(specs))
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=exp.source) from None
    paths = exp.config.paths
    res = Path(paths.results).resolve()
    parsl_config = (
        configs.load_parsl_config(parsl_config_path)
        if parsl_config_path
        else configs.local_config(run_dir=res / layout.RUNINFO)
    )
    return ExperimentPlan(
        exp,
        specs,
        results.problem_table(exp.config.problems, exp.problems),
        sets,
        parsl_config,
        Path(paths.artifacts).resolve(),
        res,
    )


def describe(plan: ExperimentPlan) -> str:
    """The plan in a few lines: counts, then every set with its source."""
    cfg = plan.exp.config
    n_runs = sum(len(s) for s in plan.sets.values()) * len(cfg.seeds)
    lines = [
        f"config {plan.exp.source}: {len(plan.specs)} problem(s), {n_runs} run(s) "
        f"(seeds {cfg.seeds}, {fmt_seconds(cfg.budget_sec)} each); artifacts {plan.artifacts}"
    ]
    for pid, sets in plan.sets.items():
        for s in sets:
            src = ""
            if s.source_study or s.from_class:
                study = s.source_study or f"class {s.from_class}"
                src = f" from {study} #{s.source_trial} ({s.source_pick})"
            hp = {k: v for k, v in s.hyperparams.items() if k not in s.units}
            units = "".join(f", {k}: {f:g} x ε_max" for k, f in s.units.items())
            label = results.study_label(plan.problems[pid]["label"], s.method)
            lines.append(f"  {label} ({pid}) set {s.index}{src}: {hp}{units}")
    return "\n".join(lines)
