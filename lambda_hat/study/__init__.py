"""The tuning stage (``parsl-optuna``): the checked plan, search spaces, Optuna storage and
samplers, the ask/tell driver and its parts, the tell policy, the failure guard, early stopping,
several drivers on one storage, validation on fresh seeds, progress tables.

Entry point: :func:`lambda_hat.study.pipeline.main`.
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "mark_line",
    "mark",
    "RESOLVED_SPACE_ATTR",
    "best_successful",
    "check_plan",
    "counts_as_finished",
    "execute",
    "main",
    "open_storage",
    "Plan",
    "recommendation",
    "study_name",
    "summarize_transfer",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mark_line": "reliability",
        "mark": "reliability",
        "RESOLVED_SPACE_ATTR": "resolved_space",
        "best_successful": "tell",
        "check_plan": "plan",
        "counts_as_finished": "tell",
        "execute": "pipeline",
        "main": "pipeline",
        "open_storage": "storage",
        "Plan": "plan",
        "recommendation": "validation",
        "study_name": "storage",
        "summarize_transfer": "transfer",
    },
)
