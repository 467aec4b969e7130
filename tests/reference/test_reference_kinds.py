"""References where HMC cannot go: ``reference: theory`` is Aoyagi's λ (deep linear networks)
or d/2 (regular models) with its curvature and no NUTS, ``none`` the curvature alone; both
read back on the driver without computing; a zero-draw HMC reference is never used."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from lambda_hat.parallel import worker
from lambda_hat.problem import theory
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference import app as reference_app
from lambda_hat.reference import curvature, kinds, nuts
from lambda_hat.reference import stage as references
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.reference.table import reference_table
from lambda_hat.schema import as_dict

TINY_MLP = {"model": "tiny", "data": "small", "seed": 0}
CFG = ReferenceConfig(chains=2, draws=100, warmup=50)
#: A deep linear network 3 -> 3 -> 2 with a rank-1 teacher, n = 200.
DLN = {
    "model": "dln",
    "data": "small",
    "teacher": "rank1",
    "seed": 0,
    "overrides": {"data": {"output_dim": 2}, "model": {"train": {"steps": 200}}},
}


def _job(spec: dict, artifacts, kind: str) -> dict:
    spec = as_dict(resolve_problem(spec))
    return nuts.reference_job(spec, as_dict(CFG), str(artifacts), verbose=None, kind=kind)


def _stub_curvature(monkeypatch) -> dict:
    """The curvature record a theory reference carries, without Lanczos (tested elsewhere)."""
    record = {"a_max": 400.0, "d": 3, "eps_max_sgld": 0.01}
    monkeypatch.setattr(kinds, "curvature_record", lambda problem, beta, gamma: record)
    return record


def test_theory_of_a_deep_linear_network_is_aoyagis_lambda(tmp_path, monkeypatch):
    record = _stub_curvature(monkeypatch)
    ref = _job(DLN, tmp_path, "theory")
    want = theory.dln_llc((3, 3, 2), 1)
    # by hand: M = (1, 2, 2), Σ = all (ℓ = 2, S = 5, a = 1, pairs 8):
    # (−1 + 5)/2 + 1·1/8 − (2/4)(5/2)² + 8/2 = 2 + 0.125 − 3.125 + 4 = 3
    assert want == 3.0
    assert ref["kind"] == "theory" and ref["llc_ref"] == ref["llc_theory"] == want
    assert ref["se_ref"] == 0.0 and ref["d"] == 3 * 3 + 3 * 2 and ref["n"] == 200
    assert ref["curvature"] == record and ref["beta"] == pytest.approx(1 / 5.298317366548036)
    assert not (tmp_path / "problems" / ref["pid"] / "ref.json").exists()  # no NUTS, no file


def test_theory_of_a_regular_linear_model_is_half_d(linear_problem, monkeypatch):
    _stub_curvature(monkeypatch)
    ref = kinds.plain_reference(linear_problem, CFG, "theory")
    assert ref["d"] == 3 and ref["llc_ref"] == 1.5 and ref["se_ref"] == 0.0


def test_none_has_curvature_only_and_is_read_back_without_computing(tmp_path, monkeypatch):
    spec = {"model": "linear", "data": "small", "seed": 0}
    ref = _job(spec, tmp_path, "none")
    assert ref["kind"] == "none" and ref["llc_ref"] is None and ref["se_ref"] is None
    assert ref["llc_theory"] == 1.5 and ref["curvature"]["eps_max_sgld"] > 0

    def no_compute(*args, **kwargs):
        raise AssertionError("the driver computed")

    monkeypatch.setattr(curvature, "problem_curvature", no_compute)
    monkeypatch.setattr(kinds, "curvature_record", no_compute)
    got = kinds.stored_plain_reference(resolve_problem(spec), CFG, tmp_path, "none")
    assert got == ref
    other = ReferenceConfig(chains=2, draws=100, warmup=50, gamma=3.0)  # another posterior
    assert kinds.stored_plain_reference(resolve_problem(spec), other, tmp_path, "none") is None


def test_the_stage_reads_plain_references_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(worker, "apply_env", lambda env: None)
    specs = [resolve_problem({"model": "linear", "data": "small", "seed": s}) for s in (0, 1)]
    pids = [problem_id(s) for s in specs]
    kind_of = dict(zip(pids, ["none", "theory"], strict=True))

    def stage():
        submitted = []
        with ThreadPoolExecutor(1) as pool:

            def submit(payload):
                submitted.append(payload)
                return pool.submit(reference_app.execute_reference, payload)

            refs = references.reference_stage(specs, CFG, tmp_path, submit, kinds=kind_of)
        return refs, submitted

    with caplog.at_level(logging.INFO, logger="lambda_hat.workflow"):
        first, submitted = stage()
    assert sorted(p["kind"] for p in submitted) == ["none", "theory"]
    said = [r.getMessage() for r in caplog.records if "no reference" in r.getMessage()]
    assert said == [
        f"problem {pids[0]}: reference: none. It has no reference; its runs are "
        "reported unscored (no error, no z)."
    ]
    assert first[pids[1]]["llc_ref"] == 1.5 and first[pids[0]]["llc_ref"] is None
    again, submitted = stage()
    assert submitted == [] and dict(again) == dict(first)
    for ref in again.values():
        assert references.usable_reason(ref, allow_failed=False) is None


def test_theory_where_none_is_known_fails_the_job_naming_the_fix(tmp_path):
    payload = {
        "spec": as_dict(
            resolve_problem({**TINY_MLP, "overrides": {"model": {"train": {"steps": 20}}}})
        ),
        "reference": as_dict(CFG),
        "artifacts": str(tmp_path),
        "kind": "theory",
    }
    out = reference_app.execute_reference(payload)
    assert out["status"] == "failed" and "reference: hmc" in out["failure"]["message"]


def test_a_zero_draw_hmc_reference_is_never_usable():
    empty = {
        "llc_ref": None,
        "se_ref": None,
        "chains": 2,
        "draws_per_chain": 0,
        "gate": {"passed": False, "reasons": ["no draws: the budget stopped it (warmup, ...)"]},
    }
    for ref in (empty, {**empty, "kind": "hmc"}):
        why = references.usable_reason(ref, allow_failed=True, key="allow_failed_reference")
        assert why and "no draws: the budget stopped it" in why
        for fix in ("reference.budget_sec", "reference: none", "reference: theory"):
            assert fix in why


def test_the_reference_table_shows_theory_and_none_plainly():

    rows = [
        {"pid": "p_1", "kind": "theory", "llc_ref": 3.0, "llc_theory": 3.0, "d": 15, "n": 200},
        {"pid": "p_2", "kind": "none", "llc_ref": None, "llc_theory": None, "d": 15, "n": 200},
    ]
    text = reference_table(rows)
    assert "3 (theory)" in text and "reference: theory" in text
    assert "no reference" in text and "reference: none" in text
