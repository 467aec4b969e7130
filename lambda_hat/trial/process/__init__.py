"""Supervised trial processes: a fresh child per trial (``oneshot``) or a warm child per worker
thread (``warm``), the same hard limit, containment and failure kinds (``supervise``), and the
child's side (``request``).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "resolve_target",
    "run_isolated",
    "run_warm",
    "WarmPolicy",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "resolve_target": "request",
        "run_isolated": "oneshot",
        "run_warm": "warm",
        "WarmPolicy": "warm",
    },
)
