"""The reference stage reads stored references on the driver: a resumed run submits no
reference app (on SLURM one waited 104 s for a block before tuning could start; issue 10)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from lambda_hat.config.load import load_tuning
from lambda_hat.parallel import worker
from lambda_hat.reference import app as reference_app
from lambda_hat.reference import stage as references
from lambda_hat.study import pipeline, plan

LINEAR = {"model": "linear", "data": "small", "teacher": "_null", "seed": 0}
TINY_REF = {"chains": 2, "draws": 200, "warmup": 100, "chunk": 200}
SYNTHETIC = "lambda_hat.trial.synthetic:synthetic_trial"


def _plan(tmp_path: Path):
    cfg = {
        "problems": [LINEAR],
        "methods": ["sgld"],  # eta0 is scaled by the stability limit: needs the curvature
        "reference": TINY_REF,
        "optuna": {"allow_failed_reference": True},
        "paths": {"artifacts": str(tmp_path / "artifacts"), "results": str(tmp_path / "results")},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return plan.check_plan(load_tuning(path), None, SYNTHETIC)


def _stage(p, monkeypatch):
    """The reference stage with the app body on a thread; returns (refs, payloads submitted)."""
    monkeypatch.setattr(worker, "apply_env", lambda env: None)
    submitted = []
    with ThreadPoolExecutor(1) as pool:

        def submit(payload):
            submitted.append(payload)
            return pool.submit(reference_app.execute_reference, payload)

        return pipeline.reference_stage(
            p.exp.problems, p.cfg.reference, p.artifacts, submit, dict.fromkeys(p.pids, p.gammas)
        ), submitted


def test_a_resumed_run_reads_its_references_without_submitting(tmp_path, monkeypatch):
    p = _plan(tmp_path)
    (pid,) = p.pids
    first, submitted = _stage(p, monkeypatch)
    assert len(submitted) == 1 and pipeline.is_reference(first[pid])
    assert first[pid]["curvature"]["a_max"] > 0

    again, submitted = _stage(p, monkeypatch)
    assert submitted == []  # read on the driver: no app, no block to wait for
    assert again[pid] == first[pid]  # the same record, curvature and summary included
    assert again.at(pid, None) is again[pid]

    # what the driver cannot read goes to a worker: a missing curvature record, other settings
    for path in (p.artifacts / "problems" / pid / "curvature").glob("c_*.json"):
        path.unlink()
    third, submitted = _stage(p, monkeypatch)
    assert len(submitted) == 1 and third[pid]["curvature"] == first[pid]["curvature"]
    other = dataclasses.replace(p.cfg.reference, draws=300)
    assert references.cached_reference(p.exp.problems[0], other, p.artifacts, p.gammas[0]) is None
    assert references.cached_reference(p.exp.problems[0], p.cfg.reference, p.artifacts, p.gammas[0])
