"""The ``reference`` section both YAML kinds share: the HMC reference's settings, its quality
gate, and the posterior (β, γ) every method targets."""

from __future__ import annotations

from lambda_hat.schema import config_dataclass, field

__all__ = ["ReferenceConfig"]


@config_dataclass
class ReferenceConfig:
    """The HMC (NUTS) reference and the posterior every method targets."""

    chains: int = field(4, "independent chains, vmapped", ge=2)
    draws: int = field(10000, "kept draws per chain after warm-up", ge=20)
    warmup: int = field(1000, "window-adaptation steps per chain (discarded)", ge=20)
    target_accept: float = field(0.8, "NUTS target acceptance", gt=0, lt=1)
    max_tree_depth: int = field(10, "NUTS maximum tree depth", ge=1)
    beta: float | None = field(None, "inverse temperature; None means 1/log(n)", gt=0)
    gamma: float = field(1.0, "localization strength gamma", ge=0)
    budget_sec: float | None = field(
        None, "wall-clock budget per reference (s), warm-up included; None: none", gt=0
    )
    chunk: int = field(1000, "draws per chunk between budget checks / progress lines", ge=1)
    rhat_max: float = field(1.01, "quality gate: largest acceptable rank-normalized R-hat", gt=1)
    ess_min: float = field(400.0, "quality gate: smallest acceptable bulk ESS", ge=0)
    max_divergence_frac: float = field(
        0.01, "quality gate: largest acceptable fraction of divergent draws", ge=0, le=1
    )
    seed: int = field(0, "sampling seed")
    workers: int | None = field(None, "references computed at once; None: one per core", ge=1)
