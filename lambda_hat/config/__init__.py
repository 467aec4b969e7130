"""The config files: the tuning YAML (``parsl-optuna``), the run YAML (``lambda-hat run``),
the ``paths`` section both share, and the one loader that reads either kind.

Modules: ``tuning`` (:class:`Tuning`, its schema), ``classes`` (problem classes),
``runs`` (:class:`Runs`), ``paths``,
``load`` (:func:`load_tuning`, :func:`load_runs`, :func:`load_config` for either kind; each
problem's reference kind), ``recommendation`` (a class study's ``recommendation.json``). The
problem schema lives with the problems (:mod:`lambda_hat.problem.spec`), the reference section
with the references (:mod:`lambda_hat.reference.settings`).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "UCB_SIGMAS",
    "ClassConfig",
    "ClassMembers",
    "ClassRecommendation",
    "ClassSetting",
    "ConfigFile",
    "FromStudy",
    "has_stability_limit",
    "HyperSet",
    "load_config",
    "load_runs",
    "load_tuning",
    "OptunaConfig",
    "PathsConfig",
    "read_class_recommendation",
    "reference_kinds",
    "Runs",
    "RunsConfig",
    "split_units",
    "Tuning",
    "TuningConfig",
    "ValidateConfig",
    "write_class_recommendation",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "UCB_SIGMAS": "tuning",
        "ClassConfig": "classes",
        "ClassMembers": "classes",
        "ClassRecommendation": "recommendation",
        "ClassSetting": "recommendation",
        "ConfigFile": "load",
        "FromStudy": "runs",
        "has_stability_limit": "runs",
        "HyperSet": "runs",
        "load_config": "load",
        "load_runs": "load",
        "load_tuning": "load",
        "OptunaConfig": "tuning",
        "PathsConfig": "paths",
        "read_class_recommendation": "recommendation",
        "reference_kinds": "load",
        "Runs": "runs",
        "RunsConfig": "runs",
        "split_units": "runs",
        "Tuning": "tuning",
        "TuningConfig": "tuning",
        "ValidateConfig": "tuning",
        "write_class_recommendation": "recommendation",
    },
)
