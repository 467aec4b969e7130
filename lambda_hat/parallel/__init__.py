"""Parsl, generic: configs (``--local`` and cluster files), the session that starts and stops
executors, batch-job records a killed driver left (``blocks``), the worker environment, and the
one submit/collect/retry loop (:class:`Flights`) tuning, validation and runs share. Imports no
stage: app bodies are handed in.
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "app",
    "apply_env",
    "capacity",
    "Flights",
    "load_parsl_config",
    "local_config",
    "parsl_session",
    "result_of",
    "worker_env",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "app": "session",
        "apply_env": "worker",
        "capacity": "configs",
        "Flights": "submit",
        "load_parsl_config": "configs",
        "local_config": "configs",
        "parsl_session": "session",
        "result_of": "submit",
        "worker_env": "worker",
    },
)
