"""The figures ``lambda-hat report`` adds to today's plots, each rendered to PNG bytes.

Per study (one (problem, method) group of ``optuna_trials.parquet`` rows): error against cost
(:func:`plot_cost`), hyperparameter importance (:func:`plot_importance`) and slices of the
objective against each searched hyperparameter (:func:`plot_slices`); for all studies at once,
the best objective against the number of finished trials (:func:`plot_convergence`). The
numbers come from small pure functions (:func:`convergence_curve`, :func:`pareto_mask`,
:func:`searched_params`, :func:`importances`) that the tests check against the Parquet.
Failed trials are drawn along the bottom of a panel, one marker per failure kind, as in
:func:`lambda_hat.report.figures.plot_study`.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from lambda_hat.report.axes import log_axis
from lambda_hat.report.checks import is_interrupted
from lambda_hat.report.figures import (
    free_bottom_strip,
    legend,
    mark_failures,
    new_figure,
    no_success,
    to_png,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from optuna.distributions import BaseDistribution

MIN_IMPORTANCE_TRIALS = 8
"""Successful trials a study needs before its importances are computed (PED-ANOVA compares the
best 10% of trials with all of them: with fewer trials the ranking is noise)."""
IMPORTANCE_EVALUATOR = "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator)"
_ACTIVE = ("RUNNING", "WAITING")

# ------------------------------------------------------------------------------ the numbers


def finished(study: pd.DataFrame) -> pd.DataFrame:
    """The rows of trials that ended (not running or waiting)."""
    return study[~study.state.isin(_ACTIVE)]


def successful(study: pd.DataFrame) -> pd.DataFrame:
    """The finished rows with status ``ok`` and an objective (what Optuna ranks)."""
    done = finished(study)
    return done[(done.status == "ok") & done.objective.notna()]


def convergence_curve(study: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Best objective after each finished trial: ``(1..N, best)``, in the order the trials
    finished (``finished_at`` when every row has one, else trial number); NaN before the first
    success. Failed trials count as finished trials that improved nothing; interrupted ones
    (:func:`lambda_hat.report.checks.is_interrupted`) are left out."""
    done = finished(study)
    if "failure_kind" in done:  # an interrupted trial is no result: its slot is asked again
        done = done[np.array([not is_interrupted(k) for k in done.failure_kind], bool)]
    order = (
        "finished_at"
        if "finished_at" in done and done.finished_at.notna().all()
        else "trial_number"
    )
    done = done.sort_values([order, "trial_number"])
    ok = (done.status == "ok") & done.objective.notna()
    values = np.where(ok, done.objective.to_numpy(float, na_value=np.nan), np.nan)
    return np.arange(1, len(done) + 1), np.fmin.accumulate(values) if len(values) else values


def pareto_mask(cost, error) -> np.ndarray:
    """True for the points no other point beats on both ``cost`` and ``error`` (minimized);
    non-finite points are never on the front."""
    c, e = np.asarray(cost, float), np.asarray(error, float)
    mask = np.zeros(c.shape, bool)
    best = math.inf
    for i in sorted(np.flatnonzero(np.isfinite(c) & np.isfinite(e)), key=lambda i: (c[i], e[i])):
        if e[i] < best:
            mask[i], best = True, e[i]
    return mask


def searched_params(study: pd.DataFrame) -> list[str]:
    """The ``hp_<name>`` columns that take two or more values among the study's finished trials
    (fixed hyperparameters and other methods' columns are left out)."""
    done = finished(study)
    cols = [c for c in study.columns if c.startswith("hp_")]
    return [c for c in cols if done[c].dropna().astype(str).nunique() >= 2]


def distribution_of(values: pd.Series, log: bool | None = None) -> BaseDistribution:
    """An Optuna distribution spanning ``values``: on a log scale when ``log`` (the study's
    sampling scale; None: when the values are positive and span a decade or more), integers
    when every value is integral, categories for text or booleans."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    v = values.dropna().tolist()
    if any(isinstance(x, str | bool | np.bool_) for x in v):
        return CategoricalDistribution(sorted({_plain(x) for x in v}, key=str))
    lo, hi = float(min(v)), float(max(v))
    log = lo > 0 and (hi / lo >= 10 if log is None else log)
    if all(float(x).is_integer() for x in v):
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(lo, hi, log=log)


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _cast(x, dist: BaseDistribution):
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(dist, IntDistribution):
        return int(x)
    if isinstance(dist, FloatDistribution):
        return float(x)
    return _plain(x)


def importances(
    study: pd.DataFrame, log_scale: dict[str, bool] | None = None
) -> tuple[dict[str, float] | None, str]:
    """PED-ANOVA importances of the searched hyperparameters (names without ``hp_``) for the
    study's objective, and a note; None with the reason when there is nothing to rank.
    ``log_scale``: name -> whether the study sampled it on a log scale (None: inferred)."""
    import optuna

    params = searched_params(study)
    ok = successful(study).dropna(subset=params)
    if len(params) < 2:
        return None, "one searched hyperparameter: nothing to rank" if params else (
            "no hyperparameter varies: nothing to rank"
        )
    if len(ok) < MIN_IMPORTANCE_TRIALS:
        return None, f"{len(ok)} successful trials; importance needs {MIN_IMPORTANCE_TRIALS}"
    scales = log_scale or {}
    dists = {p[3:]: distribution_of(finished(study)[p], scales.get(p[3:])) for p in params}
    trials = [
        optuna.trial.create_trial(
            params={n: _cast(row[f"hp_{n}"], d) for n, d in dists.items()},
            distributions=dists,
            value=float(row["objective"]),
        )
        for _, row in ok.iterrows()
    ]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA is marked experimental
            s = optuna.create_study()
            s.add_trials(trials)
            imp = optuna.importance.get_param_importances(
                s, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in imp.items()}, f"{len(ok)} successful trials"


# ---------------------------------------------------------------------------------- drawing


def _objective_axis(ax: Axes, values: np.ndarray) -> None:
    """Log y when the objective spans more than 30x (as in the study figure)."""
    v = values[np.isfinite(values)]
    if v.size and v.min() > 0 and v.max() / v.min() > 30:
        log_axis(ax)


def plot_convergence(
    df: pd.DataFrame, labels: dict[tuple[str, str], str], names: dict[str, str] | None = None
) -> bytes:
    """One panel per problem (titled ``names[pid]`` and the pid): each study's best objective
    against its finished trials, legend entries ``labels[(pid, method)]``."""
    from matplotlib.ticker import MaxNLocator

    pids = list(dict.fromkeys(df.pid))
    cols = min(3, len(pids))
    rows = math.ceil(len(pids) / cols)
    fig, axes = new_figure(max(7.0, 5.0 * cols), 3.8 * rows, rows, cols)
    for ax in axes.ravel()[len(pids) :]:
        ax.set_visible(False)
    for ax, pid in zip(axes.ravel(), pids, strict=False):
        drawn = []
        for method, study in df[df.pid == pid].groupby("method", sort=False):
            x, best = convergence_curve(study)
            if np.isfinite(best).any():
                ax.step(x, best, where="post", lw=1.6, label=labels.get((pid, method), method))
                drawn.append(best)
            else:  # listed in the legend, so a study that never succeeded is not just absent
                label = f"{labels.get((pid, method), method)}: no successful trial"
                ax.plot([], [], ls="none", marker="x", color="tab:red", label=label)
        if drawn:
            _objective_axis(ax, np.concatenate(drawn))
        else:
            no_success(ax)
        legend(ax, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("finished trials")
        ax.set_ylabel("best objective so far")
        ax.set_title(f"{names[pid]} ({pid})" if pid in (names or {}) else pid, fontsize=9)
    fig.suptitle("convergence: best objective against finished trials", fontsize=11)
    return to_png(fig)


def _cost_panel(
    ax: Axes, study: pd.DataFrame, x: str, xlabel: str, front: np.ndarray, step: bool
) -> None:
    scored = successful(study)
    ok = scored[scored[x].notna()] if x in scored else scored.iloc[:0]
    failed = finished(study)[finished(study).status != "ok"]
    if scored.empty:
        no_success(ax)
        ax.set_yticks([])
    elif ok.empty:
        ax.text(0.5, 0.5, f"no {xlabel} recorded", transform=ax.transAxes, ha="center")
    else:
        ax.scatter(ok[x], ok.objective, s=16, color="tab:blue", alpha=0.6, label="trial")
        on = ok[front[study.index.get_indexer(ok.index)]] if front.any() else ok.iloc[:0]
        if not on.empty:
            on = on.sort_values(x)
            if step:  # the front is a staircase in the (runtime, objective) plane only
                ax.step(on[x], on.objective, where="post", color="tab:red", lw=1.2)
            ax.scatter(on[x], on.objective, s=40, color="tab:red", label="Pareto front")
        _objective_axis(ax, ok.objective.to_numpy(float))
        positive = ok[x].to_numpy(float)
        if positive.min() > 0 and positive.max() / positive.min() > 30:
            log_axis(ax, "x")
        free_bottom_strip(ax)
    mark_failures(ax, failed, x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("objective")
    legend(ax, fontsize=8)


def run_seconds(study: pd.DataFrame) -> pd.Series:
    """Each trial's runtime without its compilation (``runtime_sec − compile_sec``): the cost
    of a run once its programs are compiled, where the runtime with compilation mostly shows
    which trial compiled first. ``runtime_sec`` where ``compile_sec`` is unknown."""
    total = study.runtime_sec.astype(float)
    if "compile_sec" not in study:
        return total
    comp = study.compile_sec.astype(float)
    return (total - comp).where(comp.notna(), total)


def plot_cost(study: pd.DataFrame, label: str, multi_objective: bool) -> bytes:
    """Objective against runtime without compilation (:func:`run_seconds`) and against FGE
    (full-gradient evaluations, the ``fge`` column); the (objective, runtime) Pareto front is
    drawn when the study had both objectives."""
    study = study.assign(run_sec=run_seconds(study))
    ok = successful(study)
    front = np.zeros(len(study), bool)
    if multi_objective:
        mask = pareto_mask(ok.run_sec, ok.objective)
        front[study.index.get_indexer(ok.index[mask])] = True
    fig, axes = new_figure(11, 4.2, 1, 2)
    _cost_panel(axes[0, 0], study, "run_sec", "runtime without compilation (s)", front, True)
    _cost_panel(axes[0, 1], study, "fge", "FGE (full-gradient evaluations)", front, False)
    kind = "objectives error + runtime" if multi_objective else "single objective"
    fig.suptitle(f"{label}: error against cost ({kind})", fontsize=11)
    return to_png(fig)


def plot_importance(imp: dict[str, float], label: str, note: str) -> bytes:
    """Horizontal bars: each searched hyperparameter's importance for the objective."""
    names = list(imp)[::-1]
    fig, axes = new_figure(8, 1.4 + 0.45 * len(names))
    ax = axes[0, 0]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(imp[n], y, f" {imp[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(imp.values()) * 1.15))
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(f"{label}: hyperparameter importance\n{IMPORTANCE_EVALUATOR}, {note}", fontsize=9)
    return to_png(fig)


def _slice_panel(ax: Axes, study: pd.DataFrame, col: str, log: bool | None) -> None:
    from optuna.distributions import CategoricalDistribution

    done = finished(study)
    dist = distribution_of(done[col], log)
    ok, failed = successful(study), done[done.status != "ok"]
    if isinstance(dist, CategoricalDistribution):
        pos = {str(c): i for i, c in enumerate(dist.choices)}
        done = done.assign(**{col: done[col].map(lambda v: pos.get(str(_plain(v)), np.nan))})
        ok, failed = done.loc[ok.index], done.loc[failed.index]
        ax.set_xticks(range(len(pos)), list(pos))
    else:  # nullable integers (Int64) as floats, missing values as NaN
        done = done.assign(**{col: done[col].astype(float)})
        ok, failed = done.loc[ok.index], done.loc[failed.index]
        if getattr(dist, "log", False):
            log_axis(ax, "x")
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    if ok.empty:
        no_success(ax)
        ax.set_yticks([])
    else:
        pts = ax.scatter(ok[col], ok.objective, c=ok.trial_number, cmap="viridis", s=16)
        ax.figure.colorbar(pts, ax=ax, label="trial number", pad=0.01)
        _objective_axis(ax, ok.objective.to_numpy(float))
        free_bottom_strip(ax)
    mark_failures(ax, failed, col)
    ax.set_xlabel(col[3:])
    ax.set_ylabel("objective")
    legend(ax, fontsize=7, loc="best")


def plot_slices(
    study: pd.DataFrame, params: list[str], label: str, log_scale: dict[str, bool] | None = None
) -> bytes:
    """One panel per searched hyperparameter: the objective of each successful trial against its
    value (colour: trial number), failed trials along the bottom by kind; x on a log scale where
    ``log_scale`` says (None: where the values span a decade)."""
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = new_figure(max(6.5, 4.6 * cols), 3.6 * rows, rows, cols)
    for ax in axes.ravel()[len(params) :]:
        ax.set_visible(False)
    for ax, col in zip(axes.ravel(), params, strict=False):
        _slice_panel(ax, study, col, (log_scale or {}).get(col[3:]))
    fig.suptitle(f"{label}: objective against each searched hyperparameter", fontsize=11)
    return to_png(fig)
