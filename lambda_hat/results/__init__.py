"""The result tables: their columns and rows (``tables``) and Parquet with typed
hyperparameter columns (``parquet``).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "hyperparams_of",
    "METRIC_COLUMNS",
    "PROBLEM_COLUMNS",
    "problem_labels",
    "problem_table",
    "study_label",
    "to_table",
    "write_parquet",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "hyperparams_of": "parquet",
        "METRIC_COLUMNS": "tables",
        "PROBLEM_COLUMNS": "tables",
        "problem_labels": "tables",
        "problem_table": "tables",
        "study_label": "tables",
        "to_table": "parquet",
        "write_parquet": "parquet",
    },
)
