"""The plan and the console (issue 19, section 4): search ranges checked against their
hyperparameter's schema before any work, a YAML tag that would run code named as such, a
reference saved after every chunk and continued after Ctrl-C or kill -9, its progress printed
while the driver waits, and a progress table printed on change in readable numbers."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat import layout
from lambda_hat._io import atomic_write_json
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference import checkpoint, stage
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.samplers import hmc
from lambda_hat.schema import ConfigError
from lambda_hat.study import pipeline, progress
from lambda_hat.study.counts import StudyCounts
from lambda_hat.study.space import check_enqueue, fmt_range, method_space

# 2 chains x 400 draws in chunks of 100, warm-up 100 steps in chunks of 16 (engine.chunk_capacity)
SMALL = ReferenceConfig(chains=2, draws=400, warmup=100, chunk=100, seed=5)
PROBLEM = {"model": "linear", "data": "small", "seed": 0}


def _dry_run(tmp_path: Path, monkeypatch, body: str) -> tuple[int, str]:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("problems: [{model: linear, data: small}]\n" + body)
    monkeypatch.chdir(tmp_path)
    code = pipeline.main(["--config", str(cfg), "--dry-run"])
    return code, cfg.name


# ------------------------------------------------------------------------- 1. range checks

BAD_RANGES = {
    "negative and fractional steps": (
        "sgld: {steps: {low: -200, high: 1000.5}}",
        "optuna.search_space.sgld.steps.low",
        "integer >= 2",
    ),
    "fractional high of an integer": (
        "sgld: {steps: {low: 200, high: 1000.5}}",
        "optuna.search_space.sgld.steps.high",
        "integer >= 2",
    ),
    "step size not > 0": (
        "sgld: {eta0: {low: -1.0e-3, high: 1.0e-2}}",
        "optuna.search_space.sgld.eta0.low",
        "number > 0",
    ),
    "burn-in fraction reaching 1": (
        "sgld: {burnin_frac: {low: 0.1, high: 1.0}}",
        "optuna.search_space.sgld.burnin_frac.high",
        ">= 0 and < 1",
    ),
    "unknown choice": (
        "sgld: {precond_type: {choices: [none, adamw]}}",
        "optuna.search_space.sgld.precond_type.choices[1]",
        "'rmsprop'",
    ),
    "choice below the bound": (
        "vi: {M: {choices: [0, 4]}}",
        "optuna.search_space.vi.M.choices[0]",
        "integer >= 1",
    ),
    "range of a categorical": (
        "sgld: {precond_type: {low: 0, high: 2}}",
        "optuna.search_space.sgld.precond_type",
        "{choices: [...]}",
    ),
    "range of a bool": (
        "mclmc: {tune: {low: 0, high: 1}}",
        "optuna.search_space.mclmc.tune",
        "true or false",
    ),
    "integer step of zero": (
        "vi: {steps: {low: 100, high: 200, step: 0}}",
        "optuna.search_space.vi.steps.step",
        "step >= 1",
    ),
    "fixed value out of bounds": (
        "vi: {chains: 0}",
        "optuna.search_space.vi.chains",
        ">= 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RANGES))
def test_bad_ranges_exit_2_at_dry_run_naming_the_field_and_the_allowed_values(
    case, tmp_path, monkeypatch, capsys
):
    space, where, allowed = BAD_RANGES[case]
    method = space.split(":")[0]
    code, _ = _dry_run(
        tmp_path, monkeypatch, f"methods: [{method}]\noptuna: {{search_space: {{{space}}}}}\n"
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{where}:" in err and allowed in err and "Fix:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # nothing written


def test_good_ranges_pass_typed_by_the_schema(tmp_path, monkeypatch, capsys):
    space, fixed = method_space(
        "sgld",
        {
            "steps": {"low": 500.0, "high": "2e3"},  # integral floats and YAML's "2e3"
            "burnin_frac": {"low": 0, "high": 0.5},  # a real hyperparameter, integer ends
            "chains": {"low": 2.0, "high": 4.0},  # an integer one, float ends
            "batch": {"choices": [32, 64]},
            "eval_every": {"choices": [None, 10]},
            "eta0": {"low": 1e-5, "high": 1e-2, "log": True},
        },
        "optuna.search_space.sgld",
    )
    assert space["steps"] == IntDistribution(500, 2000)
    assert space["burnin_frac"] == FloatDistribution(0.0, 0.5)
    assert space["chains"] == IntDistribution(2, 4)
    assert space["batch"] == CategoricalDistribution([32, 64]) and not fixed
    assert space["eval_every"] == CategoricalDistribution([None, 10])
    code, _ = _dry_run(
        tmp_path,
        monkeypatch,
        "methods: [sgld]\noptuna: {search_space: {sgld: {steps: {low: 500, high: 2000}}}}\n",
    )
    assert code == 0, capsys.readouterr().err


def test_enqueued_values_must_lie_in_the_searched_range():
    space, fixed = method_space(
        "sgld", {"steps": {"low": 500, "high": 2000}}, "optuna.search_space.sgld"
    )
    assert check_enqueue("sgld", [{"steps": 1000, "batch": 64}], space, fixed)
    for entry, where in (
        ({"steps": 3000}, r"optuna.enqueue.sgld\[0\].steps: got 3000, outside .* 500..2000"),
        ({"batch": 48}, r"optuna.enqueue.sgld\[0\].batch: got 48, outside .*\{32, 64, 128, 256\}"),
    ):
        with pytest.raises(ConfigError, match=where):
            check_enqueue("sgld", [entry], space, fixed)


# ---------------------------------------------------------------------- 4. the YAML tag


def test_a_yaml_tag_that_would_run_code_is_named_and_never_honoured(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    code, name = _dry_run(
        tmp_path,
        monkeypatch,
        f'methods: [sgld]\noptuna:\n  max_trials: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert f"{name}: the tag !!python/object/apply:os.system at line 4, column 15" in err
    assert "would run code" in err and "never honours" in err and "plain value" in err
    assert "YAML syntax error" not in err and "indentation" not in err
    code, _ = _dry_run(tmp_path, monkeypatch, "methods: !custom [sgld]\n")
    err = capsys.readouterr().err
    assert code == 2 and "the tag !custom" in err and "plain value" in err
    code, _ = _dry_run(tmp_path, monkeypatch, "methods: [sgld\n")  # syntax errors unchanged
    assert code == 2 and "YAML syntax error" in capsys.readouterr().err


# ------------------------------------------------------- 3. a reference saved every chunk


@pytest.fixture
def problem(tmp_path):
    return build_problem(resolve_problem(PROBLEM), tmp_path / "artifacts")


def _interrupt_after(monkeypatch, saves: int) -> list[hmc.NUTSRun]:
    """Make the ``saves``-th checkpoint raise KeyboardInterrupt right after it is written
    (Ctrl-C between chunks); returns the runs as each save saw them (draws, warm-up)."""
    seen: list = []
    real = checkpoint.Checkpoint.save

    def save(self, run, acceptance=None):
        real(self, run, acceptance)
        seen.append((run.warmup_done, run.draws_done, run.chains is None))
        if len(seen) == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
    return seen


@pytest.mark.parametrize(
    "saves, at",
    # 3 warm-up chunks of 16; or the 7 warm-up chunks, "warm-up done", 2 sampling chunks
    [(3, (48, 0, True)), (10, (100, 200, False))],
    ids=["in-warm-up", "in-sampling"],
)
def test_an_interrupted_reference_continues_from_its_last_chunk_to_the_same_result(
    problem, monkeypatch, caplog, saves, at
):
    seen = _interrupt_after(monkeypatch, saves)
    with pytest.raises(KeyboardInterrupt):
        ensure_reference(problem, SMALL)
    assert seen[-1] == at and not (problem.path / layout.REF).exists()
    meta = hmc.read_meta(problem.path / layout.REF_STATE)
    assert meta["sessions"] == 1 and meta["seconds"]["total"] > 0
    monkeypatch.undo()
    seen = []
    real = checkpoint.Checkpoint.save
    monkeypatch.setattr(
        checkpoint.Checkpoint,
        "save",
        lambda self, run, acc=None: (seen.append(run.draws_done), real(self, run, acc)),
    )
    with caplog.at_level(logging.INFO, logger="lambda_hat.reference"):
        resumed = ensure_reference(problem, SMALL)
    warm, draws, _ = at
    assert f"interrupted: continuing it from its saved state (warm-up {warm}/100, {draws}/400" in (
        caplog.text
    )
    assert f"(continued from {'draw' if draws else 'warm-up step'} {draws or warm})" in caplog.text
    # only the rest is computed: the draws of the first session are kept, not redone
    assert [d for d in seen if d > 0] == list(range(max(draws, 0) + 100, 401, 100))
    assert resumed["sessions"] == 2 and resumed["draws_per_chain"] == SMALL.draws
    assert resumed["warmup_done"] == SMALL.warmup and not resumed["stopped_early"]
    assert not (problem.path / layout.REF_STATE).exists()
    assert not (problem.path / layout.REF_PROGRESS).exists()
    with np.load(problem.path / layout.REF_TRACE) as z:
        assert z["loss"].shape == (SMALL.chains, SMALL.draws)  # the gate saw every draw
    whole = ensure_reference(problem, SMALL, force=True)
    assert whole["sessions"] == 1
    for key in ("llc_ref", "se_ref", "rhat", "ess_bulk", "divergences", "grad_evals"):
        assert resumed[key] == whole[key], key  # the same reference, bit for bit
    assert resumed["settings"] == whole["settings"] and resumed["gate"] == whole["gate"]


def test_a_saved_state_of_other_settings_is_not_continued(problem, monkeypatch, caplog):
    _interrupt_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        ensure_reference(problem, SMALL)
    monkeypatch.undo()
    other = dataclasses.replace(SMALL, draws=300)
    with caplog.at_level(logging.INFO, logger="lambda_hat.reference"):
        ref = ensure_reference(problem, other)
    assert "saved state unusable (the state file belongs to other reference settings)" in (
        caplog.text
    )
    assert ref["sessions"] == 1 and ref["draws_per_chain"] == 300


# The child computes the reference, each chunk made slow (0.5 s), so the kill lands mid-run.
_CHILD = """
import time
from lambda_hat.reference import checkpoint
from lambda_hat.reference.nuts import reference_job
save = checkpoint.Checkpoint.save
checkpoint.Checkpoint.save = lambda self, run, acc=None: (save(self, run, acc), time.sleep(0.5))
reference_job({spec!r}, {cfg!r}, {artifacts!r}, verbose=0)
"""


@pytest.mark.slow
def test_kill_9_of_the_process_computing_a_reference_loses_at_most_a_chunk(tmp_path):
    """A child process computes the reference; SIGKILL once it saved 2 sampling chunks; the
    rerun here continues from them."""
    spec = resolve_problem(PROBLEM)
    artifacts = tmp_path / "artifacts"
    home = build_problem(spec, artifacts).path
    cfg = dataclasses.asdict(SMALL)
    code = _CHILD.format(spec=dataclasses.asdict(spec), cfg=cfg, artifacts=str(artifacts))
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            rec = checkpoint.read_progress(home) or {}
            if rec.get("draws_done", 0) >= 200:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child finished before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    kept = hmc.read_meta(home / layout.REF_STATE)
    with np.load(home / layout.REF_STATE) as z:
        saved = int(z["draws_done"])
    assert saved >= 200 and kept["sessions"] == 1
    problem = build_problem(spec, artifacts)
    ref = ensure_reference(problem, SMALL)
    assert ref["sessions"] == 2 and ref["draws_per_chain"] == SMALL.draws
    assert ref["seconds"]["total"] >= kept["seconds"]["total"]  # the first session counted


# ------------------------------------------------------- 2. progress while the driver waits


def test_the_driver_prints_each_running_references_progress_once_per_change(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(stage, "POLL_SEC", 0.02)
    monkeypatch.setattr(checkpoint, "PROGRESS_EVERY_SEC", 0.0)
    spec = resolve_problem(PROBLEM)
    build_problem(spec, tmp_path)
    home = stage.reference_dir(tmp_path, stage.problem_id(spec), SMALL, SMALL.gamma)
    fut: cf.Future = cf.Future()
    records = [
        {"phase": "warmup", "warmup_done": 48, "eta_sec": 12.0},
        {"phase": "sampling", "draws_done": 200, "acceptance": 0.83, "eta_sec": 3.0},
    ]

    def worker():
        time.sleep(0.5)  # after the driver read the records already there (not news)
        for r in records:
            rec = {"pid": "p_x", "gamma": 1.0, "warmup": 100, "draws": 400, "seconds": 5.0, **r}
            atomic_write_json(home / layout.REF_PROGRESS, {**rec, "updated_at": time.time()})
            time.sleep(0.3)  # several polls see the same record: printed once
        fut.set_result({"status": "ok", "llc_ref": 1.5})

    thread = threading.Thread(target=worker)

    def submit(payload: dict) -> cf.Future:
        thread.start()
        return fut

    with caplog.at_level(logging.INFO, logger="lambda_hat.workflow"):
        refs = stage.reference_stage([spec], SMALL, tmp_path, submit)
        thread.join()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reference p_x")]
    assert lines == [
        "reference p_x (γ = 1): warm-up 48/100 steps, 5.0s spent, warm-up ETA 12.0s",
        "reference p_x (γ = 1): warm-up done; 200/400 draws per chain (50%), acceptance 0.83, "
        "5.0s spent, ETA 3.0s",
    ]
    assert refs[stage.problem_id(spec)]["llc_ref"] == 1.5


def test_ctrl_c_while_waiting_says_what_each_reference_saved(tmp_path, monkeypatch, caplog, capsys):
    spec = resolve_problem(PROBLEM)
    build_problem(spec, tmp_path)
    pid = stage.problem_id(spec)
    home = stage.reference_dir(tmp_path, pid, SMALL, SMALL.gamma)
    rec = {"pid": pid, "phase": "sampling", "draws_done": 200, "draws": 400, "updated_at": 1.0}
    atomic_write_json(home / layout.REF_PROGRESS, rec)

    def wait(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage.cf, "wait", wait)
    with pytest.raises(stage.ReferenceInterrupted) as exc:
        stage.reference_stage([spec], SMALL, tmp_path, lambda payload: cf.Future())
    assert str(exc.value) == f"{pid} (γ = 1): saved at 200/400 draws per chain"
    monkeypatch.setattr(pipeline, "execute", lambda plan: (_ for _ in ()).throw(exc.value))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("problems: [{model: linear, data: small}]\nmethods: [sgld]\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR, logger="lambda_hat.workflow"):
        assert pipeline.main(["--config", str(cfg)]) == 130
    text = caplog.text + capsys.readouterr().err
    assert "interrupted during the reference stage, before any trial" in text
    assert "saved at 200/400 draws per chain" in text
    assert "finished trials are saved" not in text


# ------------------------------------------------------------------ 5. table and header


class _Task:
    def __init__(self, name: str):
        self.name, self.counts, self.done = name, StudyCounts(), False


def test_progress_table_prints_only_the_studies_that_changed():
    tasks = [_Task("p_a:sgld"), _Task("p_a:vi"), _Task("p_b:sgld")]
    shown: list[str] = []
    clock = iter(range(0, 10_000, 10)).__next__
    table = progress.StudyTable(tasks, 10, clock=lambda: float(clock()), emit=shown.append)
    table()
    assert len(shown) == 1 and all(t.name in shown[0] for t in tasks)  # first: every study
    for _ in range(5):
        table()  # ticks with nothing new: silent
    tasks[0].counts.running = 4  # a trial starting is not news
    table()
    assert len(shown) == 1
    tasks[1].counts.finished, tasks[1].counts.best_value, tasks[1].counts.best_number = 1, 0.0123, 0
    table()
    assert len(shown) == 2 and "p_a:vi" in shown[1] and "0.0123 (#0)" in shown[1]
    assert "p_a:sgld" not in shown[1] and "p_b:sgld" not in shown[1]  # only the changed row
    table(force=True)
    assert len(shown) == 3 and all(t.name in shown[2] for t in tasks)


def test_the_plan_header_shows_readable_ranges_and_rounded_values(
    tmp_path, monkeypatch, caplog, capsys
):
    body = (
        "methods: [sgld, vi]\noptuna:\n  search_space:\n"
        "    sgld: {eta0: {low: 1.0e-5, high: 1.0e-2, log: true}, steps: {low: 500, high: 2000},"
        " chains: 2}\n"
        "    vi: {lr: 0.00123456789012345, steps: {low: 300, high: 1000, step: 100}}\n"
    )
    with caplog.at_level(logging.INFO, logger="lambda_hat.workflow"):
        code, _ = _dry_run(tmp_path, monkeypatch, body)
    assert code == 0
    text = caplog.text + capsys.readouterr().err
    assert "sgld: searched eta0=1e-05..0.01 log, batch={32, 64, 128, 256}" in text
    assert "precond_type={none, rmsprop, adam}, steps=500..2000; fixed chains=2" in text
    assert "steps=300..1000 step 100" in text and "fixed lr=0.001235" in text
    assert "Distribution(" not in text and "0.00123456789" not in text and "'error'" not in text
    assert fmt_range(FloatDistribution(0.25, 7.25, step=0.5)) == "0.25..7.25 step 0.5"
    assert fmt_range(FloatDistribution(1.23456e-5, 0.0123456, log=True)) == "1.235e-05..0.01235 log"
