"""Cluster Parsl configs load with the pinned Parsl and render their batch scripts, without a
cluster: the scheduler call (``execute_wait``) is substituted, as Parsl's own tests do."""

from pathlib import Path

import pytest
from parsl.launchers import MpiExecLauncher, SrunLauncher
from parsl.providers import PBSProProvider, SlurmProvider

from lambda_hat.workflow.execution import load_parsl_config

ROOT = Path(__file__).resolve().parents[1] / "parsl_configs"


@pytest.mark.parametrize(
    "name,provider,launcher,submit_out,expect,expect_cmd",
    [
        (
            "slurm.py",
            SlurmProvider,
            SrunLauncher,
            "Submitted batch job 42",
            ["#SBATCH --partition=PARTITION", "#SBATCH --nodes=2", "srun"],
            "sbatch",
        ),
        (
            "pbs.py",
            PBSProProvider,
            MpiExecLauncher,
            "42.pbs-server",
            ["select=2:ncpus=32\n", "mpiexec"],
            "qsub  -q QUEUE",
        ),
    ],
)
def test_cluster_config_renders_a_batch_script(
    name, provider, launcher, submit_out, expect, expect_cmd, tmp_path
):
    config = load_parsl_config(ROOT / name)
    (ex,) = config.executors
    assert isinstance(ex.provider, provider) and isinstance(ex.provider.launcher, launcher)
    assert ex.address not in ("127.0.0.1", "localhost")  # compute nodes must reach it
    assert config.monitoring is None  # the resource monitor forks JAX processes
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
    assert "activate" in text and "XLA_PYTHON_CLIENT_PREALLOCATE=false" in text
    assert any(expect_cmd in c for c in calls), calls
