"""The figure of one cheap run (a tuning trial, a validation run, a ``lambda-hat run`` seed):
its chains, drawn like the HMC reference's (:mod:`lambda_hat.report.reference_figures`).

From the run's own files (``metrics.json`` and ``trace.npz``, :func:`load_run`):

- left: L_n(w) per chain over the whole trace, the burn-in shaded, L_n(w*) dashed;
- middle: the running λ̂ per chain and pooled over the kept draws against λ̂_ref ± SE
  (± 2 SE lighter) and the theory line; its last pooled value is the run's λ̂;
- right: what the method records over the run: SGLD's MALA acceptance per chain (a moving
  mean of the per-block probe, the healthy band 0.9–0.95 shaded), MCLMC's energy error per
  step (ΔE²/d), VI's ELBO per optimization step.

The title holds λ̂ ± SE, the signed error and z against the reference, R-hat, ESS, MALA
acceptance and the checks missed (:func:`lambda_hat.report.checks.chain_flags`); it is red
when one was missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.log import fmt_value
from lambda_hat.report.axes import log_axis
from lambda_hat.report.checks import MALA_MIN, chain_flags, mala_of, z_score
from lambda_hat.report.figures import (
    LAMBDA_HAT,
    axis_limits,
    legend,
    new_figure,
    reference_band,
    running_llc,
    to_png,
)
from lambda_hat.report.reference_figures import MAX_POINTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHECK_TOLERANCE = 1e-6
"""Relative gap allowed between the trace's pooled λ̂ and metrics.json's (float32 runs)."""


@dataclass
class RunTrace:
    """One run's metrics.json and trace.npz arrays."""

    run_dir: Path
    metrics: dict
    trace: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or "?")

    @property
    def loss(self) -> np.ndarray:
        return np.atleast_2d(np.asarray(self.trace["loss"], dtype=np.float64))

    @property
    def burn(self) -> int:
        return int((self.metrics.get("draws") or {}).get("burnin_per_chain") or 0)

    @property
    def posterior(self) -> tuple[float, float]:
        """(nβ, L_n(w*)) of the sampled posterior."""
        p = self.metrics.get("posterior") or {}
        return float(p["nbeta"]), float(p["loss_star"])

    @property
    def every(self) -> int:
        """Steps between two trace entries (SGLD's ``eval_every``; 1 otherwise)."""
        return int((self.metrics.get("diagnostics") or {}).get("eval_every") or 1)

    def running(self) -> tuple[np.ndarray, np.ndarray]:
        """Running λ̂ over the kept draws: per chain ``[C, T]`` and pooled ``[T]``."""
        nbeta, loss_star = self.posterior
        return running_llc(self.loss[:, self.burn :], loss_star, nbeta)

    def z(self) -> float | None:
        """(λ̂ − λ̂_ref) / √(SE² + SE_ref²), None without the numbers."""
        return z_score(self.metrics)


def load_run(run_dir: Any) -> tuple[RunTrace | None, str]:
    """The run in ``run_dir``, or None and why it cannot be drawn."""
    if not isinstance(run_dir, str | Path) or not str(run_dir):
        return None, "no run directory recorded"
    where = Path(run_dir)
    metrics = read_json(where / layout.METRICS)
    if not isinstance(metrics, dict):
        return None, f"no readable {layout.METRICS} in {where}"
    try:
        with np.load(where / layout.TRACE) as z:
            trace = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # absent (a failure before sampling) or torn: say so, draw the rest
        return None, f"no readable {layout.TRACE} in {where} ({type(exc).__name__})"
    run = RunTrace(where, metrics, trace)
    if "loss" not in trace or run.loss.size == 0 or run.loss.shape[1] <= run.burn:
        return None, f"{layout.TRACE} in {where} has no kept draws"
    try:
        run.posterior  # noqa: B018 (the check is that it reads)
    except (KeyError, TypeError, ValueError):
        return None, f"{layout.METRICS} in {where} has no posterior nβ / L_n(w*)"
    llc = finite_float(metrics.get("llc_hat"))
    pooled = float(run.running()[1][-1])
    if metrics.get("status") == "ok" and llc is not None:
        if abs(pooled - llc) > CHECK_TOLERANCE * max(1.0, abs(llc)):
            return (
                None,
                f"{layout.TRACE} in {where} does not give its metrics' λ̂ ({pooled:.6g} ≠ {llc:.6g})",
            )
    return run, ""


def moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of each row over the last ``window`` finite entries up to each point (NaN before
    any); the same length as the row."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    finite = np.isfinite(x)
    pad = ((0, 0), (window, 0))
    cs = np.pad(np.cumsum(np.where(finite, x, 0.0), axis=1), pad)
    ns = np.pad(np.cumsum(finite, axis=1), pad)
    total = cs[:, window:] - cs[:, :-window]
    count = ns[:, window:] - ns[:, :-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _stride(n: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / MAX_POINTS)))


def _shade_burnin(ax: Axes, run: RunTrace) -> None:
    if run.burn:
        ax.axvspan(0, run.burn * run.every, color="0.85", lw=0, label="burn-in (discarded)")


def _loss_panel(ax: Axes, run: RunTrace) -> None:
    nbeta, loss_star = run.posterior
    L = run.loss
    x = (np.arange(L.shape[1]) + 1) * run.every
    s = _stride(L.shape[1])
    _shade_burnin(ax, run)
    for c in range(L.shape[0]):
        ax.plot(x[s], L[c, s], lw=0.6, alpha=0.8, color=f"C{c % 10}")
    ax.axhline(loss_star, color="black", ls="--", lw=1.2, label="$L_n(w^*)$")
    kept = L[:, run.burn :]
    kept = kept[np.isfinite(kept)]
    if (
        kept.size
    ):  # every kept draw in view (spikes are what this panel is for); burn-in may leave it
        lo, hi = min(kept.min(), loss_star), kept.max()
        ax.set_ylim(lo - 0.05 * (hi - lo or 1.0), hi + 0.05 * (hi - lo or 1.0))
    ax.set_xlabel(_x_label(run))
    ax.set_ylabel("$L_n(w)$")
    ax.set_title("loss per chain", fontsize=10)
    ax.secondary_yaxis(
        "right", functions=(lambda v: nbeta * (v - loss_star), lambda u: loss_star + u / nbeta)
    ).set_ylabel(r"$n\beta\,(L_n - L_n(w^*))$")


def _x_label(run: RunTrace) -> str:
    if run.method == "vi":
        return "evaluation draw from the fitted q"
    return "step" if run.every > 1 or run.method == "sgld" else "sampling step"


def _running_panel(ax: Axes, run: RunTrace, theory: float | None) -> None:
    per_chain, pooled = run.running()
    C, T = per_chain.shape
    draws = np.arange(1, T + 1)
    s = _stride(T)
    for c in range(C):
        label = f"chain {c}" if C <= 6 else ("chains" if c == 0 else None)
        ax.plot(draws[s], per_chain[c, s], lw=0.9, alpha=0.8, color=f"C{c % 10}", label=label)
    ax.plot(draws[s], pooled[s], color="black", lw=1.8, label="pooled")
    llc_ref, se_ref = (
        finite_float(run.metrics.get("llc_ref")),
        finite_float(run.metrics.get("se_ref")),
    )
    reference_band(ax, llc_ref, se_ref)
    keep = [v for v in (llc_ref, theory) if v is not None]
    if llc_ref is not None and se_ref:
        keep += [llc_ref - 2 * se_ref, llc_ref + 2 * se_ref]
    if theory is not None:
        ax.axhline(theory, color="tab:red", ls="--", lw=1.2, label=f"theory λ = {theory:.4g}")
    ax.set_ylim(*axis_limits(per_chain[:, max(1, T // 20) :].ravel(), keep))
    if T > 20:
        log_axis(ax, "x")
    ax.set_xlabel("kept draws used" + (" (log scale)" if T > 20 else ""))
    ax.set_ylabel(f"running {LAMBDA_HAT}")
    ax.set_title(f"running {LAMBDA_HAT} against the HMC reference", fontsize=10)
    legend(ax, fontsize=7, loc="best")


def _mala_panel(ax: Axes, run: RunTrace) -> None:
    acc = np.atleast_2d(np.asarray(run.trace["mala_accept"], dtype=np.float64))
    T = acc.shape[1]
    x = (np.arange(T) + 1) * run.every
    smooth = moving_mean(acc, max(1, T // 25))
    s = _stride(T)
    _shade_burnin(ax, run)
    ax.axhspan(MALA_MIN, 0.95, color="tab:green", alpha=0.15, lw=0, label="healthy 0.9–0.95")
    for c in range(acc.shape[0]):
        ax.plot(x[s], acc[c, s], lw=0.4, alpha=0.3, color=f"C{c % 10}")
        ax.plot(x[s], smooth[c, s], lw=1.2, color=f"C{c % 10}")
    mean = mala_of(run.metrics.get("diagnostics"))
    lo = np.nanmin(acc) if np.isfinite(acc).any() else 0.0
    ax.set_ylim(min(0.85, lo - 0.02), 1.01)
    ax.set_xlabel(_x_label(run))
    ax.set_ylabel("MALA acceptance")
    ax.set_title(f"MALA acceptance (kept mean {fmt_value(mean, '.3f', finite=True)})", fontsize=10)
    legend(ax, fontsize=7, loc="lower right")


def _energy_panel(ax: Axes, run: RunTrace) -> None:
    d = float((run.metrics.get("posterior") or {}).get("d") or 1)
    e2 = np.atleast_2d(np.asarray(run.trace["energy_change"], dtype=np.float64)) ** 2 / d
    T = e2.shape[1]
    smooth = moving_mean(e2, max(1, T // 25))
    x, s = np.arange(1, T + 1), _stride(T)
    _shade_burnin(ax, run)
    for c in range(e2.shape[0]):
        ax.plot(x[s], smooth[c, s], lw=1.0, color=f"C{c % 10}")
    if np.nanmin(np.where(smooth > 0, smooth, np.nan), initial=np.inf) < np.inf:
        log_axis(ax)
    ax.set_xlabel(_x_label(run))
    ax.set_ylabel(r"$\Delta E^2 / d$ (moving mean)")
    ax.set_title("MCLMC energy error per step", fontsize=10)


def _elbo_panel(ax: Axes, run: RunTrace) -> None:
    elbo = np.atleast_2d(np.asarray(run.trace["elbo"], dtype=np.float64))
    T = elbo.shape[1]
    x, s = np.arange(1, T + 1), _stride(T)
    smooth = moving_mean(elbo, max(1, T // 20))
    for c in range(elbo.shape[0]):
        ax.plot(x[s], elbo[c, s], lw=0.4, alpha=0.3, color=f"C{c % 10}")
        ax.plot(x[s], smooth[c, s], lw=1.4, color=f"C{c % 10}")
    ax.set_ylim(*axis_limits(elbo[:, T // 10 :].ravel(), []))
    ax.set_xlabel("optimization step")
    ax.set_ylabel("ELBO (minibatch estimate; line: moving mean)")
    ax.set_title("VI ELBO per fit", fontsize=10)


_METHOD_PANELS = {"mala_accept": _mala_panel, "energy_change": _energy_panel, "elbo": _elbo_panel}


def title_numbers(m: dict) -> str:
    """λ̂ ± SE, the error and z against the reference, R-hat, ESS, MALA acceptance."""
    diag = m.get("diagnostics") or {}
    llc, se = m.get("llc_hat"), m.get("se_hat")
    parts = [
        f"{LAMBDA_HAT} = {fmt_value(llc, '.4g', finite=True)} ± {fmt_value(se, '.2g', finite=True)}"
    ]
    if finite_float(m.get("llc_ref")) is not None:
        parts.append(
            f"ref {fmt_value(m['llc_ref'], '.4g')} ± {fmt_value(m.get('se_ref'), '.2g', finite=True)}"
        )
        parts.append(f"error {fmt_value(m.get('error'), '+.3g', finite=True)}")
        parts.append(f"z {fmt_value(z_score(m), '+.2f', finite=True)}")
    parts.append(f"R-hat {fmt_value(diag.get('rhat'), '.4f', finite=True)}")
    parts.append(f"ESS {fmt_value(diag.get('ess_bulk'), '.0f', finite=True)}")
    if mala_of(diag) is not None:
        parts.append(f"MALA {mala_of(diag):.3f}")
    return "   ".join(parts)


def plot_run(run: RunTrace, heading: str, theory: float | None = None) -> bytes:
    """PNG of one run's chains (see the module doc); ``heading`` names it (study, which run)."""
    extra = next((k for k in _METHOD_PANELS if k in run.trace), None)
    fig, axes = new_figure(16 if extra else 11.5, 4.4, 1, 3 if extra else 2)
    _loss_panel(axes[0, 0], run)
    _running_panel(axes[0, 1], run, theory)
    if extra:
        _METHOD_PANELS[extra](axes[0, 2], run)
    m = run.metrics
    diag = m.get("diagnostics") or {}
    flags = chain_flags(diag.get("rhat"), diag.get("ess_bulk"), mala_of(diag))
    status = m.get("status", "?")
    if m.get("failure"):
        status += f" ({(m['failure'] or {}).get('kind')})"
    C, T = run.loss.shape
    check = "checks: " + ("; ".join(flags) + " MISSED" if flags else "passed")
    fig.suptitle(
        f"{heading}\n{run.method}, run {run.run_dir.name}, seed {m.get('seed')}, {status}, "
        f"{C} chains × {T - run.burn} kept draws   {check}\n{title_numbers(m)}",
        fontsize=10,
        color="tab:red" if flags or status != "ok" else "black",
    )
    return to_png(fig)
