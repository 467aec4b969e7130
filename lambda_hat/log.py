"""Readable logging: time, stage, message. One setup call per process."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any


def setup_logging(verbose: int = 0) -> None:
    """Log lambda_hat stages at INFO (DEBUG with ``verbose``) to stderr; quiet noisy libraries."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)-22s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("lambda_hat")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("jax", "absl", "parsl", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fmt_seconds(sec: float) -> str:
    """``75.2`` -> ``'1m15s'``."""
    sec = float(sec)
    if sec < 60:
        return f"{sec:.1f}s"
    m, s = divmod(int(round(sec)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def fmt_value(
    x: Any, spec: str = "", missing: str = "n/a", *, finite: bool = False, floats: bool = False
) -> str:
    """``format(x, spec)`` for a table cell or a log line, and ``missing`` where there is no
    value: None, or with ``finite`` a float that is not finite. With ``floats`` the spec
    formats floats only and any other value is ``str(x)`` (hyperparameters of mixed types).
    The one "n/a if None" formatter: ``fmt_value(se, ".2g")``, ``fmt_value(z, "+.2f", "-")``."""
    if x is None or (finite and isinstance(x, float) and not math.isfinite(x)):
        return missing
    if floats and not isinstance(x, float):
        return str(x)
    return format(x, spec)


class Progress:
    """Progress lines for long loops: done/total, rate, ETA; at most one INFO line per
    ``every_sec`` (others go to DEBUG), so short jobs stay quiet and long ones show life."""

    def __init__(
        self,
        logger: logging.Logger,
        label: str,
        total: int,
        unit: str = "steps",
        every_sec: float = 5.0,
    ):
        import time

        self._time = time.perf_counter
        self.logger, self.label, self.total, self.unit = logger, label, total, unit
        self.every_sec = every_sec
        self.t0 = self._last = self._time()

    def update(self, done: int, extra: str = "") -> None:
        now = self._time()
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - done) / rate if rate and rate != float("inf") else 0.0
        level = logging.INFO if now - self._last >= self.every_sec else logging.DEBUG
        if level == logging.INFO:
            self._last = now
        self.logger.log(
            level,
            "%s: %d/%d %s (%.0f%%), %s elapsed, ETA %s%s",
            self.label,
            done,
            self.total,
            self.unit,
            100 * done / max(self.total, 1),
            fmt_seconds(elapsed),
            fmt_seconds(eta),
            f"  {extra}" if extra else "",
        )


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: columns left-aligned to their widest cell, a rule under the header.
    The one table printer (references, study progress, best trials)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
