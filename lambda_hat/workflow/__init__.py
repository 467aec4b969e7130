"""The ``parsl-optuna`` workflow: HMC references, batched ask-and-tell tuning, Parquet.

Modules, one job each: :mod:`~lambda_hat.workflow.pipeline` (stages and CLI),
:mod:`~lambda_hat.workflow.tuning` (the ask/tell driver), :mod:`~lambda_hat.workflow.execution`
(Parsl and the worker-side app bodies), :mod:`~lambda_hat.workflow.studies` (storage, resume,
pickles), :mod:`~lambda_hat.workflow.results` (Parquet), :mod:`~lambda_hat.workflow.progress`
(display), :mod:`~lambda_hat.workflow.synthetic` (an analytic trial for plumbing checks).
"""

from lambda_hat.workflow.pipeline import main

__all__ = ["main"]
