"""The ``paths`` section both YAML kinds share: where outputs go."""

from __future__ import annotations

from lambda_hat import layout
from lambda_hat.schema import config_dataclass, field

__all__ = ["PathsConfig"]


@config_dataclass
class PathsConfig:
    """Where outputs go (relative paths are relative to the working directory)."""

    artifacts: str = field(layout.ARTIFACTS, "problems, references and runs")
    results: str = field(layout.RESULTS, "studies and Parquet tables")
