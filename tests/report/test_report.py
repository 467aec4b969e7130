"""``lambda-hat report``: every figure is a valid PNG, the page links only files that exist, the
tables hold the Parquet's numbers (best trial, validated pick, experiment runs), and a partial or
broken run gives a report that says what is missing."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers.report import CONFIG, _fake_reference, _png_size

from lambda_hat import layout
from lambda_hat._io import atomic_write_json
from lambda_hat.cli import main
from lambda_hat.config.load import load_tuning
from lambda_hat.layout import problem_dir
from lambda_hat.problem.build import problem_id
from lambda_hat.report import study_figures as report_figures
from lambda_hat.report.data import load_inputs
from lambda_hat.report.tables import best_table, runs_table, validated_table
from lambda_hat.results.parquet import write_parquet
from lambda_hat.study import validation
from lambda_hat.study.storage import pickle_path

# λ̂ of the sgld trials on the referenced problem, as offsets from λ̂_ref (str: a failure kind)
SGLD = [0.6, -0.4, 0.5, "diverged", 0.1, -0.3, "timeout", 0.05, "error", -0.2, 40.0]


def _row(root, pid, method, i, lr, se, x, state="COMPLETE") -> dict:
    """One trials-Parquet row; its run directory holds a metrics.json with the run's FGE."""
    ok = not isinstance(x, str) and state == "COMPLETE"
    run_dir = root / "artifacts" / "runs" / pid / method / f"r_{i:04d}"
    atomic_write_json(run_dir / "metrics.json", {"work": {"fge": 100.0 * (i + 1)}})
    return {
        "pid": pid,
        "method": method,
        "trial_id": run_dir.name,
        "trial_number": i,
        "state": state,
        "status": "ok" if ok else "failed",
        "hyperparams": {"eta0": 1e-4 * 3.0**i, "batch": [16, 32, 64][i % 3], "chains": 2},
        "llc_hat": lr + x if ok else None,
        "se_hat": 0.05 if ok else None,
        "llc_ref": lr,
        "se_ref": se,
        "objective": abs(x) if ok else None,
        "error": x if ok else None,
        "runtime_sec": 2.0 + i,
        "diagnostics": json.dumps({"rhat": 1.0 + i / 100, "ess_bulk": 500.0 - i}) if ok else None,
        "failure_kind": None if ok else (x if isinstance(x, str) else "interrupted"),
        "run_dir": str(run_dir),
    }


def _validation(root, pid) -> None:
    """Candidates 1 (trial 7) and 2 (trial 4) re-run on seeds 1 and 2; candidate 1 is picked."""
    rows = []
    for cand, trial, errs in ((1, 7, [0.1, -0.3]), (2, 4, [0.2, 0.4])):
        for seed, e in zip([1, 2], errs, strict=True):
            rows.append(
                {
                    "pid": pid,
                    "method": "sgld",
                    "candidate": cand,
                    "trial_number": trial,
                    "seed": seed,
                    "trial_id": f"v{cand}{seed}",
                    "status": "ok",
                    "hyperparams": {"eta0": 1e-3 * cand},
                    "llc_hat": 1.5 + e,
                    "se_hat": 0.05,
                    "error": e,
                    "abs_error": abs(e),
                    "runtime_sec": 3.0 * seed,
                    "diagnostics": json.dumps({"rhat": 1.0 + seed / 10, "ess_bulk": 100.0 * seed}),
                    "run_dir": None,
                }
            )
    validation.write_parquet(rows, root / "results" / layout.VALIDATION_TABLE)
    rec = {"candidate": 1, "trial_number": 7, "hyperparams": {"eta0": 1e-3}, "n_ok": 2}
    rec.update(mean_abs_error=0.2, sd_abs_error=0.1414, n_failed=0, seeds=[1, 2])
    atomic_write_json(
        root / "results" / layout.VALIDATION_JSON,
        {"studies": {f"{pid}:sgld": {"seeds": [1, 2], "candidates": [rec], "recommended": rec}}},
    )


def _multi_objective_pickle(root, pid) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    eta0 = optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            params={"eta0": 1e-3}, distributions={"eta0": eta0}, values=[1, 2]
        )
    )
    path = pickle_path(root / "results", pid, "sgld")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(study))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Two problems (a reference for the first only): an sgld study with failures of three
    kinds and a running trial, a vi study where every trial failed, a short sgld study on the
    second problem; validation of the first study; three experiment runs."""
    root = tmp_path_factory.mktemp("report")
    cfg = root / "c.yaml"
    cfg.write_text(CONFIG.format(root=root))
    exp = load_tuning(cfg)
    ref = _fake_reference(exp, exp.problems[0])
    a, b = ref["pid"], problem_id(exp.problems[1])
    lr, se = ref["llc_ref"], ref["se_ref"]
    rows = [_row(root, a, "sgld", i, lr, se, x) for i, x in enumerate(SGLD)]
    rows.append(_row(root, a, "sgld", len(SGLD), lr, se, "interrupted", state="RUNNING"))
    rows += [_row(root, a, "vi", i, lr, se, k) for i, k in enumerate(["crashed", "oom"])]
    rows += [_row(root, b, "sgld", i, 1.4, 0.05, d) for i, d in enumerate([0.3, -0.02, 0.1])]
    write_parquet(rows, root / "results" / layout.TRIALS_TABLE)
    _validation(root, a)
    _multi_objective_pickle(root, a)
    runs = pd.DataFrame(
        {
            "pid": [a, a, a],
            "method": ["sgld"] * 3,
            "seed": [0, 1, 2],
            "status": ["ok", "ok", "failed"],
            "llc_hat": [1.4, 1.6, None],
            "llc_se": [0.05, 0.07, None],
            "llc_ref": [lr] * 3,
            "rhat": [1.01, 1.03, None],
            "ess": [300.0, 200.0, None],
            "failure_kind": [None, None, "diverged"],
        }
    )
    runs.to_parquet(root / "results" / "llc_runs.parquet")
    out = root / "results" / "report"
    assert main(["report", "--results", str(root / "results")]) == 0
    return {"root": root, "ref": ref, "a": a, "b": b, "out": out}


def test_every_figure_is_a_valid_png(campaign):
    a, b, out = campaign["a"], campaign["b"], campaign["out"]
    figures = {f"cost_{a}_sgld.png", f"cost_{a}_vi.png", f"cost_{b}_sgld.png", "convergence.png"}
    figures |= {f"slices_{p}_{m}.png" for p, m in ((a, "sgld"), (a, "vi"), (b, "sgld"))}
    figures |= {f"importance_{a}_sgld.png"}  # 8 successful trials; the others have fewer
    figures |= {f"calibration_{p}_sgld.png" for p in (a, b)}  # vi searched no step size
    assert {p.name for p in (out / "figures").iterdir()} == figures
    today = {f"reference_{a}.png", f"study_{a}_sgld.png", f"study_{a}_vi.png"}
    today |= {f"study_{b}_sgld.png", "summary.png"}
    assert {p.name for p in (out / "plots").iterdir()} == today
    for png in [*(out / "figures").iterdir(), *(out / "plots").iterdir()]:
        w, h = _png_size(png)
        assert 500 <= w <= 3000 and 150 <= h <= 3000, (png.name, w, h)
        assert png.stat().st_size > 10_000, png.name
    assert {p.name for p in out.iterdir()} == {"index.html", "summary.md", "figures", "plots"}


def test_the_page_links_only_files_that_exist(campaign):
    out = campaign["out"]
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    md_links = re.findall(r"\]\(([^)]+)\)", (out / "summary.md").read_text())
    assert len(links) == 2 * len(set(links)) and set(md_links) == set(links)
    assert len(set(links)) == len(list(out.glob("*/*.png")))  # every figure is shown
    for link in links:
        assert not link.startswith("/") and "://" not in link and ".." not in link, link
        assert (out / link).is_file(), link


def test_the_best_trial_is_the_parquets(campaign):
    df = pd.read_parquet(campaign["root"] / "results" / layout.TRIALS_TABLE)
    a = campaign["a"]
    ok = df[(df.status == "ok") & df.objective.notna()]
    expect = ok.loc[ok.groupby(["pid", "method"]).objective.idxmin()].set_index(["pid", "method"])
    inp = load_inputs(campaign["root"] / "results")
    rows = {(r["pid"], r["method"]): r for r in best_table(inp.trials)}
    for key, want in expect.iterrows():
        assert rows[key]["trial"] == want.trial_number
        assert rows[key]["llc_hat"] == pytest.approx(want.llc_hat, abs=1e-12)
    best = rows[(a, "sgld")]  # offset 0.05: trial 7
    assert best["trial"] == 7 and best["objective"] == pytest.approx(0.05)
    assert best["rhat"] == pytest.approx(1.07) and best["ess"] == pytest.approx(493.0)
    assert best["runtime_sec"] == 9.0 and "batch=32" in best["hyperparams"]
    assert "chains" not in best["hyperparams"]  # fixed, not searched
    assert best["failed"] == "diverged 1, timeout 1, error 1" and best["finished"] == 11
    assert best["running"] == 1
    assert "trial" not in rows[(a, "vi")] and rows[(a, "vi")]["failed"] == "crashed 1, oom 1"
    assert inp.trials.fge.tolist()[:3] == [100.0, 200.0, 300.0]  # from the runs' metrics.json
    assert inp.multi_objective == {
        (a, "sgld"): True,
        (a, "vi"): False,
        (campaign["b"], "sgld"): False,
    }
    assert inp.log_scale == {(a, "sgld"): {"eta0": True}}  # the pickle's sampling scale
    page = (campaign["out"] / "index.html").read_text()
    assert f"<td>{a}:sgld</td><td>11 (+1 running)</td><td>8</td>" in page and "<td>#7</td>" in page


def test_validated_and_experiment_run_tables(campaign):
    inp = load_inputs(campaign["root"] / "results")
    (v,) = validated_table(inp)
    assert v["study"] == f"{campaign['a']}:sgld" and v["trial"] == 7
    assert v["llc_hat"] == pytest.approx(1.5 + (0.1 - 0.3) / 2)  # candidate 1's runs only
    assert v["rhat"] == pytest.approx(1.2) and v["ess"] == pytest.approx(100.0)
    assert v["runtime_sec"] == pytest.approx(4.5)
    (r,) = runs_table(inp.runs)
    assert (r["runs"], r["ok"], r["failed"]) == (3, 2, "diverged 1")
    assert r["llc_hat"] == pytest.approx(1.5) and r["sd"] == pytest.approx(
        np.std([1.4, 1.6], ddof=1)
    )
    assert r["se_hat"] == pytest.approx(0.06) and r["rhat"] == 1.03 and r["ess"] == 200.0
    assert r["error"] == pytest.approx(1.5 - campaign["ref"]["llc_ref"])
    md = (campaign["out"] / "summary.md").read_text()
    assert "## Validated hyperparameters" in md and "## Experiment runs" in md


def test_the_numbers_behind_the_figures():
    mask = report_figures.pareto_mask([1, 2, 3, 4, np.nan, 2], [5, 3, 4, 1, 0, 3.5])
    assert mask.tolist() == [True, True, False, True, False, False]
    study = pd.DataFrame(
        {
            "trial_number": [0, 1, 2, 3, 4],
            "state": ["COMPLETE", "FAIL", "COMPLETE", "RUNNING", "COMPLETE"],
            "status": ["failed", "failed", "ok", "ok", "ok"],
            "objective": [None, None, 0.5, None, 0.7],
        }
    )
    x, best = report_figures.convergence_curve(study)
    assert x.tolist() == [1, 2, 3, 4]  # the running trial has not finished
    np.testing.assert_array_equal(best, [np.nan, np.nan, 0.5, 0.5])


def _study(n: int, params: dict) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cols = {f"hp_{k}": f(rng, n) for k, f in params.items()}
    objective = np.abs(np.log10(cols["hp_eta0"]) + 2) + 0.01 * rng.random(n)
    return pd.DataFrame(
        {"trial_number": range(n), "state": "COMPLETE", "status": "ok", "objective": objective}
        | cols
    )


def test_importance_ranks_the_parameter_that_matters():
    eta = lambda rng, n: 10 ** rng.uniform(-4, 0, n)  # noqa: E731
    batch = lambda rng, n: rng.choice([16, 32, 64], n)  # noqa: E731
    imp, note = report_figures.importances(_study(40, {"eta0": eta, "batch": batch}))
    assert list(imp) == ["eta0", "batch"] and imp["eta0"] > 0.8
    assert sum(imp.values()) == pytest.approx(1.0) and note == "40 successful trials"
    assert report_figures.importances(_study(40, {"eta0": eta}))[0] is None
    few, why = report_figures.importances(_study(5, {"eta0": eta, "batch": batch}))
    assert few is None and why == "5 successful trials; importance needs 8"
    dist = report_figures.distribution_of(_study(40, {"eta0": eta}).hp_eta0)
    assert dist.log and isinstance(dist, optuna.distributions.FloatDistribution)


def test_a_partial_and_broken_run_says_what_is_missing(campaign, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["report", "--results", str(results)]) == 0
    assert capsys.readouterr().out.strip() == str(results / "report" / "index.html")
    md = (results / "report" / "summary.md").read_text()
    assert f"no optuna_trials.parquet in {results}: parsl-optuna writes it" in md
    assert "no llc_runs.parquet" in md and "No tuning trials to report yet." in md
    # a failed reference (no λ̂_ref), a torn trials Parquet, a torn validation.json
    a = campaign["a"]
    stored = json.loads((problem_dir(campaign["root"] / "artifacts", a) / "ref.json").read_text())
    atomic_write_json(
        problem_dir(tmp_path / "artifacts", a) / "ref.json", {**stored, "llc_ref": None}
    )
    (results / layout.TRIALS_TABLE).write_bytes(b"PAR1 torn")
    (results / layout.VALIDATION_JSON).write_text("{")
    assert main(["report", "--results", str(results)]) == 0
    md = (results / "report" / "summary.md").read_text()
    assert f"{results / layout.TRIALS_TABLE} is unreadable" in md
    assert f"problem {a}: ref.json has no usable λ̂_ref (a failed reference)" in md
    assert f"{results / layout.VALIDATION_JSON} is unreadable" in md
    page = (results / "report" / "index.html").read_text()
    assert "missing or failed" in page and not re.findall(r'src="', page)


def test_the_grouping_schema_is_read_too(campaign, tmp_path):
    """Tables with a problem ``label``, ``diagnostics`` as a struct, nullable integer
    hyperparameters, flat ``rhat``/``ess_bulk``/``fge`` columns and experiment runs with
    hyperparameter sets and their source study give the same numbers, labelled."""
    results, a = tmp_path / "results", campaign["a"]
    df = pd.read_parquet(campaign["root"] / "results" / layout.TRIALS_TABLE)
    diag = [json.loads(d) if isinstance(d, str) else None for d in df.diagnostics]
    df = df.assign(
        label=["linear·s0" if p == a else None for p in df.pid],
        diagnostics=diag,
        hp_batch=df.hp_batch.astype("Int64").mask(df.trial_number == 5),
        rhat=[d and d["rhat"] for d in diag],
        ess_bulk=[d and d["ess_bulk"] for d in diag],
        fge=50.0,
    ).drop(columns="run_dir")
    results.mkdir()
    df.to_parquet(results / layout.TRIALS_TABLE)
    runs = pd.DataFrame(
        {
            "pid": [a] * 4,
            "label": ["linear·s0"] * 4,
            "method": ["sgld"] * 4,
            "set": [0, 0, 1, 1],
            "seed": [0, 1, 0, 1],
            "status": ["ok"] * 4,
            "source_study": [f"{a}:sgld", f"{a}:sgld", None, None],
            "source_trial": pd.array([7, 7, None, None], dtype="Int64"),
            "source_pick": ["best", "best", None, None],
            "llc_hat": [1.4, 1.6, 2.0, 2.2],
            "se_hat": [0.1, 0.1, 0.2, 0.2],
            "ess_bulk": [100.0, 90.0, 80.0, 70.0],
            "runtime_sec": [1.0, 3.0, 5.0, 7.0],
        }
    )
    runs.to_parquet(results / "llc_runs.parquet")
    out = tmp_path / "rep"
    artifacts = campaign["root"] / "artifacts"
    assert (
        main(
            ["report", "--results", str(results), "--out", str(out), "--artifacts", str(artifacts)]
        )
        == 0
    )
    inp = load_inputs(results, artifacts)
    rows = {(r["pid"], r["method"]): r for r in best_table(inp.trials)}
    best = rows[(a, "sgld")]
    assert best["label"] == "linear·s0:sgld" and rows[(campaign["b"], "sgld")]["label"].endswith(
        ":sgld"
    )
    assert best["trial"] == 7 and best["rhat"] == pytest.approx(1.07) and best["ess"] == 493.0
    assert best["hyperparams"] == "batch=32, eta0=0.2187"  # an integer stays an integer
    s0, s1 = runs_table(inp.runs)
    assert s0["problem"] == f"linear·s0 ({a})" and s0["from"] == f"{a}:sgld #7 (best)"
    assert (s0["set"], s0["llc_hat"], s0["ess"], s0["runtime_sec"]) == (
        0,
        pytest.approx(1.5),
        90.0,
        2.0,
    )
    assert (s1["set"], s1["from"], s1["llc_hat"], s1["se_hat"]) == (
        1,
        "fixed",
        pytest.approx(2.1),
        0.2,
    )
    page = (out / "index.html").read_text()
    assert "<h3>linear·s0:sgld (" in page and f"<td>linear·s0 ({a})</td>" in page
    for link in re.findall(r'src="([^"]+)"', page):
        assert (out / link).is_file()


def test_a_config_gives_the_objectives_and_the_gate(campaign, tmp_path):
    out = tmp_path / "rep"
    cfg = campaign["root"] / "c.yaml"
    assert main(["report", "--config", str(cfg), "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "objectives unknown" not in md
    assert (
        f"problem {campaign['b']}: no HMC reference" in md
        and "`lambda-hat reference` computes" in md
    )
    assert {p.name for p in (out / "plots").iterdir()} == {
        p.name for p in (campaign["out"] / "plots").iterdir()
    }
    exp = load_tuning(cfg)
    inp = load_inputs(campaign["root"] / "results", objectives=exp.config.optuna.objectives)
    assert not any(inp.multi_objective.values())  # the config's [error] beats the pickle
    # the config's gate thresholds, not the stored gate, in the table and the missing list
    strict = tmp_path / "strict.yaml"
    strict.write_text(cfg.read_text().replace("ess_min: 50", "ess_min: 100000"))
    assert main(["report", "--config", str(strict), "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    ess = campaign["ref"]["ess_bulk"]
    assert f"problem {campaign['a']}: the reference failed its quality gate (bulk ESS" in md
    assert f"| {ess:.0f} | FAILED: bulk ESS" in md


@pytest.mark.filterwarnings("error")
def test_studies_with_nothing_finished_or_nothing_searched(tmp_path):
    """A study whose only trial is still running and one whose trials share their
    hyperparameters: reported, with why the figures that need more are absent, no warning."""
    common = {"state": "COMPLETE", "status": "ok", "llc_ref": 1.1}
    rows = [
        {"pid": "p_a", "method": "sgld", "trial_number": 0, "state": "RUNNING", "status": "failed"},
        {**common, "pid": "p_b", "method": "vi", "trial_number": 0, "objective": 0.1},
        {**common, "pid": "p_b", "method": "vi", "trial_number": 1, "objective": 0.2},
    ]
    for r in rows:
        r.update(hyperparams={"lr": 1e-3}, error=r.get("objective"))
        r.update(llc_hat=r.get("objective") and 1.1 + r["objective"])
    write_parquet(rows, tmp_path / "results" / layout.TRIALS_TABLE)
    assert main(["report", "--results", str(tmp_path / "results")]) == 0
    md = (tmp_path / "results" / "report" / "summary.md").read_text()
    assert "| p_a:sgld | 0 (+1 running) | 0 |  | no successful trial |" in md
    assert "| p_b:vi | 2 | 2 |  | #0 | lr=0.001 | 1.2 ± n/a | 1.1 ± n/a | +0.1 | 0.1 |" in md
    assert md.count("No slice plots: no hyperparameter varies across finished trials.") == 2
    assert md.count("importance not computed: no hyperparameter varies") == 2
