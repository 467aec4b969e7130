"""Problems: a teacher network, synthetic data and a trained student w*, content-addressed
by pid under ``<artifacts>/problems/<pid>/``, and the closed-form answers tests check against.

Modules: ``spec`` (the problem schema and presets), ``build`` (build or load a problem; its
pid), ``models`` (MLP and deep linear networks), ``source`` / ``source_checks`` /
``source_store`` / ``checkpoints`` (a problem from your code: ``source:``), ``theory`` (d/2, Aoyagi's λ, closed forms).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "build_problem",
    "Checkpoint",
    "load_problem",
    "mlp_param_count",
    "PRESET_GROUPS",
    "Problem",
    "problem_id",
    "ProblemEntry",
    "ProblemSpec",
    "reference_of",
    "resolve_entries",
    "resolve_problem",
    "SourceProblem",
    "student_widths",
    "theory_unknown",
    "REFERENCE_KINDS",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "build_problem": "build",
        "Checkpoint": "source",
        "load_problem": "build",
        "mlp_param_count": "models",
        "PRESET_GROUPS": "spec",
        "Problem": "build",
        "problem_id": "build",
        "ProblemEntry": "spec",
        "ProblemSpec": "spec",
        "reference_of": "spec",
        "resolve_entries": "spec",
        "resolve_problem": "spec",
        "SourceProblem": "source",
        "student_widths": "build",
        "theory_unknown": "build",
        "REFERENCE_KINDS": "spec",
    },
)
