"""lambda_hat: local learning coefficient estimation with HMC references and tuned samplers."""

import jax

# Every LLC computation runs in float64 (the references need it, and mixing precisions across
# tasks of one worker process would change results depending on task order).
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
__all__ = ["__version__"]
