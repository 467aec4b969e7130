"""Stage 2c of ``parsl-optuna``: the class studies, one per (class, method) (plans/transfer.md).

The class members' references come from the reference stage with everyone else's; a class
whose train member has no usable reference is not tuned (the reason logged). The tasks'
studies live in the same storage as the per-problem ones, named ``class:<name>:<method>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
from optuna.distributions import CategoricalDistribution

from lambda_hat import layout, methods
from lambda_hat.config.classes import ClassMembers
from lambda_hat.hashing import content_hash
from lambda_hat.problem.build import problem_id
from lambda_hat.reference.stage import unusable
from lambda_hat.results.parquet import write_parquet
from lambda_hat.schema import ConfigError
from lambda_hat.study import storage as studies
from lambda_hat.study.class_driver import ClassDriver
from lambda_hat.study.classes import MEMBERS_ATTR, ClassTask, Member, class_space, class_study_pid
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.payloads import base_payload, locator, resolver, trial_ref
from lambda_hat.study.plan import Plan

__all__ = [
    "check_classes",
    "class_pids",
    "class_rows",
    "class_specs",
    "make_class_tasks",
    "member_label",
    "run_class_studies",
    "theory_gap",
    "write_class_table",
]

log = logging.getLogger("lambda_hat.workflow")

#: ``class_trials.parquet``: one row per (class trial, member); ``hyperparams`` (absolute),
#: ``eps_max`` and ``<name>_units`` come with them (:func:`lambda_hat.results.to_table`).
CLASS_COLUMNS = {
    "class": pa.string(),
    "method": pa.string(),
    "trial_number": pa.int64(),
    "state": pa.string(),
    "objective": pa.float64(),
    "pid": pa.string(),
    "label": pa.string(),
    "d": pa.int64(),
    "llc_hat": pa.float64(),
    "se_hat": pa.float64(),
    "llc_ref": pa.float64(),
    "se_ref": pa.float64(),
    "value": pa.float64(),
    "status": pa.string(),
    "run_id": pa.string(),
}


def class_specs(plan: Plan) -> list:
    """Every member of every class (train and holdout), for the reference stage."""
    out = []
    for members in plan.exp.classes.values():
        out.extend(members.train)
        out.extend(members.holdout)
    return out


def class_pids(plan: Plan) -> list[str]:
    """The pids of every class member, each once, in the order written."""
    return list(dict.fromkeys(problem_id(s) for s in class_specs(plan)))


def check_classes(plan: Plan) -> None:
    """A listed problem without a reference cannot be tuned; class studies sample the
    reference's posterior: no method may search or fix γ."""
    for i, spec in enumerate(plan.exp.problems):
        if plan.exp.reference_kind(problem_id(spec)) == "none":
            raise ConfigError(
                f"problems[{i}].reference",
                "is none: a study scores its trials against a reference.",
                "use hmc or theory, or make the problem a class holdout member (or run it "
                "with lambda-hat run).",
                source=plan.exp.source,
            )
    if not plan.exp.classes:
        return
    for m in plan.cfg.methods:
        gamma = plan.spaces[m].get("gamma")
        fixed = plan.fixed[m].get("gamma")
        if isinstance(gamma, CategoricalDistribution) or fixed is not None:
            raise ConfigError(
                f"optuna.search_space.{m}.gamma",
                "class studies sample the reference's posterior, and every member's runs are "
                "scored against its reference at reference.gamma.",
                "drop gamma from the search space (set reference.gamma instead).",
                source=plan.exp.source,
            )


def member_label(model: str, spec) -> str:
    """A member's readable name: preset, layer widths, n and seed (``dln 5-4-5 n1000 s0``)."""
    widths = spec.model.widths if spec.model.widths is not None else []
    shape = "-".join(str(w) for w in [spec.data.input_dim, *widths, spec.data.output_dim])
    return f"{model} {shape} n{spec.data.n} s{spec.seed}"


def _members(specs: list, entries: list, refs) -> list[Member]:
    out = []
    for spec, entry in zip(specs, entries, strict=True):
        pid = problem_id(spec)
        ref = refs[pid]
        name = entry.model if entry.source is None else entry.source.rpartition(":")[2]
        label = member_label(name, spec)
        out.append(Member(pid, spec, {**trial_ref(ref), "curvature": ref.get("curvature")}, label))
    return out


def make_class_tasks(plan: Plan, storage, refs) -> tuple[list[ClassTask], list[str]]:
    """One task per (usable class, method); the reasons classes were not tuned."""
    oc, tasks, problems = plan.cfg.optuna, [], []
    for name, members in plan.exp.classes.items():
        why = _unusable(members, refs, oc.allow_failed_reference)
        if why:
            problems.append(f"class {name} is not tuned: {why}")
            continue
        train = sorted(_members(members.train, members.train_entries, refs), key=lambda m: m.d)
        holdout = _members(members.holdout, members.holdout_entries, refs)
        for method in plan.cfg.methods:
            tasks.append(_task(plan, storage, name, members, method, train, holdout))
    return tasks, problems


def _unusable(members: ClassMembers, refs, allow_failed: bool) -> str | None:
    for spec in members.train:
        why = unusable(refs, problem_id(spec), allow_failed)
        if why:
            return f"train member {problem_id(spec)}: {why}"
    return None


def _task(plan: Plan, storage, name, members, method, train, holdout) -> ClassTask:
    oc = plan.cfg.optuna
    pid = class_study_pid(name)
    seed = oc.seed + int(content_hash(studies.study_name(pid, method))[:7], 16)
    study = studies.open_study(storage, pid, method, oc, seed)
    space, scaled = class_space(plan.spaces[method])

    def payload_of(m: Member) -> dict:
        return base_payload(m.spec, method, m.ref, oc, plan.artifacts, plan.trial_target)

    def locate_of(m: Member):
        return locator(plan.trial_target, plan.artifacts, m.spec, method)

    return ClassTask(
        name=name,
        method=method,
        study=study,
        space=space,
        scaled=scaled,
        fixed=plan.fixed[method],
        members=train,
        config=members.config,
        payload_of=payload_of,
        locate_of=locate_of,
        resolve=resolver(method),
        ucb_sigmas=oc.ucb_sigmas if oc.objective == "ucb" else 0.0,
        objectives=tuple(oc.objectives),
        max_trials=members.config.max_trials or oc.max_trials,
        max_retries=oc.infrastructure_retries,
        holdout=holdout,
        guard=FailureGuard(
            max_consecutive_failures=oc.max_consecutive_failures,
            culprits=methods.culprits(method),
            space=space,
        ),
    )


def theory_gap(task: ClassTask) -> tuple[float, float, int] | None:
    """The signed relative gap (λ_HMC − λ_theory) / λ_theory over the train members that have
    both: its mean, its largest magnitude and the member count (None: no member has both)."""
    gaps = []
    for m in task.members:
        hmc, theory = m.ref.get("llc_ref"), m.ref.get("llc_theory")
        if m.ref.get("kind", "hmc") == "hmc" and hmc is not None and theory:
            gaps.append((hmc - theory) / theory)
    if not gaps:
        return None
    return sum(gaps) / len(gaps), max(gaps, key=abs), len(gaps)


def run_class_studies(tasks: list[ClassTask], submit, batch_size: int) -> None:
    """Every class study to its ``max_trials`` (resumed where stored)."""
    if tasks:
        ClassDriver(tasks, submit, batch_size=batch_size).run()


def class_rows(tasks: list[ClassTask]) -> list[dict]:
    """One row per (class trial, member): the setting in units and absolute, the member's
    outcome and value (``<results>/class_trials.parquet``)."""
    rows = []
    for task in tasks:
        by_pid = {m.pid: m for m in task.members}
        for t in task.study.get_trials(deepcopy=False):
            if not t.state.is_finished():
                continue
            units = {**task.fixed, **t.params}
            for pid, got in (t.user_attrs.get(MEMBERS_ATTR) or {}).items():
                member = by_pid.get(pid)
                if member is None:
                    continue
                rows.append(_row(task, t, member, units, got))
    return rows


def _row(task: ClassTask, t, member: Member, units: dict, got: dict) -> dict:
    try:
        eps = member.eps_max(task.method) if task.scaled else None
        hp = task.absolute(units, member)
    except ValueError:
        eps, hp = None, {}
    return {
        "class": task.name,
        "method": task.method,
        "trial_number": t.number,
        "state": t.state.name,
        "objective": t.values[0] if t.values else None,
        "pid": member.pid,
        "label": member.label,
        "d": member.d,
        "units": {k: units[k] for k in task.scaled if k in units},
        "eps_max": eps,
        "hyperparams": hp,
        "llc_hat": got.get("llc_hat"),
        "se_hat": got.get("se_hat"),
        "llc_ref": member.ref.get("llc_ref"),
        "se_ref": member.ref.get("se_ref"),
        "value": got.get("value"),
        "status": got.get("status"),
        "run_id": got.get("run_id"),
    }


def write_class_table(tasks: list[ClassTask], results: Path) -> Path | None:
    rows = class_rows(tasks)
    path = Path(results) / layout.CLASS_TRIALS_TABLE
    return write_parquet(rows, path, CLASS_COLUMNS) if rows else None
