"""Stage 0 of ``lambda-hat run``: the check, before anything is written.

The runs YAML (:mod:`lambda_hat.config.runs`), every ``from_study`` set resolved against its
stored study — ``pick: best`` the study's best successful trial (its full hyperparameters from
the trial's ``metrics.json``), ``pick: validated`` the validation stage's recommendation
(:func:`lambda_hat.study.validation.recommendation`) — and the Parsl config. A missing results
folder, study or validation is a :class:`ConfigError` that says what to run first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from lambda_hat import layout
from lambda_hat.config.runs import FromStudy, Runs
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
    that trial's validation verdict (``{"reliable", "reliability"}``; None: not validated)."""

    method: str
    index: int
    hyperparams: dict
    source_study: str | None = None
    source_trial: int | None = None
    source_pick: str | None = None
    source_verdict: dict | None = None


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


def _resolve_sets(exp: Runs, pids: list[str]) -> dict[str, list[RunSet]]:
    cfg, opened = exp.config, {}
    out: dict[str, list[RunSet]] = {pid: [] for pid in pids}
    try:
        for method, sets in cfg.methods.items():
            for i, hs in enumerate(sets):
                where = f"methods.{method}[{i}]"
                for pid in pids:
                    source: tuple = (None, None, None, None)
                    hp = dict(hs.fixed)
                    if hs.from_study is not None:
                        fs = hs.from_study
                        tuned, name, number, verdict = _from_study(fs, pid, method, where, opened)
                        hp = {**tuned, **hs.fixed}
                        source = (name, number, fs.pick, verdict)
                    hp = runs.resolve_hyperparams(method, hp, f"{where}.fixed")
                    out[pid].append(RunSet(method, i, hp, *source))
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
            src = (
                f" from {s.source_study} #{s.source_trial} ({s.source_pick})"
                if s.source_study
                else ""
            )
            label = results.study_label(plan.problems[pid]["label"], s.method)
            lines.append(f"  {label} ({pid}) set {s.index}{src}: {s.hyperparams}")
    return "\n".join(lines)
