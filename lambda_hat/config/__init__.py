"""The config files: the tuning YAML (``parsl-optuna``), the run YAML (``lambda-hat run``),
the ``paths`` section both share, and the one loader that reads either kind.

Modules: ``tuning`` (:class:`Tuning`, its schema), ``classes`` (problem classes),
``runs`` (:class:`Runs`), ``paths``,
``load`` (:func:`load_tuning`, :func:`load_runs`, :func:`load_config` for either kind). The
problem schema lives with the problems (:mod:`lambda_hat.problem.spec`), the reference section
with the references (:mod:`lambda_hat.reference.settings`).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "UCB_SIGMAS",
    "ClassConfig",
    "ClassMembers",
    "ConfigFile",
    "FromStudy",
    "load_config",
    "load_runs",
    "load_tuning",
    "OptunaConfig",
    "PathsConfig",
    "Runs",
    "RunsConfig",
    "Tuning",
    "TuningConfig",
    "ValidateConfig",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "UCB_SIGMAS": "tuning",
        "ClassConfig": "classes",
        "ClassMembers": "classes",
        "ConfigFile": "load",
        "FromStudy": "runs",
        "load_config": "load",
        "load_runs": "load",
        "load_tuning": "load",
        "OptunaConfig": "tuning",
        "PathsConfig": "paths",
        "Runs": "runs",
        "RunsConfig": "runs",
        "Tuning": "tuning",
        "TuningConfig": "tuning",
        "ValidateConfig": "tuning",
    },
)
