"""One run of one method: its content address, the runner, failure kinds, the Parsl app body,
and the supervision that keeps a crash, hang or OOM inside the trial (``process/``).

Modules: ``identity`` (manifests, run ids, where a run lives), ``runner``, ``outcome``
(failure kinds, exception → failure, screening), ``app`` (the worker-side app body),
``submit`` (the trial loop on :class:`lambda_hat.parallel.submit.Flights`), ``synthetic`` (an
analytic target for plumbing checks), ``process`` (one-shot and warm supervision).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "DEFAULT_TRIAL_TARGET",
    "estimate_error",
    "execute_trial",
    "failed_from",
    "failed_metrics",
    "FAILURE_KINDS",
    "failure_of",
    "from_exception",
    "KINDS",
    "load_metrics",
    "load_valid_metrics",
    "manifest",
    "POSTERIOR_HYPERPARAMS",
    "resolve_hyperparams",
    "run_id",
    "run_method_trial",
    "run_on_target",
    "screen_estimate",
    "target_location",
    "TRACEBACK_CHARS",
    "trial_workdir",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_TRIAL_TARGET": "identity",
        "estimate_error": "outcome",
        "execute_trial": "app",
        "failed_from": "outcome",
        "failed_metrics": "outcome",
        "FAILURE_KINDS": "outcome",
        "failure_of": "outcome",
        "from_exception": "outcome",
        "KINDS": "outcome",
        "load_metrics": "identity",
        "load_valid_metrics": "identity",
        "manifest": "identity",
        "POSTERIOR_HYPERPARAMS": "identity",
        "resolve_hyperparams": "identity",
        "run_id": "identity",
        "run_method_trial": "runner",
        "run_on_target": "runner",
        "screen_estimate": "outcome",
        "target_location": "identity",
        "TRACEBACK_CHARS": "outcome",
        "trial_workdir": "identity",
    },
)
