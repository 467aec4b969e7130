"""Every run's chains on the page (issue 19 §3): the report draws the chains of the best trial,
the recommendation and each ``lambda-hat run`` set from their real ``trace.npz``, with MALA
acceptance; a calibration picture against ε/ε_max; flags for checks missed and recommendations
not reliable; ``compile_sec`` apart from the runtime; interrupted trials apart from failures;
readable log axes; the dashboard's labels and metric names; ``lambda-hat trial`` prints z.

The trials are real SGLD runs on the linear problem (``lambda-hat trial``, a few seconds); the
HMC reference is ``test_plots._fake_reference`` (exact draws, no NUTS)."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.report import CONFIG, PNG_MAGIC, _fake_reference

from lambda_hat import dashboard, layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.cli import main
from lambda_hat.config.load import load_tuning
from lambda_hat.report import calibration, figures, run_figures
from lambda_hat.report.axes import log_ticks, tick_label
from lambda_hat.report.checks import reliability, z_score
from lambda_hat.report.data import load_inputs
from lambda_hat.report.tables import best_table
from lambda_hat.results.parquet import write_parquet
from lambda_hat.results.tables import metrics_columns
from lambda_hat.runs.stage import RUN_COLUMNS
from lambda_hat.study import validation
from lambda_hat.study.resolved_space import RESOLVED_SPACE_ATTR
from lambda_hat.study.storage import pickle_path, study_name

EPS_MAX = 1e-3  # the ε_max the fake study records for eta0
TRIALS = [1e-4, 3e-4, 1.0]  # eta0 of trials 0-2: two ok, one far past ε_max (diverges)
RELIABILITY = {
    "z": -2.74,
    "reason": "validated error 0.4 is 2.7 combined SE off",
    "fix": "more trials",
}
SGLD = ["--set", "steps=300", "--set", "chains=2", "--set", "precond_type=none"]


def _trial(cfg, eta0: float) -> tuple[dict, str]:
    """One real ``lambda-hat trial`` of SGLD: its metrics.json and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(
            ["trial", "--config", str(cfg), "--problem", "0", "--method", "sgld"]
            + SGLD
            + ["--set", f"eta0={eta0}"]
        )
    path = Path(re.search(r"metrics: (\S+)", out.getvalue()).group(1))
    return {**read_json(path), "run_dir": str(path.parent)}, out.getvalue()


def _row(m: dict, ref: dict, number: int, state: str = "COMPLETE") -> dict:
    cols = metrics_columns(m, ref)
    ok = m.get("status") == "ok" and m.get("failure") is None
    return {
        "pid": ref["pid"],
        "method": "sgld",
        "trial_id": m.get("run_id"),
        "trial_number": number,
        "state": state,
        "status": "ok" if ok else "failed",
        "objective": abs(cols["error"]) if ok else None,
        "hyperparams": m.get("hyperparams"),
        "label": "linear·s0",
        **cols,
        "diagnostics": m.get("diagnostics") or None,
        "run_dir": m.get("run_dir"),
    }


def _study_pickle(results, pid: str) -> None:
    """The study pickle with the resolved space the report reads ε_max from."""
    study = optuna.create_study()
    rec = {"low": 1e-6, "high": 1e-3, "log": True, "eps_max": EPS_MAX}
    study.set_user_attr(RESOLVED_SPACE_ATTR, {"eta0": rec})
    path = pickle_path(results, pid, "sgld")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(study))


def _validation(results, pid: str, m: dict, ref: dict) -> None:
    """Trial 1 validated on one fresh seed (its own run stands in), marked not reliable."""
    cols = metrics_columns(m, ref)
    row = {"pid": pid, "method": "sgld", "candidate": 1, "trial_number": 1, "seed": 1}
    row.update(trial_id=m["run_id"], status="ok", hyperparams=m["hyperparams"], **cols)
    row.update(abs_error=abs(cols["error"]), run_dir=m["run_dir"], diagnostics=None)
    validation.write_parquet([row], results / layout.VALIDATION_TABLE)
    rec = {"candidate": 1, "trial_number": 1, "hyperparams": m["hyperparams"], "n_ok": 1}
    rec.update(mean_abs_error=abs(cols["error"]), sd_abs_error=None, n_failed=0, seeds=[1])
    study = {"seeds": [1], "candidates": [rec], "recommended": rec}
    study.update(reliable=False, reliability=RELIABILITY)
    atomic_write_json(results / layout.VALIDATION_JSON, {"studies": {f"{pid}:sgld": study}})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three real SGLD trials (two ok, one diverged), one interrupted trial, a validation, a
    ``lambda-hat run`` set, then ``lambda-hat report``."""
    root = tmp_path_factory.mktemp("chains")
    cfg = root / "c.yaml"
    cfg.write_text(CONFIG.format(root=root))
    ref = _fake_reference(load_tuning(cfg), load_tuning(cfg).problems[0])
    results, pid = root / "results", ref["pid"]
    done = [_trial(cfg, eta0) for eta0 in TRIALS]
    rows = [_row(m, ref, i) for i, (m, _) in enumerate(done)]
    rows.append(
        {
            "pid": pid,
            "method": "sgld",
            "trial_number": 3,
            "state": "FAIL",
            "status": "failed",
            "failure_kind": "interrupted",
            "label": "linear·s0",
            "hyperparams": {"eta0": 2e-4},
            "llc_ref": ref["llc_ref"],
            "run_dir": done[0][0]["run_dir"],  # the folder now holds the run that re-ran its slot
        }
    )
    write_parquet(rows, results / layout.TRIALS_TABLE)
    _study_pickle(results, pid)
    _validation(results, pid, done[1][0], ref)
    run_row = {**_row(done[0][0], ref, 0), "set": 0, "seed": 0, "run_id": done[0][0]["run_id"]}
    write_parquet([run_row], results / layout.RUNS_TABLE, RUN_COLUMNS)
    assert main(["report", "--results", str(results)]) == 0
    out = results / layout.REPORT
    return {"root": root, "cfg": cfg, "ref": ref, "pid": pid, "trials": done, "out": out}


def test_the_chains_of_best_recommended_and_run_set_are_drawn_and_linked(run):
    out, pid = run["out"], run["pid"]
    names = [f"chains_{pid}_sgld_{which}.png" for which in ("best", "recommended", "set0")]
    page = (out / layout.REPORT_HTML).read_text()
    md = (out / layout.REPORT_MD).read_text()
    for name in [*names, f"calibration_{pid}_sgld.png"]:
        png = out / layout.REPORT_FIGURES / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000, name
        assert f'src="figures/{name}"' in page and f"(figures/{name})" in md
    assert page.count("MALA") >= 3 and "min MALA" in page  # column headers and the checks note
    best = best_table(load_inputs(run["out"].parent).trials)[0]
    mala = run["trials"][best["trial"]][0]["diagnostics"]["mala_acceptance"]
    assert best["mala"] == pytest.approx(mala) and 0 < mala <= 1


def test_the_drawn_running_estimate_is_the_run_s_own(run):
    """The chain figure's pooled running λ̂ ends at metrics.json's λ̂ over the kept draws."""
    m = run["trials"][0][0]
    trace, why = run_figures.load_run(m["run_dir"])
    assert why == "" and trace.burn == m["draws"]["burnin_per_chain"] > 0
    per_chain, pooled = trace.running()
    assert pooled[-1] == pytest.approx(m["llc_hat"], rel=1e-12)
    assert per_chain[:, -1] == pytest.approx(m["llc_per_chain"], rel=1e-12)
    assert trace.trace["mala_accept"].shape == trace.loss.shape
    acc = np.array([[1.0, 0.0, np.nan, 1.0]])
    assert run_figures.moving_mean(acc, 2).tolist() == [[1.0, 0.5, 0.0, 1.0]]
    assert run_figures.load_run(None)[0] is None  # no run directory: a sentence, no figure


def test_compile_seconds_are_a_column_apart_from_the_runtime(run):
    results = run["out"].parent
    assert "compile_sec" in pq.read_schema(results / layout.TRIALS_TABLE).names
    df = pd.read_parquet(results / layout.TRIALS_TABLE).sort_values("trial_number")
    done = df[df.trial_number < 3]
    assert (done.compile_sec < done.runtime_sec).all() and done.compile_sec.iloc[0] > 0
    m = run["trials"][0][0]
    assert done.compile_sec.iloc[0] == m["seconds"]["compile"]
    assert "compile_sec" in pq.read_schema(results / layout.VALIDATION_TABLE).names
    from lambda_hat.report.study_figures import run_seconds

    spent = run_seconds(done).to_numpy()
    assert spent == pytest.approx((done.runtime_sec - done.compile_sec).to_numpy())


def test_interrupted_trials_are_drawn_and_counted_apart_from_failures(run):
    inp = load_inputs(run["out"].parent)
    (best,) = best_table(inp.trials)
    assert (best["finished"], best["interrupted"], best["failed"]) == (3, 1, "diverged 1")
    page = (run["out"] / layout.REPORT_HTML).read_text()
    assert "3 (+1 interrupted)" in page
    cut = inp.trials[inp.trials.trial_number == 3].iloc[0]  # nothing read from the re-run's folder
    assert pd.isna(cut.fge) and pd.isna(cut.compile_sec) and pd.isna(cut.runtime_sec)
    fig, axes = figures.new_figure(4, 3)
    figures.mark_failures(axes[0, 0], inp.trials[inp.trials.status != "ok"])
    labels = axes[0, 0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["failed: diverged (1)", "interrupted, not a result (1)"]


def test_calibration_is_against_eps_over_eps_max(run):
    inp = load_inputs(run["out"].parent)
    study = inp.trials
    axis = calibration.calibration_axis(study, "sgld", inp.eps_max[(run["pid"], "sgld")])
    assert axis == ("hp_eta0", EPS_MAX)
    pts = calibration.calibration_points(study, *axis).sort_values("trial_number")
    assert pts.x.tolist() == pytest.approx([e / EPS_MAX for e in [*TRIALS, 2e-4]])
    ok = pts[pts.status == "ok"]
    assert ok.signed.tolist() == pytest.approx((ok.llc_hat - ok.llc_ref).tolist())
    # tuned MCLMC: the step size its tuner chose, not the searched start
    diag = {"step_size": [0.02, 0.08]}
    assert calibration.used_step(diag, "step_size") == pytest.approx(0.04)
    assert calibration.used_step({"rhat": 1.0}, "eta0") is None


def test_checks_missed_and_reliability_are_flagged(run):
    page = (run["out"] / layout.REPORT_HTML).read_text()
    flags = page.split("<h2>Flags</h2>", 1)[1].split("<h2>", 1)[0]
    expected = f"NOT RELIABLE YET: z = -2.74, {RELIABILITY['reason']}. Fix: more trials"
    assert expected in flags and expected in page.split("Validated hyperparameters")[1]
    assert flags.index("NOT RELIABLE") < flags.index("best trial #")  # the verdict comes first
    rhat = run["trials"][0][0]["diagnostics"]["rhat"]
    if rhat > 1.01:  # the checks the best trial missed are listed with its numbers
        assert f"R-hat {rhat:.4f} &gt; 1.01" in flags
    assert reliability({"reliable": True, "reliability": {"z": 0.5}}) == (
        True,
        "reliable (z = +0.50)",
    )
    assert reliability({"recommended": {}}) == (None, "")


def test_lambda_hat_trial_prints_error_z_and_mala(run):
    m, printed = run["trials"][0]
    z = m["error"] / math.hypot(m["se_hat"], m["se_ref"])
    assert z_score(m) == pytest.approx(z)
    assert f"error {m['error']:+.4g}, z {z:+.2f}" in printed
    assert f"MALA acceptance {m['diagnostics']['mala_acceptance']:.3f}" in printed
    diverged, printed = run["trials"][2]
    assert diverged["failure"]["kind"] == "diverged" and "diverged" in printed


def test_log_axis_labels_do_not_overlap():
    for lo, hi in [(2e-3, 4e-3), (2e-3, 9e-3), (1.3e-6, 4e-3), (1.5, 3000), (1, 1e9), (1, 1.3)]:
        ticks = log_ticks(lo, hi)
        inside = ticks[(ticks >= lo) & (ticks <= hi)]
        assert 2 <= len(inside) <= 7, (lo, hi, ticks)
    labels = [tick_label(v) for v in log_ticks(2e-3, 9e-3)]
    assert labels == ["0.002", "0.005"] and all("×" not in x for x in labels)
    assert [tick_label(v) for v in (1e-5, 2e6, 1000, 0.25)] == ["1e-5", "2e6", "1000", "0.25"]


def test_the_dashboard_names_studies_by_label_and_objectives_by_what_they_measure(run):
    cfg = dashboard.load_config(run["cfg"])
    names = dashboard.study_names(cfg)
    name = study_name(run["pid"], "sgld")
    assert names[name] == f"linear·s0:sgld ({name})"
    inner = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=inner, study_name=name)
    optuna.create_study(storage=inner, study_name="other", directions=["minimize"] * 2)
    view = dashboard.LabelledStorage(inner, names, lambda n: dashboard.metric_names(None, None, n))
    shown = {s.study_name: s.system_attrs["study:metric_names"] for s in view.get_all_studies()}
    assert shown == {names[name]: ["|λ̂ − λ̂_ref|"], "other": ["|λ̂ − λ̂_ref|", "runtime (s)"]}
    study = optuna.load_study(study_name=names[name], storage=view)
    assert study.metric_names == ["|λ̂ − λ̂_ref|"] and inner.get_study_system_attrs(0) == {}
    assert dashboard.metric_names(["error", "runtime"], "huber") == [
        "Huber(λ̂ − λ̂_ref)",
        "runtime (s)",
    ]
