"""The calibration picture of one study: each trial's signed error λ̂ − λ̂_ref against its
step size relative to the stability limit, ε/ε_max, from the trials already run.

What a step-size sweep shows (devinterp's ε–β calibration plot): where the estimate is flat
and inside the reference band, where a large step biases it or diverges, where a small step
has not mixed. ε_max is the one the study searched with (the study's ``resolved_space`` user
attr, stored in its pickle: :func:`lambda_hat.study.resolved_space.study_space`); a study that
searched its step size on an absolute range, or a method without a stability limit (VI's
``lr``), is drawn against the absolute value (:func:`calibration_axis`). Where a run records
the step size it used (tuned MCLMC: the searched ``step_size`` is only the tuner's start), that
one is drawn (:func:`used_step`). Failed trials are marked along the bottom at their step
size, one marker per kind; interrupted ones apart.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lambda_hat.methods import culprits
from lambda_hat.report.axes import log_axis
from lambda_hat.report.checks import diagnostic
from lambda_hat.report.figures import (
    LAMBDA_HAT,
    LAMBDA_REF,
    axis_limits,
    best_trials,
    free_bottom_strip,
    mark_failures,
    mark_off_scale,
    new_figure,
    no_success,
    star_best,
    to_png,
)
from lambda_hat.report.study_figures import finished, successful
from lambda_hat.schema import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def calibration_axis(
    study: pd.DataFrame, method: str, eps_max: dict[str, float] | None
) -> tuple[str, float | None] | None:
    """The step-size column to draw against and its ε_max (None: absolute), or None when the
    study's finished trials tried fewer than two step sizes: a parameter the study scaled by
    ε_max first, else the method's usual culprit of divergence (``eta0``, ``step_size``,
    ``lr``)."""
    done = finished(study)

    def varies(col: str) -> bool:
        return col in done and done[col].dropna().nunique() >= 2

    for name, eps in (eps_max or {}).items():
        if eps and math.isfinite(eps) and eps > 0 and varies(f"hp_{name}"):
            return f"hp_{name}", float(eps)
    try:
        names = culprits(method).get("diverged", ())
    except ConfigError:  # a method this version does not know
        names = ()
    return next(((f"hp_{n}", None) for n in names if varies(f"hp_{n}")), None)


def used_step(diag: Any, name: str) -> float | None:
    """The step size a run used, where its diagnostics record it under the searched name
    (tuned MCLMC: one per chain, geometric mean): the searched value is then only the tuner's
    start. None where they do not."""
    v = diagnostic(diag, name)
    if v is None or isinstance(v, str | bool):
        return None
    try:
        arr = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if not arr.size or not (np.isfinite(arr).all() and (arr > 0).all()):
        return None
    return float(np.exp(np.log(arr).mean()))


def calibration_points(study: pd.DataFrame, col: str, eps: float | None) -> pd.DataFrame:
    """The finished trials with ``x`` (the step size the run used, :func:`used_step`, else the
    searched one; over ε_max, or absolute), ``tuned`` (x is the used one) and ``signed``
    (λ̂ − λ̂_ref, from ``error`` else ``llc_hat − llc_ref``)."""
    done = finished(study)
    searched = done[col].astype(float)
    diag = done.diagnostics if "diagnostics" in done else pd.Series(None, index=done.index)
    used = pd.Series([used_step(d, col.removeprefix("hp_")) for d in diag], index=done.index)
    used = used.astype(float)
    err = done.error.astype(float)
    other = done.llc_hat.astype(float) - done.llc_ref.astype(float)
    return done.assign(
        x=used.where(used.notna(), searched) / (eps or 1.0),
        tuned=used.notna(),
        signed=err.where(err.notna(), other),
    )


def plot_calibration(
    study: pd.DataFrame,
    axis: tuple[str, float | None],
    label: str,
    recommended: int | None = None,
) -> bytes:
    """PNG: signed error against ε/ε_max (see the module doc); ``recommended`` is the trial
    number validation recommended (ringed)."""
    col, eps = axis
    pts = calibration_points(study, col, eps)
    ok = pts.loc[successful(study).index.intersection(pts.index)]
    ok = ok[ok.signed.notna() & ok.x.notna()]
    fig, axes = new_figure(9.5, 4.6)
    ax: Axes = axes[0, 0]
    se_ref = _se_ref(pts)
    _band(ax, se_ref)
    theory = _theory_gap(pts)
    if theory is not None:
        ax.axhline(theory, color="tab:red", ls="--", lw=1.2, label="theory λ − " + LAMBDA_REF)
    if ok.empty:
        no_success(ax)
    else:
        _draw_trials(ax, ok, se_ref, theory, recommended)
    if eps is not None:
        ax.axvline(1.0, color="black", ls=":", lw=1.2, label="ε_max (stability limit)")
    xs = pts.x[np.isfinite(pts.x.to_numpy(float))]
    if len(xs) and xs.min() > 0:
        log_axis(ax, "x")
    mark_failures(ax, pts[pts.status != "ok"], "x")
    name = col.removeprefix("hp_") + (" used (tuned)" if pts.tuned.any() else "")
    ax.set_xlabel(f"{name} / ε_max  (ε_max = {eps:.3g})" if eps else f"{name} (no ε_max known)")
    ax.set_ylabel(f"{LAMBDA_HAT} − {LAMBDA_REF}")
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 5), fontsize=8)
    ax.set_title(f"{label}: calibration, signed error against the step size", fontsize=10)
    return to_png(fig)


def _se_ref(pts: pd.DataFrame) -> float | None:
    se = pts.se_ref.dropna().astype(float)
    return float(se.iloc[-1]) if len(se) and math.isfinite(se.iloc[-1]) else None


def _theory_gap(pts: pd.DataFrame) -> float | None:
    if "llc_theory" not in pts:
        return None
    both = pts[["llc_theory", "llc_ref"]].dropna().astype(float)
    return float(both.llc_theory.iloc[-1] - both.llc_ref.iloc[-1]) if len(both) else None


def _band(ax: Axes, se_ref: float | None) -> None:
    """The reference at 0 with its ± SE and ± 2 SE bands."""
    if se_ref:
        ax.axhspan(-2 * se_ref, 2 * se_ref, color="tab:green", alpha=0.10, lw=0, label="± 2 SE_ref")
        ax.axhspan(-se_ref, se_ref, color="tab:green", alpha=0.25, lw=0, label="± SE_ref")
    ax.axhline(0.0, color="tab:green", lw=1.2, label=f"HMC reference ({LAMBDA_REF})")


def _draw_trials(
    ax: Axes, ok: pd.DataFrame, se_ref: float | None, theory: float | None, recommended: int | None
) -> None:
    se = ok.se_hat.astype(float).where(np.isfinite(ok.se_hat.astype(float)), 0.0).fillna(0.0)
    ax.errorbar(ok.x, ok.signed, yerr=se, fmt="none", ecolor="0.6", lw=0.8, zorder=1)
    pts = ax.scatter(ok.x, ok.signed, c=ok.trial_number, cmap="viridis", s=22, zorder=2)
    ax.figure.colorbar(pts, ax=ax, label="trial number", pad=0.01)
    keep = [0.0] + ([2 * se_ref, -2 * se_ref] if se_ref else []) + ([theory] if theory else [])
    ends = np.concatenate([ok.signed - se, ok.signed + se]).astype(float)
    lo, hi = axis_limits(ends, keep, robust=True)
    ax.set_ylim(lo, hi)
    mark_off_scale(ax, ok, lo, hi, x="x", y="signed")
    best = best_trials(ok)
    if not best.empty:
        b = ok[ok.trial_number == best.trial_number.iloc[0]]
        star_best(ax, b.x, b.signed, int(b.trial_number.iloc[0]))
    if recommended is not None and (ok.trial_number == recommended).any():
        r = ok[ok.trial_number == recommended]
        ax.scatter(
            r.x,
            r.signed,
            s=220,
            facecolors="none",
            edgecolors="tab:red",
            lw=1.6,
            zorder=6,
            label=f"recommended (#{recommended})",
        )
    free_bottom_strip(ax)
