"""The report's problem-class section (issue 20): each class study's recommendation in its
units and the held-out proof from ``transfer.parquet``, with the relative error against d; a
problem with a theory reference is shown with its λ, not as a missing HMC reference."""

from __future__ import annotations

from helpers.report import PNG_MAGIC

from lambda_hat import layout
from lambda_hat._io import atomic_write_json
from lambda_hat.config.recommendation import ClassRecommendation, write_class_recommendation
from lambda_hat.report.page import make_report
from lambda_hat.study.transfer import write_transfer


def _row(setting: str, llc: float | None, seed: int, **kw) -> dict:
    base = {
        "class": "dln",
        "method": "sgld",
        "pid": "p_big",
        "label": "dln 10-40-10 n2000 s0",
        "d": 800,
        "setting": setting,
        "trial_number": 3,
        "recommended": False,
        "baseline": False,
        "steps_unit": "count",
        "seed": seed,
        "units": {"eta0": 0.06},
        "eps_max": 1e-3,
        "hyperparams": {"eta0": 6e-5, "steps": 1800},
        "status": "ok" if llc is not None else "failed",
        "failure_kind": None if llc is not None else "diverged",
        "llc_hat": llc,
        "se_hat": 0.5 if llc is not None else None,
        "llc_ref": 50.0,
        "se_ref": 0.0,
        "ref_kind": "theory",
        "error": None if llc is None else llc - 50.0,
        "rel_error": None if llc is None else abs(llc - 50.0) / 50.0,
        "z": None,
        "run_id": f"r{setting}{seed}",
    }
    return {**base, **kw}


def test_the_report_shows_the_class_recommendation_and_the_held_out_proof(tmp_path):
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    rows = [
        _row("#3 (recommended)", 52.0, 1, recommended=True),
        _row("#3 (recommended)", 54.0, 2, recommended=True),
        _row("baseline", None, 1, baseline=True, units=None, trial_number=None),
    ]
    write_transfer(rows, results)
    rec = ClassRecommendation(
        class_="dln",
        method="sgld",
        pick="validated",
        units={"eta0": 0.06, "steps": 1800},
        scaled=["eta0"],
        trial=3,
        objective=0.04,
        validated={"trial": 3, "units": {"eta0": 0.06, "steps": 1800}, "mean": 0.05},
    )
    write_class_recommendation(results, rec)
    problem = artifacts / layout.PROBLEMS / "p_big"
    atomic_write_json(problem / layout.PROBLEM_INFO, {"pid": "p_big", "theory": {"lambda": 50.0}})
    make_report(results, artifacts=artifacts)
    html = (results / layout.REPORT / layout.REPORT_HTML).read_text()
    assert "Problem classes" in html and "dln:sgld" in html
    assert "eta0=0.06 × ε_max" in html and "#3 (validated)" in html
    assert "53 ± 0.35" in html and "50 (theory)" in html and "6.0%" in html  # mean of 2 seeds
    assert "baseline" in html and "n/a" in html
    assert "no HMC reference" in html and "theory λ = 50" in html
    png = results / layout.REPORT / layout.REPORT_FIGURES / "transfer.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
