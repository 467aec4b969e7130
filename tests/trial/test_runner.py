"""The trial runner: identity, budgets, failures as results (metrics.json), the progress and
stop channel between chunks, and hyperparameters that matter.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from lambda_hat import methods
from lambda_hat._io import atomic_write_json
from lambda_hat.cli import main as cli_main
from lambda_hat.llc import engine
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError
from lambda_hat.trial import app as trial_app
from lambda_hat.trial import identity
from lambda_hat.trial.identity import load_metrics, run_dir_for
from lambda_hat.trial.runner import run_method_trial


@pytest.fixture(scope="module")
def linear(linear_problem):
    return linear_problem


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


# Small, fast settings; each searched hyperparameter is then set to two values.
SENSITIVITY = {
    "sgld": (
        {"eta0": 1e-4, "batch": 32, "steps": 400, "eval_every": 10, "chains": 2},
        {"eta0": 2e-4, "gamma": 0.5, "batch": 64, "precond_type": "rmsprop", "steps": 600},
    ),
    "vi": (
        {
            "lr": 1e-2,
            "M": 4,
            "r": 1,
            "steps": 60,
            "batch_size": 32,
            "chains": 2,
            "eval_samples": 16,
            "whiten_steps": 20,
            "drift_steps": 0,  # a 60-step fit is far from the posterior: the drift check fails it
        },
        {"lr": 2e-2, "M": 8, "r": 2, "whitening_mode": "rmsprop", "steps": 80, "batch_size": 64},
    ),
    "mclmc": (
        {"steps": 200, "chains": 2},
        {"target_accept": 0.8, "L": 2.0, "steps": 300},
    ),
}


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) for m in ("sgld", "vi", "mclmc")],
)
def test_every_searched_hyperparameter_changes_the_run(method, linear, tmp_path):
    base, changes = SENSITIVITY[method]
    searched = set(methods.search_space(method)) | ({"gamma"} if method == "sgld" else set())
    assert set(changes) == searched  # nothing searched (or SGLD's γ setting) is left out

    def trial(hp):
        m = run_method_trial(linear, method, hp, None, 0, artifacts=tmp_path)
        assert m["status"] == "ok", m["failure"]
        with np.load(Path(m["run_dir"]) / "trace.npz") as z:
            trace = {k: z[k] for k in z.files}
        return m, trace

    m0, t0 = trial(base)
    for name, value in changes.items():
        m1, t1 = trial({**base, name: value})
        assert m1["run_id"] != m0["run_id"], name
        assert strict_json(Path(m1["run_dir"]) / "manifest.json")["hyperparams"][name] == value
        same = all(
            t0[k].shape == t1[k].shape and np.allclose(t0[k], t1[k], equal_nan=True) for k in t0
        )
        assert not same, f"{method}.{name} did not change the run"


# ------------------------------------------------------------------- budgets and failures


def test_budget_stop_keeps_the_draws_so_far_and_scores_against_the_ref(linear, tmp_path):
    hp = {"eta0": 1e-4, "batch": 32, "steps": 1600, "eval_every": 5, "chains": 2}
    ref = {"llc_ref": 1.5, "se_ref": 0.01, "beta": None, "gamma": 1.0}
    m = run_method_trial(linear, "sgld", hp, 1e-9, 0, ref=ref, artifacts=tmp_path)
    assert m["status"] == "ok" and m["stopped_early"]
    blocks = engine.chunk_capacity(320)  # one chunk of 5-step blocks, then the budget stops it
    assert blocks == engine.MIN_CHUNK
    assert m["fraction_done"] == pytest.approx(blocks / 320)
    assert m["work"]["steps"] == 5 * blocks and m["work"]["steps_planned"] == 1600
    assert m["draws"]["kept_per_chain"] == blocks - int(0.2 * blocks)
    assert m["error"] == pytest.approx(m["llc_hat"] - 1.5) and m["abs_error"] == abs(m["error"])
    stored = strict_json(Path(m["run_dir"]) / "metrics.json")
    assert stored["llc_hat"] == m["llc_hat"] and stored["se_ref"] == 0.01
    assert set(stored["seconds"]) == {"compile", "run", "total"}
    assert stored["seconds"]["compile"] >= 0 and stored["seconds"]["run"] > 0
    assert load_metrics(m["run_dir"]) == stored
    manifest = strict_json(Path(m["run_dir"]) / "manifest.json")
    assert run_dir_for(tmp_path, linear.pid, "sgld", manifest) == Path(m["run_dir"])
    assert manifest["budget_sec"] == 1e-9 and manifest["posterior"]["gamma"] == 1.0


def test_divergence_is_a_result_with_its_step(linear, tmp_path):
    hp = {"eta0": 0.05, "batch": 32, "steps": 2000, "eval_every": 10, "chains": 2}
    m = run_method_trial(linear, "sgld", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "failed" and m["failure"]["kind"] == "diverged"
    step = m["failure"]["step"]
    assert isinstance(step, int) and 0 < step <= 2000 and step % 10 == 0
    assert m["llc_hat"] is None
    stored = strict_json(Path(m["run_dir"]) / "metrics.json")  # no NaN/Infinity tokens
    assert stored["failure"]["step"] == step


def test_an_exception_becomes_a_failed_trial(linear, tmp_path, monkeypatch):
    def boom(*args):
        raise FloatingPointError("synthetic failure")

    monkeypatch.setitem(methods.REGISTRY, "sgld", methods.REGISTRY["sgld"]._replace(run=boom))
    m = run_method_trial(linear, "sgld", {"steps": 100}, None, 0, artifacts=tmp_path)
    assert m["status"] == "failed" and m["failure"]["kind"] == "error"
    assert m["failure"]["exc_type"] == "FloatingPointError"
    assert "synthetic failure" in Path(m["failure"]["traceback_path"]).read_text()
    assert strict_json(Path(m["run_dir"]) / "metrics.json")["status"] == "failed"


@pytest.mark.parametrize(
    "env,job_id,gpu",
    [
        ({"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "1"}, "4242", "1"),
        ({"PBS_JOBID": "77.pbs-server"}, "77.pbs-server", None),
        ({}, None, None),
    ],
)
def test_metrics_record_the_job_node_and_gpu(linear, tmp_path, monkeypatch, env, job_id, gpu):
    from lambda_hat.trial.synthetic import synthetic_trial

    for key in ("SLURM_JOB_ID", "PBS_JOBID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(
        methods.REGISTRY, "sgld", methods.REGISTRY["sgld"]._replace(run=lambda *a: 1 / 0)
    )
    m = run_method_trial(linear, "sgld", {"steps": 100}, None, 0, artifacts=tmp_path)
    stored = strict_json(Path(m["run_dir"]) / "metrics.json")
    synthetic = synthetic_trial(hyperparams={"eta0": 1.0})
    for where in (stored, synthetic):
        assert (where["job_id"], where["gpu"]) == (job_id, gpu)
        assert where["node"] == socket.gethostname()


def test_invalid_hyperparameters_raise_before_any_file(linear, tmp_path):
    with pytest.raises(ConfigError, match="eta0"):
        run_method_trial(linear, "sgld", {"eta0": -1.0}, None, 0, artifacts=tmp_path)
    assert not (tmp_path / "runs").exists()
    assert load_metrics(tmp_path / "nowhere") is None


def test_cli_trial(linear, artifacts, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "problems": [{"model": "linear", "data": "small"}],
                "methods": ["sgld"],
                "paths": {"artifacts": str(artifacts)},
            }
        )
    )
    argv = [
        "trial",
        "--config",
        str(cfg),
        "--problem",
        "0",
        "--method",
        "sgld",
        "--set",
        "eta0=1e-4",
        "--set",
        "steps=300",
        "--set",
        "chains=2",
        "--set",
        "batch=32",
        "--seed",
        "3",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "sgld on " + linear.pid + ": ok" in out
    path = Path(out.strip().splitlines()[-1].removeprefix("metrics: "))
    assert strict_json(path)["seed"] == 3
    assert cli_main([*argv[:-2], "--set", "eta=1"]) == 2  # a typo is bad input, exit 2


@pytest.mark.slow
def test_defaults_land_within_15_percent_of_hmc_on_a_small_mlp(tiny_mlp_problem, tmp_path):
    from lambda_hat.reference.nuts import ensure_reference

    cfg = ReferenceConfig(chains=4, draws=2000, warmup=500, target_accept=0.9)
    ref = ensure_reference(tiny_mlp_problem, cfg)
    assert ref["gate"]["passed"], ref["gate"]
    for method in methods.METHODS:
        m = run_method_trial(tiny_mlp_problem, method, {}, None, 0, ref=ref, artifacts=tmp_path)
        assert m["status"] == "ok", (method, m["failure"])
        assert m["abs_error"] < 0.15 * ref["llc_ref"], (method, m["llc_hat"], ref["llc_ref"])


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_metrics_json_is_written_for_a_failed_inline_trial(tmp_path):
    payload = {
        "pid": "p_a",
        "method": "sgld",
        "hyperparams": {"x": 1.0},
        "budget_sec": 5.0,
        "seed": 0,
        "artifacts": str(tmp_path),
        "isolate": False,
        "target": "lambda_hat.trial.synthetic:no_such_function",
    }
    run_id, run_dir = identity.target_location(payload)
    m = trial_app.execute_trial(dict(payload, run_id=run_id, run_dir=str(run_dir)))
    assert m["failure"]["kind"] == "error" and m["failure"]["exc_type"] == "AttributeError"
    assert identity.load_valid_metrics(run_dir) is None  # an error is run again, not reused
    assert (run_dir / "metrics.json").is_file()
    atomic_write_json(
        run_dir / "metrics.json", {"status": "failed", "failure": {"kind": "diverged"}}
    )
    assert identity.load_valid_metrics(run_dir)["failure"]["kind"] == "diverged"


@pytest.mark.slow  # compiles SGLD: 5-20 s on the shared machine, plus the linear problem
def test_the_runner_reports_its_estimate_between_chunks_and_stops_on_request(
    linear_problem, tmp_path, monkeypatch
):
    from lambda_hat.llc import channel, engine
    from lambda_hat.trial import runner

    progress, stop = tmp_path / channel.PROGRESS_NAME, tmp_path / channel.STOP_NAME
    monkeypatch.setenv(channel.PROGRESS_ENV, str(progress))
    monkeypatch.setenv(channel.STOP_ENV, str(stop))
    hp = {"eta0": 1e-4, "batch": 32, "steps": 1600, "eval_every": 5, "chains": 2}
    blocks = engine.chunk_capacity(320)  # 5-step blocks per chunk
    channel.request_stop(tmp_path)
    m = runner.run_method_trial(linear_problem, "sgld", hp, 600.0, 0, artifacts=tmp_path / "a")
    assert m["status"] == "failed" and m["failure"]["kind"] == "pruned"
    assert m["work"]["steps"] == 5 * blocks < m["work"]["steps_planned"] == 1600
    assert m["failure"]["fraction_done"] == pytest.approx(blocks / 320)
    history = channel.read_progress(tmp_path)["history"]
    assert history == [[pytest.approx(blocks / 320), pytest.approx(m["llc_hat"])]]
    assert 0.5 < m["llc_hat"] < 3.0  # exact 1.4996 (plans/methods.md); a first-chunk estimate

    stop.unlink()  # no request: one point per chunk, the last one the final estimate
    m = runner.run_method_trial(linear_problem, "sgld", hp, 600.0, 1, artifacts=tmp_path / "a")
    history = channel.read_progress(tmp_path)["history"]
    assert m["status"] == "ok" and len(history) == -(-320 // blocks)
    assert history[-1] == [1.0, pytest.approx(m["llc_hat"])]
