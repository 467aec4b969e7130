"""Readable log axes for every figure of ``lambda-hat plots`` and ``lambda-hat report``:
tick positions that leave room for their labels (:func:`log_ticks`) and short labels
(:func:`tick_label`), set by :func:`log_axis`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_LOG_TICKS = 7
"""Most labelled ticks on a log axis (:func:`log_axis`)."""


def log_ticks(lo: float, hi: float) -> np.ndarray:
    """Tick positions for a log axis over ``lo..hi`` that leave room for their labels: 1-2-5
    steps when that gives 2 to :data:`MAX_LOG_TICKS` ticks inside, else every k-th power of ten,
    else (an axis spanning less than a factor ~2.5) a few linear steps."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = sorted((lo, hi))
    if not (lo > 0 and math.isfinite(hi)):
        return np.array([])
    d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    options = [((1.0, 2.0, 5.0), 1)] + [((1.0,), k) for k in (1, 2, 3, 4, 5, 10, 20)]
    for subs, stride in options:
        ticks = np.array([m * 10.0**d for d in range(d0, d1 + 1) for m in subs if d % stride == 0])
        inside = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
        if len(inside) > MAX_LOG_TICKS:
            continue
        if len(inside) >= 2:
            return inside
        break
    return MaxNLocator(nbins=3).tick_values(lo, hi)


def tick_label(v: float) -> str:
    """A short tick label: ``0.002``, ``1000``, ``1e-5``, ``2e6``, ``0.0024``."""
    if v == 0 or 1e-4 <= abs(v) < 1e5:
        return f"{v:.3g}" if abs(v) < 1e3 else f"{v:.0f}"
    mantissa, exp = f"{v:.2g}".replace("+", "").split("e")
    return f"{mantissa}e{int(exp)}"


def log_axis(ax: Axes, which: str = "y") -> None:
    """A log ``which`` axis whose tick labels never overlap (:func:`log_ticks`), written as
    plain numbers (``0.002``, ``1e-05``), minor ticks unlabelled: matplotlib labels every minor
    tick of a short log axis (``2×10⁻³``, ``3×10⁻³``, …), and they run into each other."""
    from matplotlib.ticker import FuncFormatter, Locator, NullFormatter

    class _Ticks(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return log_ticks(vmin, vmax)

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(_Ticks())
    axis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
    axis.set_minor_formatter(NullFormatter())
