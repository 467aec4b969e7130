"""What every run of a study carries: the static payload, the hyperparameter resolver, the
content address and the reference as a run sees it. Shared by per-problem and class studies,
so a class trial's run on a member and a per-problem trial with the same settings are one run.
"""

from __future__ import annotations

from pathlib import Path

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.schema import as_dict
from lambda_hat.trial import identity as runs

__all__ = ["base_payload", "locator", "resolver", "trial_ref"]


def trial_ref(ref: dict) -> dict:
    """The reference as a run's payload carries it (without the problem's summary)."""
    return {k: v for k, v in ref.items() if k != "summary"}


def base_payload(
    spec: ProblemSpec, method: str, ref: dict, oc: OptunaConfig, artifacts: Path, target: str
) -> dict:
    """The static part of every trial payload of one study (``StudyTask.base_payload``)."""
    return {
        "pid": problem_id(spec),
        "spec": as_dict(spec),
        "method": method,
        "budget_sec": oc.method_budget_sec,
        "seed": oc.seed,
        "ref": trial_ref(ref),
        "artifacts": str(artifacts),
        "target": target,
        "isolate": oc.isolate,
        "timeout_grace": oc.timeout_grace,
        "warm": None if oc.warm is None else as_dict(oc.warm),
    }


def resolver(method: str):
    def resolve(hp: dict) -> dict:
        return runs.resolve_hyperparams(method, hp)

    return resolve


def locator(target: str, artifacts: Path, spec: ProblemSpec, method: str):
    """Where the trial's runner will write (:func:`runs.locator`)."""
    return runs.locator(target, artifacts, problem_id(spec), spec.data.n, method)
