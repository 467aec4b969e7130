"""The figures of ``lambda-hat plots``, each rendered to PNG bytes (Agg canvas, no pyplot).

One Optuna study (:func:`plot_study`), the summary (:func:`plot_summary`) and the drawing
helpers every figure shares (an HMC reference: :mod:`lambda_hat.report.reference_figures`);
what each shows is described in :mod:`lambda_hat.report.plots` and ``plans/plots.md``. The
numbers drawn come from small pure functions (:func:`running_llc`, :func:`best_so_far`,
:func:`best_trials`) so tests can check them against ref.json and the Parquet table.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lambda_hat.log import fmt_value
from lambda_hat.report.axes import log_axis
from lambda_hat.report.checks import is_interrupted
from lambda_hat.trial.outcome import FAILURE_KINDS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


DPI = 110

LAMBDA_HAT = r"$\hat\lambda$"
LAMBDA_REF = r"$\hat\lambda_{\mathrm{ref}}$"
KIND_STYLE = dict(
    zip(
        FAILURE_KINDS,
        [("v", "tab:red"), ("s", "tab:orange"), ("D", "tab:purple"), ("X", "black")]
        + [("x", "tab:brown"), ("|", "tab:gray"), ("|", "tab:olive"), ("<", "tab:cyan")],
        strict=True,
    )
)
# ------------------------------------------------------------------------------ the numbers


def running_llc(loss, loss_star: float, nbeta: float) -> tuple[np.ndarray, np.ndarray]:
    """Running λ̂ after each draw: per chain ``[chains, draws]`` and pooled over chains ``[draws]``.

    ``per_chain[c, t] = nβ·(mean of chain c's first t+1 draws − L_n(w*))``; ``pooled[t]`` uses
    every chain's first t+1 draws, so ``pooled[-1]`` is the estimator's λ̂ on the whole trace
    (:func:`lambda_hat.llc.estimator.estimate_llc`) and ``per_chain[:, -1]`` its ``llc_per_chain``.
    """
    L = np.asarray(loss, dtype=np.float64)
    if L.ndim == 1:
        L = L[None, :]
    t = np.arange(1, L.shape[1] + 1)
    per_chain = nbeta * np.cumsum(L - loss_star, axis=1) / t
    return per_chain, per_chain.mean(axis=0)


def best_so_far(study: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Trial numbers of the successful trials of one study and the best objective up to each."""
    ok = study[(study.status == "ok") & study.objective.notna()].sort_values("trial_number")
    return ok.trial_number.to_numpy(), np.minimum.accumulate(ok.objective.to_numpy(float))


def best_trials(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (pid, method): the successful trial with the smallest objective."""
    ok = df[(df.status == "ok") & df.objective.notna() & df.llc_hat.notna()]
    if ok.empty:
        return ok
    return ok.loc[ok.groupby(["pid", "method"]).objective.idxmin()].reset_index(drop=True)


# ---------------------------------------------------------------------------------- drawing


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw) -> tuple:
    """A figure on matplotlib's Agg canvas (no pyplot state, no display) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def reference_band(
    ax: Axes, llc: float | None, se: float | None, horizontal: bool = True, generic: bool = False
) -> None:
    """λ̂_ref as a line with ±SE and ±2SE bands, on the y axis (or the x axis).

    ``generic`` labels leave the numbers out (for a legend shared by several panels).
    """
    if llc is None or not math.isfinite(llc):
        return
    span, line = (ax.axhspan, ax.axhline) if horizontal else (ax.axvspan, ax.axvline)
    if se is not None and math.isfinite(se) and se > 0:
        span(llc - 2 * se, llc + 2 * se, color="tab:green", alpha=0.10, lw=0, label="± 2 SE")
        span(llc - se, llc + se, color="tab:green", alpha=0.25, lw=0, label="± SE")
    label = f"HMC reference {LAMBDA_REF}" if generic else f"{LAMBDA_REF} = {llc:.4g} (HMC)"
    line(llc, color="tab:green", lw=1.2, label=label)


def theory_line(ax: Axes, ref: dict | None, horizontal: bool = True, generic: bool = False) -> None:
    lam = (ref or {}).get("llc_theory")
    if lam is None:
        return
    source = ((ref or {}).get("theory") or {}).get("source", "theory")
    label = "theoretical λ" if generic else f"theory λ = {lam:.4g} ({source})"
    line = ax.axhline if horizontal else ax.axvline
    line(lam, color="tab:red", ls="--", lw=1.2, label=label)


def no_success(ax: Axes, y: float = 0.5, transform=None) -> None:
    ax.text(
        0.5,
        y,
        "no successful trial",
        transform=transform or ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="dimgray",
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )


def legend(ax: Axes, **kw) -> None:
    """``ax.legend(**kw)`` when something drawn has a label (an empty legend only warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def axis_limits(
    values: np.ndarray, keep: list[float], pad: float = 0.08, robust: bool = False
) -> tuple[float, float]:
    """Axis limits covering ``values`` and every value in ``keep``.

    ``values`` are trimmed to their central 98% (many points, e.g. running means), or with
    ``robust`` to within 5 interquartile ranges of their quartiles (a few trials, where one
    absurd estimate would otherwise squash the rest); what is cut off is the caller's to mark.
    """
    v = values[np.isfinite(values)]
    pts = list(keep)
    if v.size and robust:
        q1, q3 = np.percentile(v, [25, 75])
        inside = v[(v >= q1 - 5 * (q3 - q1)) & (v <= q3 + 5 * (q3 - q1))]
        pts += [inside.min(), inside.max()]
    elif v.size:
        pts += list(np.percentile(v, [1, 99]))
    lo, hi = min(pts), max(pts)
    width = hi - lo or abs(hi) or 1.0
    return lo - pad * width, hi + pad * width


def free_bottom_strip(ax: Axes, frac: float = 0.12) -> None:
    """Lower the y axis so its bottom ``frac`` holds no data (room for the failure markers)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo / (hi / lo) ** (frac / (1 - frac)), hi)
    else:
        ax.set_ylim(lo - (hi - lo) * frac / (1 - frac), hi)


def mark_failures(ax: Axes, failed: pd.DataFrame, x: str = "trial_number") -> None:
    """Failed trials as markers along the bottom of ``ax`` at their ``x`` column, one style per
    failure kind (rows without an ``x`` value are left out); interrupted ones (a kind that is
    not a result of the settings, :func:`lambda_hat.report.checks.is_interrupted`) as hollow
    circles of their own, never as failures."""
    failed = failed[failed[x].notna()] if x in failed else failed.iloc[:0]
    if failed.empty:
        return
    bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction
    kinds = failed.failure_kind.fillna("unknown")
    for kind, group in failed.groupby(kinds):
        style: dict[str, Any] = {"marker": "o", "color": "tab:gray"}
        label = f"failed: {kind} ({len(group)})"
        if is_interrupted(kind):
            style = {"marker": "o", "facecolors": "none", "edgecolors": "0.4"}
            label = f"{kind}, not a result ({len(group)})"
        elif kind in KIND_STYLE:
            style = dict(zip(("marker", "color"), KIND_STYLE[kind], strict=True))
        ax.scatter(
            group[x],
            np.full(len(group), 0.04),
            transform=bottom,
            s=30,
            clip_on=False,
            label=label,
            **style,
        )
    xs = failed[x].to_numpy(float)  # markers in axes coordinates do not widen the x range
    ax.update_datalim(np.column_stack([xs, np.zeros_like(xs)]), updatey=False)
    ax.autoscale_view(scaley=False)


def _draw_trial_llcs(ax_llc: Axes, study: pd.DataFrame, ok: pd.DataFrame, ref: dict | None) -> None:
    """The study figure's lower panel: every ok trial's λ̂ ± SE against the reference band."""
    llc_ref, se_ref = _ref_numbers(study, ref)
    reference_band(ax_llc, llc_ref, se_ref)
    theory_line(ax_llc, ref)
    if not ok.empty:
        se = ok.se_hat.where(ok.se_hat.notna() & np.isfinite(ok.se_hat), 0.0)
        ax_llc.errorbar(
            ok.trial_number,
            ok.llc_hat,
            yerr=se,
            fmt="o",
            ms=4,
            lw=0.8,
            color="tab:blue",
            alpha=0.8,
            label=f"trial {LAMBDA_HAT} ± SE",
        )
        keep = [v for v in (llc_ref,) if v is not None]
        if se_ref:
            keep += [llc_ref - 2 * se_ref, llc_ref + 2 * se_ref]
        ends = np.concatenate([ok.llc_hat - se, ok.llc_hat + se]).astype(float)
        lo, hi = axis_limits(ends, keep, robust=True)
        ax_llc.set_ylim(lo, hi)
        mark_off_scale(ax_llc, ok, lo, hi)
        top = best_trials(ok)
        if not top.empty:
            star_best(ax_llc, top.trial_number, top.llc_hat, int(top.trial_number.iloc[0]))
    else:
        no_success(ax_llc, 0.9)


def plot_study(study: pd.DataFrame, ref: dict | None, objective_label: str = "objective") -> bytes:
    """PNG of one (problem, method) study from its Parquet rows (see the module doc)."""
    from matplotlib.ticker import MaxNLocator

    study = study.sort_values("trial_number")
    pid, method = study.pid.iloc[0], study.method.iloc[0]
    finished = study[~study.state.isin(["RUNNING", "WAITING"])]
    ok = finished[(finished.status == "ok") & finished.llc_hat.notna()]
    failed = finished[finished.status != "ok"]
    fig, axes = new_figure(10, 7.2, 2, 1, sharex=True)
    ax_obj, ax_llc = axes[:, 0]

    numbers, best = best_so_far(finished)
    scored = ok[ok.objective.notna()]
    if numbers.size:
        ax_obj.scatter(
            scored.trial_number, scored.objective, s=14, color="tab:blue", alpha=0.45, label="trial"
        )
        last = finished.trial_number.max()
        x = np.append(numbers, max(last, numbers[-1]))
        ax_obj.step(
            x,
            np.append(best, best[-1]),
            where="post",
            color="tab:blue",
            lw=1.8,
            label="best so far",
        )
        vals = scored.objective.to_numpy(float)
        if vals.min() > 0 and vals.max() / vals.min() > 30:
            log_axis(ax_obj)
        free_bottom_strip(ax_obj)
    else:
        no_success(ax_obj)
        ax_obj.set_yticks([])
    mark_failures(ax_obj, failed)
    ax_obj.set_ylabel(objective_label)
    legend(ax_obj, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    _draw_trial_llcs(ax_llc, study, ok, ref)
    if not finished.empty:  # markers in axes coordinates do not widen the x range by themselves
        ax_llc.set_xlim(finished.trial_number.min() - 0.5, finished.trial_number.max() + 0.5)
    ax_llc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_llc.set_xlabel("trial number")
    ax_llc.set_ylabel(LAMBDA_HAT)
    legend(ax_llc, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    running = len(study) - len(finished)
    cut = sum(is_interrupted(k) for k in failed.failure_kind)
    fig.suptitle(
        f"{method} on {pid}: {len(finished)} finished trials, {len(ok)} ok, "
        f"{len(failed) - cut} failed"
        + (f", {cut} interrupted" if cut else "")
        + (f", {running} running" if running else ""),
        fontsize=11,
    )
    return to_png(fig)


def star_best(ax, x, y, number: int) -> None:
    """The best trial as a gold star, labelled with its number."""
    ax.scatter(
        x, y, marker="*", s=160, color="gold", ec="black", zorder=5, label=f"best trial (#{number})"
    )


def mark_off_scale(
    ax: Axes, ok: pd.DataFrame, lo: float, hi: float, x: str = "trial_number", y: str = "llc_hat"
) -> None:
    """Rows whose ``y`` lies outside ``lo..hi`` drawn as arrows at the edge (never hidden)."""
    for where, mask, marker in (("above", ok[y] > hi, "^"), ("below", ok[y] < lo, "v")):
        if mask.any():
            edge = 0.97 if where == "above" else 0.03
            ax.scatter(
                ok[x][mask],
                np.full(int(mask.sum()), edge),
                transform=ax.get_xaxis_transform(),
                marker=marker,
                color="tab:blue",
                s=40,
                clip_on=False,
                label=f"{int(mask.sum())} off-scale {where}",
            )


def _ref_numbers(rows: pd.DataFrame, ref: dict | None) -> tuple[float | None, float | None]:
    """λ̂_ref and its SE the trials were scored against (the Parquet's), else ref.json's."""
    vals = rows.llc_ref.dropna()
    if not vals.empty:
        se = rows.se_ref.dropna()
        return float(vals.iloc[-1]), float(se.iloc[-1]) if not se.empty else None
    if ref:
        return ref.get("llc_ref"), ref.get("se_ref")
    return None, None


def plot_summary(
    df: pd.DataFrame, refs: dict[str, dict | None], methods: list[str], labels: dict[str, str]
) -> bytes:
    """PNG with one panel per problem: best λ̂ ± SE per method against λ̂_ref ± SE_ref."""
    best = best_trials(df)
    pids = list(refs)
    cols = min(3, len(pids))
    rows = math.ceil(len(pids) / cols)
    fig, axes = new_figure(max(7.5, 5.2 * cols), (0.55 * len(methods) + 2.0) * rows, rows, cols)
    for ax in axes.ravel()[len(pids) :]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}
    for ax, pid in zip(axes.ravel(), pids, strict=False):
        ref = refs[pid]
        llc_ref, se_ref = _ref_numbers(df[df.pid == pid], ref)
        reference_band(ax, llc_ref, se_ref, horizontal=False, generic=True)
        theory_line(ax, ref, horizontal=False, generic=True)
        mine = best[best.pid == pid].set_index("method")
        ys = np.arange(len(methods))
        for y, method in zip(ys, methods, strict=True):
            if method not in mine.index:
                no_success(ax, y, ax.get_yaxis_transform())
                continue
            r = mine.loc[method]
            se = r.se_hat if r.se_hat is not None and np.isfinite(r.se_hat) else 0.0
            ax.errorbar(r.llc_hat, y, xerr=se, fmt="o", color="tab:blue", capsize=4)
            ax.annotate(
                f"#{int(r.trial_number)}: {_pm(r.llc_hat, r.se_hat)}",
                (r.llc_hat, y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        ax.margins(x=0.12)
        ax.set_yticks(ys, methods)
        ax.set_ylim(-0.7, len(methods) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel(LAMBDA_HAT)
        numbers = f"{LAMBDA_REF} = {_pm(llc_ref, se_ref)}"
        if (ref or {}).get("llc_theory") is not None:
            numbers += f", theory λ = {ref['llc_theory']:.4g}"
        model = labels.get(pid, "no ref.json: reference numbers from the Parquet")
        ax.set_title(f"{pid} · {model}\n{numbers}", fontsize=9)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
    fig.legend(
        legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=8
    )
    fig.suptitle(
        f"best trial per method ({LAMBDA_HAT} ± SE) vs the HMC reference",
        fontsize=11,
    )
    return to_png(fig)


def _pm(x: Any, se: Any) -> str:
    """``x ± se`` as the figures write it (``n/a`` for a missing or non-finite number)."""
    return f"{fmt_value(x, '.4g', finite=True)} ± {fmt_value(se, '.2g', finite=True)}"
