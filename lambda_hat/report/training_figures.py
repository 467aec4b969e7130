"""LLC over training: λ̂ ± SE against the training step of a source's checkpoints, beside the
training and test loss the source gave at each step (issue 21 §4).

From ``llc_runs.parquet`` (``lambda-hat run``) only: rows with a ``step`` (a checkpoint),
grouped by run (the source, its seed), method and hyperparameter set — one curve per group
(:func:`training_curves`), so every point of a curve used one setting. Seeds of a checkpoint
are pooled: λ̂ their mean, SE √(Σ SE²)/k. Top panel λ̂ ± SE, bottom panel the losses (log
scale), one shared step axis (:func:`plot_training`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lambda_hat.report.figures import LAMBDA_HAT, legend, new_figure, to_png

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["plot_training", "training_curves"]

_KEYS = ["model", "problem_seed", "method", "set"]


def training_curves(runs: pd.DataFrame | None) -> dict[tuple, pd.DataFrame]:
    """(source, problem seed, method, set) -> one row per step: ``step``, ``llc``, ``se``,
    ``train_loss``, ``test_loss``, ``shift_sd``, ``seeds`` (successful runs pooled)."""
    if runs is None or runs.empty or "step" not in runs.columns:
        return {}
    ok = runs[runs["step"].notna() & (runs["status"] == "ok") & runs["llc_hat"].notna()]
    out = {}
    for key, group in ok.groupby(_KEYS, sort=False, dropna=False):
        rows = []
        for step, at in group.groupby("step", sort=True):
            se = at["se_hat"].astype(float).fillna(0.0)
            rows.append(
                {
                    "step": int(step),
                    "llc": float(at["llc_hat"].mean()),
                    "se": math.sqrt(float((se**2).sum())) / len(at),
                    "train_loss": _first(at, "train_loss"),
                    "test_loss": _first(at, "test_loss"),
                    "shift_sd": _first(at, "shift_sd"),
                    "seeds": len(at),
                }
            )
        import pandas as pd

        out[tuple(key)] = pd.DataFrame(rows)
    return out


def _first(rows: pd.DataFrame, column: str) -> float | None:
    if column not in rows.columns or rows[column].isna().all():
        return None
    return float(rows[column].dropna().iloc[0])


def plot_training(curve: pd.DataFrame, title: str) -> bytes:
    """The PNG of one curve: λ̂ ± SE against step above, training and test loss below."""
    fig, axes = new_figure(7.0, 5.6, rows=2, cols=1, sharex=True)
    top, bottom = axes[0, 0], axes[1, 0]
    steps = curve["step"].to_numpy(float)
    top.errorbar(steps, curve["llc"], yerr=curve["se"], fmt="o-", ms=4, capsize=3, label=LAMBDA_HAT)
    top.set_ylabel(f"{LAMBDA_HAT} ± SE")
    top.set_title(title, fontsize=9)
    top.grid(alpha=0.3)
    for column, style in (("train_loss", "o-"), ("test_loss", "s--")):
        values = curve[column].to_numpy(float)
        if np.isfinite(values).any():
            name = column.replace("_", " ")
            bottom.plot(steps, values, style, ms=3, label=name)
    if np.any(curve[["train_loss", "test_loss"]].to_numpy(float) > 0):
        bottom.set_yscale("log")
    bottom.set_ylabel("loss (from the source)")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    legend(bottom, fontsize=8)
    if len(steps) > 1 and steps.min() > 0 and steps.max() / steps.min() > 100:
        bottom.set_xscale("log")
    return to_png(fig)
