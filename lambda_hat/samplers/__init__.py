"""Samplers, one module each (BlackJAX style: state NamedTuple, init/step pairs).

``hmc`` (NUTS reference), ``sgld``, ``mclmc`` and ``vi``; each targets the one
:class:`~lambda_hat.llc.posterior.LLCPosterior`. Submodules are imported on use.
"""

__all__ = ["hmc", "mclmc", "sgld", "vi"]
