"""The trial runner: identity, budgets, failures as results, and hyperparameters that matter."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat import methods
from lambda_hat.cli import main as cli_main
from lambda_hat.llc import engine
from lambda_hat.methods.stability import StabilityRange
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError
from lambda_hat.trial.identity import load_metrics, run_dir_for
from lambda_hat.trial.runner import run_method_trial


@pytest.fixture(scope="module")
def linear(linear_problem):
    return linear_problem


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------- hyperparameters


def test_search_spaces_are_the_documented_ones():
    sgld = methods.search_space("sgld")
    assert sgld["eta0"] == StabilityRange(1e-3, 1.0, True, FloatDistribution(1e-6, 1e-1, log=True))
    assert "gamma" not in sgld  # the reference's γ unless choices are listed (issue 9)
    assert sgld["batch"] == CategoricalDistribution([32, 64, 128, 256])
    assert sgld["precond_type"] == CategoricalDistribution(["none", "rmsprop", "adam"])
    assert sgld["steps"] == IntDistribution(5000, 20000)
    vi = methods.search_space("vi")
    assert vi["lr"] == FloatDistribution(1e-5, 5e-2, log=True)
    assert vi["M"] == CategoricalDistribution([4, 8, 16])
    assert vi["r"] == CategoricalDistribution([1, 2, 4])
    assert vi["whitening_mode"] == CategoricalDistribution(["none", "rmsprop", "adam", "lanczos"])
    assert vi["steps"] == IntDistribution(2000, 20000)
    assert vi["batch_size"] == CategoricalDistribution([32, 64, 128, 256])
    mc = methods.search_space("mclmc")  # tuned (the default): the tuner sets the step size
    assert set(mc) == {"target_accept", "L", "steps"}
    assert mc["target_accept"] == FloatDistribution(0.75, 0.97)
    assert mc["L"] == FloatDistribution(0.5, 3.0)
    assert mc["steps"] == IntDistribution(200, 2000)
    untuned = methods.search_space("mclmc", {"tune": False})
    assert untuned["step_size"] == StabilityRange(
        0.02, 0.5, True, FloatDistribution(1e-4, 1e-1, log=True)
    )
    assert untuned["L"] == FloatDistribution(0.3, 10.0, log=True)
    assert set(untuned) == {"step_size", "L", "steps"}
    for method in methods.METHODS:  # every searched name is a field with a default
        assert set(methods.search_space(method)) <= set(methods.default_hyperparams(method))
        assert methods.default_hyperparams(method)["chains"] == 4 or method == "vi"


def test_validation_names_the_field_and_the_fix():
    hp = methods.validate_hyperparams("sgld", {"eta0": "1e-4", "steps": 2000.0})
    assert hp["eta0"] == 1e-4 and hp["steps"] == 2000 and isinstance(hp["steps"], int)
    with pytest.raises(ConfigError, match=r"hyperparams\.eta: unknown key.*'eta0'.*Valid keys"):
        methods.validate_hyperparams("sgld", {"eta": 1e-4})
    with pytest.raises(ConfigError, match=r"precond_type.*'rmsprop'"):
        methods.validate_hyperparams("sgld", {"precond_type": "rmsprp"})
    with pytest.raises(ConfigError, match=r"vi\.M: got 0, must be >= 1"):
        methods.validate_hyperparams("vi", {"M": 0}, where="vi")
    with pytest.raises(ConfigError, match="step_size: is required when tune is false"):
        methods.validate_hyperparams("mclmc", {"tune": False})
    with pytest.raises(ConfigError, match="known methods"):
        methods.default_hyperparams("nuts")


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
