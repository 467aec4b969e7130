"""Cluster Parsl configs load with the pinned Parsl and render their batch scripts, without a
cluster: the scheduler call (``execute_wait``) is substituted, as Parsl's own tests do."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import parsl.addresses
import pytest
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.providers import PBSProProvider, SlurmProvider

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.parallel import configs
from lambda_hat.parallel.configs import load_parsl_config
from lambda_hat.schema import ConfigError

ROOT = Path(__file__).resolve().parents[2] / "parsl_configs"


@pytest.fixture
def no_internet(monkeypatch):
    """Parsl's public address lookups fail loudly: a shipped config must not need them."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a public address lookup was attempted")

    for name in ("address_by_query", "address_by_route", "get_all_addresses"):
        monkeypatch.setattr(parsl.addresses, name, refuse)
    return calls


@pytest.mark.parametrize(
    "name,provider,launcher,submit_out,expect,absent,expect_cmd",
    [
        (
            "slurm.py",
            SlurmProvider,
            SrunLauncher,
            "Submitted batch job 42",
            ["#SBATCH --partition=PARTITION", "#SBATCH --nodes=2", "#SBATCH --time=240\n"],
            [],
            "sbatch",
        ),
        (
            "pbs.py",
            PBSProProvider,
            SingleNodeLauncher,
            "42.pbs-server",
            ["select=1:ncpus=32\n", "walltime=04:00:00"],
            ["mpiexec", "--cpu-bind", "--depth", "--ppn"],  # Cray-only flags
            "qsub  -q QUEUE",
        ),
    ],
)
def test_cluster_config_renders_a_batch_script(
    name, provider, launcher, submit_out, expect, absent, expect_cmd, tmp_path, no_internet
):
    t0 = time.monotonic()
    config = load_parsl_config(ROOT / name)
    assert time.monotonic() - t0 < 5  # no network timeout on load
    assert no_internet == []
    (ex,) = config.executors
    assert isinstance(ex.provider, provider) and isinstance(ex.provider.launcher, launcher)
    # The login node's own address, found without the internet (here: what its hostname
    # resolves to; INTERFACE selects an interface instead).
    assert ex.address == parsl.addresses.address_by_hostname()
    assert config.monitoring is None  # the resource monitor forks JAX processes
    # Workers drain 20 min before the 4 h walltime: longer than a default trial may take.
    assert ex.drain_period == 4 * 3600 - 20 * 60
    longest_trial = OptunaConfig().method_budget_sec * OptunaConfig().timeout_grace
    assert 4 * 3600 - ex.drain_period > longest_trial + 60
    calls = []

    def fake_execute_wait(cmd, timeout=None):
        calls.append(cmd)
        return 0, submit_out, ""

    prov = ex.provider
    prov.script_dir = str(tmp_path)
    prov.execute_wait = fake_execute_wait
    job_id = prov.submit("process_worker_pool.py --example", 1, "lh_test")
    assert job_id == "42" or job_id.startswith("42")
    (script,) = tmp_path.glob("lh_test*")
    text = script.read_text()
    for needle in expect:
        assert needle in text, (needle, text)
    for needle in absent:
        assert needle not in text, (needle, text)
    assert "process_worker_pool.py --example" in text
    assert "activate" in text and "XLA_PYTHON_CLIENT_PREALLOCATE=false" in text
    assert any(expect_cmd in c for c in calls), calls


def test_pbs_config_runs_one_worker_pool_per_node_without_mpi(no_internet):
    (ex,) = load_parsl_config(ROOT / "pbs.py").executors
    prov = ex.provider
    assert prov.nodes_per_block == 1 and prov.max_blocks == prov.init_blocks == 2
    script = prov.launcher("process_worker_pool.py --example", 1, prov.nodes_per_block)
    assert "WORKERCOUNT=1\n" in script and "mpiexec" not in script


@pytest.mark.parametrize("name", ["slurm.py", "pbs.py"])
def test_walltime_shorter_than_the_drain_margin_is_refused(name, tmp_path, no_internet):
    text = (ROOT / name).read_text().replace('WALLTIME = "04:00:00"', 'WALLTIME = "00:10:00"')
    copy = tmp_path / name
    copy.write_text(text)
    with pytest.raises(ConfigError, match="00:10:00 is not longer than DRAIN_MARGIN_SEC 1200"):
        load_parsl_config(copy)


@pytest.mark.parametrize("name", ["slurm.py", "pbs.py"])
def test_a_lost_job_is_replaced_and_workers_are_pinned(name, no_internet):
    """Issue 10: one failed block (a node failure, an OOM kill) must not mark the executor bad
    for good — only MAX_FAILED_JOBS_IN_A_ROW failed jobs in a row do — and each worker is
    pinned to its own core."""
    from parsl.jobs.error_handlers import windowed_error_handler

    (ex,) = load_parsl_config(ROOT / name).executors
    assert ex.cpu_affinity == "block"
    handler = ex.block_error_handler
    assert handler.func is windowed_error_handler and handler.keywords == {"threshold": 3}


def test_batch_size_defaults_to_the_executors_capacity(no_internet, tmp_path, caplog):
    """Issue 10: optuna.batch_size (default null) fills the executors: the SLURM template's
    2 nodes x 32 workers run 64 trials at once, not 16; a different value is warned about."""
    from lambda_hat.config.load import load_tuning
    from lambda_hat.parallel import configs
    from lambda_hat.study.plan import check_plan

    assert configs.capacity(load_parsl_config(ROOT / "slurm.py")) == 64
    assert configs.capacity(load_parsl_config(ROOT / "pbs.py")) > 0
    assert configs.capacity(configs.local_config(3)) == 3
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("problems: [{model: linear, data: small}]\nmethods: [sgld]\n")
    plan = check_plan(load_tuning(cfg), str(ROOT / "slurm.py"), None)
    assert plan.batch_size == 64
    cfg.write_text(cfg.read_text() + "optuna: {batch_size: 8}\n")
    with caplog.at_level("WARNING", logger="lambda_hat.workflow"):
        plan = check_plan(load_tuning(cfg), str(ROOT / "slurm.py"), None)
    assert plan.batch_size == 8 and "executors run 64 at once" in caplog.text


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_parsl_config_file_is_loaded_or_rejected_clearly(tmp_path):
    from parsl.executors import HighThroughputExecutor

    cfg = configs.load_parsl_config(Path(__file__).parents[2] / "parsl_configs" / "local.py")
    (htex,) = cfg.executors
    assert isinstance(htex, HighThroughputExecutor) and cfg.monitoring is None
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="--parsl-config"):
        configs.load_parsl_config(bad)
