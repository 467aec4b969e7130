"""lambda_hat: local learning coefficient estimation with HMC references and tuned samplers.

Importing it changes no global JAX setting: float64 is switched on where lambda_hat owns the
process (its commands, trial and worker processes) or by :func:`enable_x64`
(:mod:`lambda_hat.precision`). :func:`estimate` is the notebook call (:mod:`lambda_hat.notebook`):
λ̂ of your own parameters, loss and data (:func:`recommended`: settings from a study);
:class:`SourceProblem` is what a config's ``source:`` function returns (:mod:`lambda_hat.problem.source`). Public names load on first use.
"""

from lambda_hat._exports import lazy_exports

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "Checkpoint",
    "LLCResult",
    "SourceProblem",
    "enable_x64",
    "estimate",
    "recommended",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "enable_x64": "precision",
        "estimate": "notebook",
        "recommended": "notebook",
        "LLCResult": "notebook",
        "Checkpoint": "problem.source",
        "SourceProblem": "problem.source",
    },
)
