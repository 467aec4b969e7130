"""``lambda-hat plots``: figures of what earlier commands wrote, to check results by eye.

Reads, never computes: ``<artifacts>/problems/<pid>/ref.json`` and ``ref_trace.npz`` (written by
``lambda-hat reference``) and ``<results>/optuna_trials.parquet`` (written by ``parsl-optuna``).
Writes PNGs atomically (rendered to bytes with matplotlib's Agg canvas, no pyplot, no display,
then :func:`lambda_hat._io.atomic_write_bytes`):

- ``reference_<pid>.png``: the HMC reference. The L_n trace per chain (kept draws, warm-up
  already discarded) with L_n(w*), and the running λ̂ per chain converging to λ̂_ref ± SE, with
  the theoretical λ where theory gives one; R-hat, ESS and the quality gate in the title.
- ``study_<pid>_<method>.png``: one Optuna study. Cumulative best objective against trial
  number (failed trials marked by kind along the bottom), and λ̂ ± SE of every successful trial
  against the reference band.
- ``summary.png``: the best trial's λ̂ ± SE per (problem, method) against λ̂_ref ± SE_ref.

Missing or unreadable inputs are skipped with a log line that says which command makes them.
The numbers drawn come from small pure functions (:func:`running_llc`, :func:`best_so_far`,
:func:`best_trials`) so tests can check them against ref.json and the Parquet table.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambda_hat._io import atomic_write_bytes, read_json
from lambda_hat.config import Experiment
from lambda_hat.failures import FAILURE_KINDS
from lambda_hat.problems import problem_dir, problem_id
from lambda_hat.workflow.results import PARQUET_NAME

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("lambda_hat.plots")

DPI = 110
MAX_POINTS = 4000
"""Points per drawn line; longer traces are thinned by a stride after the running means are
computed on every draw (so thinning changes the picture's density, never its numbers)."""

LAMBDA_HAT = r"$\hat\lambda$"
LAMBDA_REF = r"$\hat\lambda_{\mathrm{ref}}$"
_KIND_STYLE = dict(
    zip(
        FAILURE_KINDS,
        [("v", "tab:red"), ("s", "tab:orange"), ("D", "tab:purple"), ("X", "black")]
        + [("x", "tab:brown"), ("|", "tab:gray"), ("|", "tab:olive"), ("<", "tab:cyan")],
        strict=True,
    )
)
_REF_NUMBERS = ("llc_ref", "nbeta", "loss_star", "chains", "draws_per_chain")
_PARQUET_COLUMNS = (
    "pid",
    "method",
    "trial_number",
    "state",
    "status",
    "llc_hat",
    "se_hat",
    "llc_ref",
    "se_ref",
    "objective",
    "failure_kind",
)


# ------------------------------------------------------------------------------ the numbers


def running_llc(loss, loss_star: float, nbeta: float) -> tuple[np.ndarray, np.ndarray]:
    """Running λ̂ after each draw: per chain ``[chains, draws]`` and pooled over chains ``[draws]``.

    ``per_chain[c, t] = nβ·(mean of chain c's first t+1 draws − L_n(w*))``; ``pooled[t]`` uses
    every chain's first t+1 draws, so ``pooled[-1]`` is the estimator's λ̂ on the whole trace
    (:func:`lambda_hat.estimator.estimate_llc`) and ``per_chain[:, -1]`` its ``llc_per_chain``.
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


def _thin(n: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / MAX_POINTS)))


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{spec}}"


# ---------------------------------------------------------------------------------- drawing


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw) -> tuple:
    """A figure on matplotlib's Agg canvas (no pyplot state, no display) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _reference_band(
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


def _theory_line(
    ax: Axes, ref: dict | None, horizontal: bool = True, generic: bool = False
) -> None:
    lam = (ref or {}).get("llc_theory")
    if lam is None:
        return
    source = ((ref or {}).get("theory") or {}).get("source", "theory")
    label = "theoretical λ" if generic else f"theory λ = {lam:.4g} ({source})"
    line = ax.axhline if horizontal else ax.axvline
    line(lam, color="tab:red", ls="--", lw=1.2, label=label)


def _no_success(ax: Axes, y: float = 0.5, transform=None) -> None:
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


def _limits(
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


def model_label(ref: dict, problem_info: dict | None) -> str:
    """``'mlp 3-4-1 tanh'`` from problem.json (or the spec stored in ref.json)."""
    model = (ref.get("spec") or {}).get("model") or {}
    widths = (problem_info or {}).get("layer_widths")
    arch = " " + "-".join(str(w) for w in widths) if widths else ""
    act = f" {model.get('activation')}" if model.get("family") == "mlp" else ""
    return f"{model.get('family', '?')}{arch}{act}"


def plot_reference(
    ref: dict, loss: np.ndarray, gate: dict, problem_info: dict | None = None
) -> bytes:
    """PNG of one HMC reference: L_n traces and running λ̂ per chain (see the module doc)."""
    nbeta, loss_star = float(ref["nbeta"]), float(ref["loss_star"])
    per_chain, pooled = running_llc(loss, loss_star, nbeta)
    C, T = per_chain.shape
    draws = np.arange(1, T + 1)
    s = _thin(T)
    fig, axes = _figure(12, 4.6, 1, 2)
    ax_trace, ax_run = axes[0]

    for c in range(C):
        ax_trace.plot(draws[s], np.asarray(loss)[c, s], lw=0.6, alpha=0.75, color=f"C{c % 10}")
    ax_trace.axhline(loss_star, color="black", ls="--", lw=1.2, label="$L_n(w^*)$")
    ax_trace.set_xlabel("draw (after warm-up)")
    ax_trace.set_ylabel("$L_n(w)$")
    ax_trace.set_title("loss trace per chain", fontsize=10)
    right = ax_trace.secondary_yaxis(
        "right", functions=(lambda L: nbeta * (L - loss_star), lambda v: loss_star + v / nbeta)
    )
    right.set_ylabel(r"$n\beta\,(L_n(w) - L_n(w^*))$")

    for c in range(C):
        label = f"chain {c}" if C <= 8 else ("chains" if c == 0 else None)
        ax_run.plot(draws[s], per_chain[c, s], lw=0.9, alpha=0.8, color=f"C{c % 10}", label=label)
    ax_run.plot(draws[s], pooled[s], color="black", lw=1.8, label="all chains pooled")
    _reference_band(ax_run, ref.get("llc_ref"), ref.get("se_ref"))
    _theory_line(ax_run, ref)
    keep = [ref["llc_ref"]] if ref.get("llc_ref") is not None else []
    if ref.get("llc_theory") is not None:
        keep.append(ref["llc_theory"])
    if ref.get("se_ref") is not None and math.isfinite(ref["se_ref"]):
        keep += [ref["llc_ref"] - 2 * ref["se_ref"], ref["llc_ref"] + 2 * ref["se_ref"]]
    settled = per_chain[:, max(1, T // 20) :]  # the first 5% of a running mean is noise
    ax_run.set_ylim(*_limits(settled.ravel(), keep))
    ax_run.set_xscale("log")
    ax_run.set_xlabel("draws used (log scale)")
    ax_run.set_ylabel(f"running {LAMBDA_HAT}")
    ax_run.set_title(f"running {LAMBDA_HAT} per chain", fontsize=10)
    handles = ax_run.get_legend_handles_labels()[0] + ax_trace.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8)

    passed = gate.get("passed")
    status = "gate passed" if passed else "gate FAILED: " + "; ".join(gate.get("reasons") or [])
    extra = ", stopped early (budget)" if ref.get("stopped_early") else ""
    fig.suptitle(
        f"HMC reference {ref['pid']}  ·  {model_label(ref, problem_info)}, d={ref.get('d')}, "
        f"n={ref.get('n')}, {C} chains × {T} draws{extra}\n"
        f"{LAMBDA_REF} = {_fmt(ref.get('llc_ref'), '.4g')} ± {_fmt(ref.get('se_ref'), '.2g')}"
        f"   R-hat {_fmt(ref.get('rhat'), '.4f')}   bulk ESS {_fmt(ref.get('ess_bulk'), '.0f')}"
        f"   divergences {ref.get('divergences', 'n/a')}   {status}",
        fontsize=10,
        color="black" if passed else "tab:red",
    )
    return _png(fig)


def _free_bottom_strip(ax: Axes, frac: float = 0.12) -> None:
    """Lower the y axis so its bottom ``frac`` holds no data (room for the failure markers)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo / (hi / lo) ** (frac / (1 - frac)), hi)
    else:
        ax.set_ylim(lo - (hi - lo) * frac / (1 - frac), hi)


def _mark_failures(ax: Axes, failed: pd.DataFrame) -> None:
    """Failed trials as markers along the bottom of ``ax``, one style per failure kind."""
    if failed.empty:
        return
    bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction
    kinds = failed.failure_kind.fillna("unknown")
    for kind, group in failed.groupby(kinds):
        marker, color = _KIND_STYLE.get(kind, ("o", "tab:gray"))
        ax.scatter(
            group.trial_number,
            np.full(len(group), 0.04),
            transform=bottom,
            marker=marker,
            color=color,
            s=30,
            clip_on=False,
            label=f"failed: {kind} ({len(group)})",
        )


def plot_study(study: pd.DataFrame, ref: dict | None, objective_label: str = "objective") -> bytes:
    """PNG of one (problem, method) study from its Parquet rows (see the module doc)."""
    from matplotlib.ticker import MaxNLocator

    study = study.sort_values("trial_number")
    pid, method = study.pid.iloc[0], study.method.iloc[0]
    finished = study[~study.state.isin(["RUNNING", "WAITING"])]
    ok = finished[(finished.status == "ok") & finished.llc_hat.notna()]
    failed = finished[finished.status != "ok"]
    fig, axes = _figure(10, 7.2, 2, 1, sharex=True)
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
            ax_obj.set_yscale("log")
        _free_bottom_strip(ax_obj)
    else:
        _no_success(ax_obj)
        ax_obj.set_yticks([])
    _mark_failures(ax_obj, failed)
    ax_obj.set_ylabel(objective_label)
    ax_obj.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    llc_ref, se_ref = _ref_numbers(study, ref)
    _reference_band(ax_llc, llc_ref, se_ref)
    _theory_line(ax_llc, ref)
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
        lo, hi = _limits(ends, keep, robust=True)
        ax_llc.set_ylim(lo, hi)
        _mark_off_scale(ax_llc, ok, lo, hi)
        top = best_trials(ok)
        if not top.empty:
            ax_llc.scatter(
                top.trial_number,
                top.llc_hat,
                marker="*",
                s=160,
                color="gold",
                ec="black",
                zorder=5,
                label=f"best trial (#{int(top.trial_number.iloc[0])})",
            )
    else:
        _no_success(ax_llc, 0.9)
    if not finished.empty:  # markers in axes coordinates do not widen the x range by themselves
        ax_llc.set_xlim(finished.trial_number.min() - 0.5, finished.trial_number.max() + 0.5)
    ax_llc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_llc.set_xlabel("trial number")
    ax_llc.set_ylabel(LAMBDA_HAT)
    ax_llc.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    running = len(study) - len(finished)
    fig.suptitle(
        f"{method} on {pid}: {len(finished)} finished trials, {len(ok)} ok, {len(failed)} failed"
        + (f", {running} running" if running else ""),
        fontsize=11,
    )
    return _png(fig)


def _mark_off_scale(ax: Axes, ok: pd.DataFrame, lo: float, hi: float) -> None:
    """Trials whose λ̂ lies outside the axis drawn as arrows at the edge (never hidden)."""
    for where, mask, marker in (("above", ok.llc_hat > hi, "^"), ("below", ok.llc_hat < lo, "v")):
        if mask.any():
            y = 0.97 if where == "above" else 0.03
            ax.scatter(
                ok.trial_number[mask],
                np.full(int(mask.sum()), y),
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
    fig, axes = _figure(max(7.5, 5.2 * cols), (0.55 * len(methods) + 2.0) * rows, rows, cols)
    for ax in axes.ravel()[len(pids) :]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}
    for ax, pid in zip(axes.ravel(), pids, strict=False):
        ref = refs[pid]
        llc_ref, se_ref = _ref_numbers(df[df.pid == pid], ref)
        _reference_band(ax, llc_ref, se_ref, horizontal=False, generic=True)
        _theory_line(ax, ref, horizontal=False, generic=True)
        mine = best[best.pid == pid].set_index("method")
        ys = np.arange(len(methods))
        for y, method in zip(ys, methods, strict=True):
            if method not in mine.index:
                _no_success(ax, y, ax.get_yaxis_transform())
                continue
            r = mine.loc[method]
            se = r.se_hat if r.se_hat is not None and np.isfinite(r.se_hat) else 0.0
            ax.errorbar(r.llc_hat, y, xerr=se, fmt="o", color="tab:blue", capsize=4)
            ax.annotate(
                f"#{int(r.trial_number)}: {_fmt(r.llc_hat, '.4g')} ± {_fmt(r.se_hat, '.2g')}",
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
        numbers = f"{LAMBDA_REF} = {_fmt(llc_ref, '.4g')} ± {_fmt(se_ref, '.2g')}"
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
    return _png(fig)


# ------------------------------------------------------------------------------- the command


def _read_reference(path: Path, pid: str) -> dict | None:
    """ref.json of ``pid`` if it holds the numbers the plots need, else None (logged)."""
    ref = read_json(path / "ref.json")
    if ref is None:
        log.info("problem %s: no reference in %s: run `lambda-hat reference` first", pid, path)
        return None
    bad = [k for k in _REF_NUMBERS if not _finite(ref.get(k))]
    if ref.get("pid") != pid or bad:
        log.warning(
            "problem %s: %s is not a usable reference (%s); re-run `lambda-hat reference --force`",
            pid,
            path / "ref.json",
            f"pid {ref.get('pid')}" if ref.get("pid") != pid else "no " + ", ".join(bad),
        )
        return None
    return ref


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _load_trace(path: Path, ref: dict) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            loss = np.asarray(z["loss"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("reference %s: cannot read %s (%s); skipping its plot", ref["pid"], path, exc)
        return None
    want = (ref.get("chains"), ref.get("draws_per_chain"))
    if loss.shape != want:
        log.warning(
            "reference %s: %s has shape %s but ref.json says %s chains x %s draws; skipping its "
            "plot (re-run `lambda-hat reference --force`)",
            ref["pid"],
            path,
            loss.shape,
            *want,
        )
        return None
    return loss


def _read_parquet(path: Path) -> pd.DataFrame | None:
    import pandas as pd

    if not path.exists():
        log.info("no Parquet yet (%s): run parsl-optuna first; skipping study plots", path)
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # a torn or foreign file must not stop the other plots
        log.warning("cannot read %s (%s); skipping study plots", path, exc)
        return None
    missing = [c for c in _PARQUET_COLUMNS if c not in df.columns]
    if missing:
        log.warning(
            "%s lacks columns %s (written by another version?); skipping study plots",
            path,
            ", ".join(missing),
        )
        return None
    return df


def _objective_label(exp: Experiment) -> str:
    oc = exp.config.optuna
    if oc.objective == "huber":
        return r"Huber$(\hat\lambda - \hat\lambda_{\mathrm{ref}})/\delta$"
    return r"$|\hat\lambda - \hat\lambda_{\mathrm{ref}}|$"


def make_plots(exp: Experiment, out: str | Path) -> list[Path]:
    """Write every plot the stored outputs of ``exp`` allow; return the paths written."""
    from lambda_hat.reference import evaluate_gate, reference_settings

    out = Path(out)
    artifacts, results = Path(exp.config.paths.artifacts), Path(exp.config.paths.results)
    written: list[Path] = []
    refs: dict[str, dict | None] = {}
    labels: dict[str, str] = {}
    for spec in exp.problems:
        pid = problem_id(spec)
        path = problem_dir(artifacts, pid)
        ref = refs[pid] = _read_reference(path, pid)
        if ref is None:
            continue
        if ref.get("settings") != reference_settings(exp.config.reference):
            log.warning(
                "reference %s: ref.json was made with other reference settings than this "
                "config's (%s vs %s); plotting it as stored",
                pid,
                ref.get("settings"),
                reference_settings(exp.config.reference),
            )
        info = read_json(path / "problem.json")
        labels[pid] = model_label(ref, info)
        loss = _load_trace(path / "ref_trace.npz", ref)
        if loss is None:
            continue
        _, pooled = running_llc(loss, ref["loss_star"], ref["nbeta"])
        if not math.isclose(pooled[-1], ref["llc_ref"], rel_tol=1e-9, abs_tol=1e-9):
            log.warning(
                "reference %s: ref_trace.npz gives λ̂ = %.10g but ref.json says %.10g; the trace "
                "does not belong to this ref.json, skipping its plot (re-run `lambda-hat "
                "reference --force`)",
                pid,
                pooled[-1],
                ref["llc_ref"],
            )
            continue
        gate = evaluate_gate(ref, exp.config.reference)
        png = plot_reference(ref, loss, gate, info)
        written.append(atomic_write_bytes(out / f"reference_{pid}.png", png))

    df = _read_parquet(results / PARQUET_NAME)
    if df is not None:
        others = sorted(set(df.pid) - set(refs))
        if others:
            log.info(
                "Parquet rows of %d problem(s) not in this config ignored: %s",
                len(others),
                ", ".join(others),
            )
        df = df[df.pid.isin(list(refs))]
        if df.empty:
            log.info("Parquet has no trials of this config's problems; skipping study plots")
    if df is not None and not df.empty:
        label = _objective_label(exp)
        for (pid, method), study in df.groupby(["pid", "method"], sort=False):
            png = plot_study(study, refs.get(pid), label)
            written.append(atomic_write_bytes(out / f"study_{pid}_{method}.png", png))
        methods = list(dict.fromkeys([*exp.config.methods, *df.method.unique()]))
        shown = {pid: refs[pid] for pid in refs if pid in set(df.pid)}
        png = plot_summary(df, shown, methods, labels)
        written.append(atomic_write_bytes(out / "summary.png", png))
    if not written:
        log.info("no plots written: nothing to plot yet")
    return written
