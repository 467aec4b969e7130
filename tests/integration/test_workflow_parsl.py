"""``parsl-optuna`` end to end through the real Parsl local executor (subprocesses).

One module-scoped directory: the first test computes the two tiny references and the real
trials; the kill-and-resume test runs synthetic trials (each sleeps, so the driver can be killed
with trials in flight) in its own artifacts, which start with the session's copy of the first
problem's reference (conftest's ``tiny_reference``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import TINY_PROBLEM, TINY_REFERENCE
from helpers.procs import kill_leftovers
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lambda_hat.config.tuning import UCB_SIGMAS
from lambda_hat.study.tell import counts_as_finished

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "config" / "tiny_test.yaml"
CLI = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("wf")


def _cli(args, cwd, env=None, **kw):
    return subprocess.Popen(
        CLI + args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _studies(results: Path) -> dict[str, list]:
    storage = JournalStorage(JournalFileBackend(str(results / "studies" / "journal.log")))
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
        for s in optuna.get_all_study_summaries(storage)
    }


@pytest.mark.slow
def test_tiny_config_end_to_end_with_real_methods(shared):
    results, artifacts = shared / "results", shared / "artifacts"
    args = [
        "--config",
        str(TINY),
        "--local",
        "--results",
        str(results),
        "--artifacts",
        str(artifacts),
    ]
    t0 = time.monotonic()
    proc = _cli(args, shared)
    out, _ = proc.communicate(timeout=900)
    first = time.monotonic() - t0
    assert proc.returncode == 0, out[-4000:]

    by_study = _studies(results)
    assert len(by_study) == 4  # 2 problems x 2 methods
    for name, trials in by_study.items():
        finished = [
            t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))
        ]
        assert len(finished) == 3, name
        assert all(t.state.is_finished() for t in trials)
        pkl = results / "studies" / "optuna_llc" / f"{name}.pkl"
        assert len(pickle.loads(pkl.read_bytes()).trials) == len(trials)

    # the README snippet, as written, on the real table
    df = pd.read_parquet(results / "optuna_trials.parquet")
    ok = df[df.status == "ok"]
    best = ok.loc[ok.groupby(["pid", "method"]).objective.idxmin()]
    curve = df.sort_values("trial_number").assign(
        best_so_far=lambda d: d.groupby(["pid", "method"]).objective.cummin()
    )
    assert len(df) == sum(len(t) for t in by_study.values())
    assert set(best.method) == {"sgld", "vi"} and len(best) == 4
    # the default objective, ucb: |error| + 1 x the trial's SE beyond the reference's
    excess = (best.se_hat**2 + best.se_ref**2) ** 0.5 - best.se_ref
    expected = (best.llc_hat - best.llc_ref).abs() + UCB_SIGMAS * excess
    assert (best.objective - expected).abs().max() < 1e-9
    assert curve.best_so_far.notna().any()
    assert {"hp_eta0", "hp_lr", "hp_steps"} <= set(df)
    assert (df[df.method == "sgld"].hp_steps == 300).all()  # fixed by the search-space override
    assert df.runtime_sec[df.status == "ok"].gt(0).all()
    print(f"first run {first:.0f}s")

    # the same command again: everything is finished, nothing runs
    t0 = time.monotonic()
    proc = _cli(args, shared)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    again = _studies(results)
    assert {k: len(v) for k, v in again.items()} == {k: len(v) for k, v in by_study.items()}
    print(f"second run {time.monotonic() - t0:.0f}s")


def test_sigkill_mid_tuning_then_rerun_finishes_exactly_max_trials(shared, tiny_reference):
    results = shared / "resume_results"
    artifacts = tiny_reference(shared / "resume_artifacts")  # its reference is read, not run
    config = shared / "one_problem.yaml"  # the first problem of tiny_test.yaml
    config.write_text(
        f"problems: [{TINY_PROBLEM}]\nmethods: [sgld, vi]\nreference: {TINY_REFERENCE}\n"
        # pruning is timing-dependent here; validation (tested elsewhere) kept to one run each
        "optuna: {n_startup_trials: 2, pruner: none, validate: {top_k: 1, seeds: 1}}\n"
    )
    args = [
        "--config",
        str(config),
        "--local",
        "--results",
        str(results),
        "--artifacts",
        str(artifacts),
        "--max-trials",
        "6",
        "--batch-size",
        "2",
        "--trial-target",
        "lambda_hat.trial.synthetic:synthetic_trial",
    ]
    env = {"LAMBDA_HAT_SYNTHETIC_SECONDS": "0.5"}
    marker = str(shared)
    proc = _cli(args, shared, env)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list((artifacts / "runs").glob("*/*/*/metrics.json"))
            synthetic = [p for p in runs if "synthetic" in p.read_text()]
            if len(synthetic) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed"
    finally:
        kill_leftovers(proc, marker)  # SIGKILL: no clean-up of its own
    first, _ = proc.communicate(timeout=30)
    assert "1 cached, 0 submitted" in first, first[-4000:]  # tiny_reference's, as configured
    before = _studies(results)
    assert any(t.state == TrialState.RUNNING for ts in before.values() for t in ts)

    proc = _cli(args, shared, env)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    after = _studies(results)
    interrupted = 0
    for name, trials in after.items():
        assert all(t.state.is_finished() for t in trials), name
        finished = [
            t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))
        ]
        assert len(finished) == 6, name
        ids = [t.user_attrs["run_id"] for t in finished]
        assert len(ids) == len(set(ids)), name  # no finished trial twice
        numbers = {t.number for t in before[name] if t.state.is_finished()}
        kept = {t.number for t in trials if t.number in numbers}
        assert kept == numbers  # no finished trial lost
        interrupted += sum(t.user_attrs.get("failure_kind") == "interrupted" for t in trials)
    assert (
        interrupted + sum(t.user_attrs.get("reused", False) for ts in after.values() for t in ts)
        >= 1
    )
    df = pd.read_parquet(results / "optuna_trials.parquet")
    # Every finished trial succeeded, except those in flight (batch 2) whose processes the
    # test's own clean-up SIGKILLed while their worker still lived to record it: crashes.
    table = df[["method", "trial_number", "state", "status", "failure_kind"]]
    not_ok = df[(df.status != "ok") & (df.failure_kind != "interrupted")]
    assert not_ok.failure_kind.isin(["crashed", "oom"]).all(), table
    assert len(not_ok) <= 2, table
    ok = df[df.status == "ok"].groupby(["pid", "method"]).size()
    crashed = not_ok.groupby(["pid", "method"]).size().reindex(ok.index, fill_value=0)
    assert ((ok + crashed) == 6).all(), table
