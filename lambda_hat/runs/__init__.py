"""``lambda-hat run``: every problem × method × hyperparameter set × seed of a run YAML, at the
runs' content addresses, into ``llc_runs.parquet``, with a summary against the references.

Modules: ``plan`` (stage 0: every set resolved, nothing written), ``stage`` (references, runs,
table), ``summary``.
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "summarize",
    "execute",
    "ExperimentPlan",
    "plan_experiments",
    "summary_table",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "summarize": "summary",
        "execute": "stage",
        "ExperimentPlan": "plan",
        "plan_experiments": "plan",
        "summary_table": "summary",
    },
)
