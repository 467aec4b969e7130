"""``lambda-hat plots``: figures of what earlier commands wrote, to check results by eye.

Reads, never computes: ``<artifacts>/problems/<pid>/ref.json`` and ``ref_trace.npz`` (written by
``lambda-hat reference``) and ``<results>/optuna_trials.parquet`` (written by ``parsl-optuna``);
file names from :mod:`lambda_hat.layout`. With a config file (either kind,
:func:`make_plots`) the problems are the config's and the gate its thresholds; without one
(:func:`plot_stored`) every stored problem is plotted with its stored gate.
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

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes, finite_float, read_json
from lambda_hat.config.load import ConfigFile
from lambda_hat.layout import problem_dir
from lambda_hat.problem.build import problem_id
from lambda_hat.report.figures import plot_study, plot_summary, running_llc
from lambda_hat.report.reference_figures import model_label, plot_reference

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("lambda_hat.plots")

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


def _read_reference(path: Path, pid: str) -> dict | None:
    """ref.json of ``pid`` if it holds the numbers the plots need, else None (logged)."""
    ref = read_json(path / layout.REF)
    if ref is None:
        log.info("problem %s: no reference in %s: run `lambda-hat reference` first", pid, path)
        return None
    bad = [k for k in _REF_NUMBERS if not _finite(ref.get(k))]
    if ref.get("pid") != pid or bad:
        log.warning(
            "problem %s: %s is not a usable reference (%s); re-run `lambda-hat reference --force`",
            pid,
            path / layout.REF,
            f"pid {ref.get('pid')}" if ref.get("pid") != pid else "no " + ", ".join(bad),
        )
        return None
    return ref


def _finite(x: Any) -> bool:
    return finite_float(x) is not None


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


def _objective_label(cfg: ConfigFile) -> str:
    """The tuning objective's axis label (a run YAML does not say: "objective")."""
    if cfg.tuning is None:
        return "objective"
    if cfg.tuning.optuna.objective == "huber":
        return r"Huber$(\hat\lambda - \hat\lambda_{\mathrm{ref}})/\delta$"
    if cfg.tuning.optuna.objective == "ucb":
        return r"$|\hat\lambda - \hat\lambda_{\mathrm{ref}}|$ + k SE (ucb)"
    return r"$|\hat\lambda - \hat\lambda_{\mathrm{ref}}|$"


def make_plots(
    cfg: ConfigFile,
    out: str | Path,
    results: str | Path | None = None,
    artifacts: str | Path | None = None,
) -> list[Path]:
    """Write every plot the stored outputs of ``cfg`` (a config file of either kind) allow;
    return the paths written. ``results``/``artifacts`` replace the config's paths."""
    from lambda_hat.reference.store import evaluate_gate, reference_settings

    settings = reference_settings(cfg.reference)

    def gate(ref: dict) -> dict:
        if ref.get("settings") != settings:
            log.warning(
                "reference %s: ref.json was made with other reference settings than this "
                "config's (%s vs %s); plotting it as stored",
                ref["pid"],
                ref.get("settings"),
                settings,
            )
        return evaluate_gate(ref, cfg.reference)

    return plot_stored(
        cfg.paths.artifacts if artifacts is None else artifacts,
        cfg.paths.results if results is None else results,
        out,
        pids=[problem_id(spec) for spec in cfg.problems],
        gate=gate,
        objective_label=_objective_label(cfg),
        methods=list(cfg.methods),
    )


def stored_pids(artifacts: str | Path, df: pd.DataFrame | None) -> list[str]:
    """Every problem with a directory under ``<artifacts>/problems`` or rows in ``df``."""
    root = Path(artifacts) / layout.PROBLEMS
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    in_table = [] if df is None else list(dict.fromkeys(df.pid))
    return list(dict.fromkeys([*in_table, *on_disk]))


def plot_reference_of(
    artifacts: str | Path, pid: str, gate: Callable[[dict], dict] | None = None
) -> tuple[dict | None, str | None, bytes | None]:
    """ref.json of ``pid`` (None when unusable), its model label and its figure (None when the
    trace is missing or does not match). ``gate`` re-evaluates the quality gate (default: the
    one stored in ref.json)."""
    path = problem_dir(artifacts, pid)
    ref = _read_reference(path, pid)
    if ref is None:
        return None, None, None
    info = read_json(path / layout.PROBLEM_INFO)
    label = model_label(ref, info)
    loss = _load_trace(path / layout.REF_TRACE, ref)
    if loss is None:
        return ref, label, None
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
        return ref, label, None
    verdict = gate(ref) if gate is not None else (ref.get("gate") or {})
    return ref, label, plot_reference(ref, loss, verdict, info)


def plot_stored(
    artifacts: str | Path | None,
    results: str | Path,
    out: str | Path,
    pids: list[str] | None = None,
    gate: Callable[[dict], dict] | None = None,
    objective_label: str = "objective",
    methods: list[str] | None = None,
) -> list[Path]:
    """The plots of :func:`make_plots` from the files alone: ``pids`` None plots every problem
    stored (:func:`stored_pids`); ``gate`` None shows each ref.json's stored gate; ``artifacts``
    None: where the trials' runs are (:func:`lambda_hat.report.data.artifacts_of`)."""
    out, results = Path(out), Path(results)
    df = _read_parquet(results / layout.TRIALS_TABLE)
    if artifacts is None:
        from lambda_hat.report.data import artifacts_of

        artifacts = artifacts_of(df, results)
    written: list[Path] = []
    refs: dict[str, dict | None] = {}
    labels: dict[str, str] = {}
    for pid in stored_pids(artifacts, df) if pids is None else pids:
        ref, label, png = plot_reference_of(artifacts, pid, gate)
        refs[pid] = ref
        if label is not None:
            labels[pid] = label
        if png is not None:
            written.append(atomic_write_bytes(out / layout.reference_png(pid), png))

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
        for (pid, method), study in df.groupby(["pid", "method"], sort=False):
            png = plot_study(study, refs.get(pid), objective_label)
            written.append(atomic_write_bytes(out / layout.study_png(pid, method), png))
        shown_methods = list(dict.fromkeys([*(methods or []), *df.method.unique()]))
        shown = {pid: refs[pid] for pid in refs if pid in set(df.pid)}
        png = plot_summary(df, shown, shown_methods, labels)
        written.append(atomic_write_bytes(out / layout.SUMMARY_PNG, png))
    if not written:
        log.info("no plots written: nothing to plot yet")
    return written
