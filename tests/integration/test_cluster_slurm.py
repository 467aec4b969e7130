"""``parsl-optuna`` on a real SLURM, through ``parsl_configs/slurm.py`` as a user fills it in.

Needs a running single-node SLURM with accounting (``sudo bash tests/integration/cluster/start_slurm.sh``;
``.ci/run`` starts it). Without one these tests skip and say why; with ``CI=true`` they fail
instead, so CI cannot pass without running them. Trials are the synthetic target (no sampling),
so the time is SLURM's, Parsl's and one tiny HMC reference's. Each test's driver runs in its own
directory (its jobs' working directory in sacct and squeue); they share the artifacts, so the
second reuses the first one's reference.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from helpers.procs import kill_and_wait
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from lambda_hat.study.tell import counts_as_finished

# one xdist worker runs these in order: they share one small SLURM node
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("slurm")]

REPO = Path(__file__).resolve().parents[2]
START = "bash tests/integration/cluster/start_slurm.sh"
CLI = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]
SYNTHETIC = "lambda_hat.trial.synthetic:synthetic_trial"
CONFIG = (  # one tiny problem; {seed} differs per test, so no test reuses another's trials
    "problems: [{{model: linear, data: small, teacher: _null, seed: 0}}]\n"
    "methods: [sgld]\n"
    "reference: {{chains: 2, draws: 200, warmup: 200, rhat_max: 1.1, ess_min: 50}}\n"
    "optuna: {{n_startup_trials: 2, method_budget_sec: 60, seed: {seed}{more}}}\n"
)


def _sh(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _slurm_unavailable() -> str | None:
    """Why SLURM cannot be used here, or None when sbatch, sinfo and sacct all work."""
    how = f"start it with `sudo {START}` (needs root and apt-get)"
    if not shutil.which("sbatch"):
        missing = [
            w
            for w, ok in (("root", os.geteuid() == 0), ("apt-get", shutil.which("apt-get")))
            if not ok
        ]
        why = f"; here: no {' and no '.join(missing)}" if missing else ""
        return f"SLURM is not installed: {how}{why}"
    try:
        ping = _sh("scontrol", "ping")
        if "is UP" not in ping.stdout:
            said = (ping.stdout.strip() or ping.stderr.strip() or "no output").splitlines()[0]
            return f"slurmctld does not answer ({said}): {how}"
        state = _sh("sinfo", "-h", "-o", "%T").stdout.split()
        if not any(s.startswith(("idle", "mix", "alloc")) for s in state):
            return f"no SLURM node is up (sinfo: {state}): {how}"
        acct = _sh("sacct", "-X", "-n")
        if acct.returncode != 0:
            return f"sacct fails ({acct.stderr.strip()}): accounting (slurmdbd) is needed; {how}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM commands fail ({exc}): {how}"
    return None


@pytest.fixture(scope="module")
def slurm() -> dict:
    """The default partition and its CPUs per node; skip (or, with CI=true, fail) without SLURM."""
    why = _slurm_unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the cluster tests cannot run: {why}", pytrace=False)
        pytest.skip(why)
    line = _sh("sinfo", "-h", "-o", "%P %c").stdout.split("\n")
    default = next(x for x in line if x.split()[0].endswith("*")).split()
    return {"partition": default[0].rstrip("*"), "cores": int(default[1])}


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm")


def _filled_config(slurm: dict, dest: Path, extra: str = "") -> Path:
    """``parsl_configs/slurm.py`` with its placeholders replaced, as a user would (``extra``:
    lines appended)."""
    venv = Path(sys.prefix)
    activate = venv / "bin" / "activate"
    assert activate.is_file(), f"the tests run in a virtual environment ({activate} missing)"
    values = {
        "PARTITION": slurm["partition"],
        "NODES": 1,
        "CORES_PER_NODE": slurm["cores"],
        "WALLTIME": "00:10:00",
        "DRAIN_MARGIN_SEC": 60,
        "WORKER_INIT": f"source {activate}; export XLA_PYTHON_CLIENT_PREALLOCATE=false",
    }
    source = (REPO / "parsl_configs" / "slurm.py").read_text()
    lines = source.splitlines(keepends=True)
    assigns = {
        node.targets[0].id: node
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert set(values) <= set(assigns), set(values) - set(assigns)
    for name in sorted(values, key=lambda n: -assigns[n].lineno):  # bottom up: lines stay valid
        node = assigns[name]
        lines[node.lineno - 1 : node.end_lineno] = [f"{name} = {values[name]!r}\n"]
    dest.write_text("".join(lines) + extra)
    return dest


def _driver(
    shared: Path,
    slurm: dict,
    name: str,
    seed: int,
    max_trials: int,
    env: dict,
    extra: str = "",
    more: str = "",
):
    """Start ``parsl-optuna`` on the filled-in SLURM config in ``<shared>/<name>/`` (its jobs'
    working directory, which tells them apart in sacct), with output in ``<name>/driver.log``.
    The artifacts (the reference) are shared; ``extra``: lines appended to the Parsl config;
    ``more``: optuna keys added to the experiment's."""
    workdir = shared / name
    workdir.mkdir()
    config = workdir / "experiment.yaml"
    config.write_text(CONFIG.format(seed=seed, more=more))
    args = [
        "--config",
        str(config),
        "--parsl-config",
        str(_filled_config(slurm, workdir / "slurm.py", extra)),
        "--results",
        str(workdir / "results"),
        "--artifacts",
        str(shared / "artifacts"),
        "--max-trials",
        str(max_trials),
        "--batch-size",
        str(slurm["cores"]),
        "--trial-target",
        SYNTHETIC,
    ]
    with (workdir / "driver.log").open("w") as out:
        proc = subprocess.Popen(
            CLI + args, cwd=workdir, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, workdir


def _jobs_of(workdir: Path) -> dict[str, str]:
    """``job id -> state`` of the SLURM jobs submitted from ``workdir`` (sacct, all states)."""
    out = _sh("sacct", "-X", "-n", "-P", "-S", "now-1hours", "-o", "JobID,State,WorkDir").stdout
    jobs = {}
    for row in out.splitlines():
        job_id, state, wd = row.split("|", 2)
        if wd == str(workdir):
            jobs[job_id] = state.split()[0]
    return jobs


def _queued_of(workdir: Path) -> list[str]:
    """Ids of this directory's jobs still pending or running (squeue)."""
    out = _sh("squeue", "-h", "-o", "%i|%Z").stdout
    return [row.split("|")[0] for row in out.splitlines() if row.split("|", 1)[1] == str(workdir)]


def _in(workdir: Path) -> list[psutil.Process]:
    """Processes whose working directory is ``workdir`` or below (the driver's interchange)."""
    base, found = str(workdir), []
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info["cwd"] or ""
        if p.pid != os.getpid() and (cwd == base or cwd.startswith(base + os.sep)):
            found.append(p)
    return found


def _clean_up(workdir: Path, procs: list[psutil.Process]) -> None:
    """Cancel this directory's jobs and kill ``procs`` and the processes left in it."""
    queued = _queued_of(workdir)
    if queued:
        _sh("scancel", *queued)
    kill_and_wait({p.pid: p for p in procs + _in(workdir)}.values())
    deadline = time.monotonic() + 30
    while _queued_of(workdir) and time.monotonic() < deadline:
        time.sleep(0.5)


def _wait(what: str, check, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{tail}")


def _trial_metrics(results: Path) -> list[dict]:
    """The metrics.json of every trial of the run whose results are in ``results``."""
    table = pd.read_parquet(results / "optuna_trials.parquet")
    return [json.loads((Path(d) / "metrics.json").read_text()) for d in table.run_dir]


def test_tuning_runs_its_trials_inside_slurm_jobs(slurm, shared):
    t0 = time.monotonic()
    proc, workdir = _driver(shared, slurm, "e2e", 0, 4, {})
    log = workdir / "driver.log"
    try:
        proc.wait(timeout=240)
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, log.read_text()[-4000:]
        # A clean exit leaves nothing: no job queued, nothing running from the directory.
        _wait(
            "the run's jobs and processes to end",
            lambda: not _queued_of(workdir) and not _in(workdir),
            30,
        )
    finally:
        _clean_up(workdir, [proc] if proc.poll() is None else [])

    trials = _trial_metrics(workdir / "results")
    assert len(trials) == 4 and all(m["status"] == "ok" for m in trials), trials
    recorded = {m["job_id"] for m in trials}
    assert None not in recorded, "a trial ran outside a SLURM job"
    nodes = set(_sh("sinfo", "-h", "-N", "-o", "%N").stdout.split())
    assert {m["node"] for m in trials} <= nodes
    # sacct knows every job id the trials recorded, and this run submitted no other job (one
    # block: the reference and all four trials ran in it). Accounting lags by a second or two.
    jobs = _wait("sacct to list the run's job", lambda: _jobs_of(workdir), 30)
    assert recorded == set(jobs), (recorded, jobs)
    assert all(state in ("COMPLETED", "CANCELLED") for state in jobs.values()), jobs
    print(f"tuning through SLURM: {elapsed:.1f}s, jobs {jobs}")


def test_sigterm_of_the_driver_leaves_no_job_and_no_interchange(slurm, shared):
    t_start = time.time()
    proc, workdir = _driver(shared, slurm, "sigterm", 1, 8, {"LAMBDA_HAT_SYNTHETIC_SECONDS": "20"})
    log = workdir / "driver.log"
    procs: list[psutil.Process] = []
    try:
        _wait("a running SLURM job", lambda: _queued_of(workdir), 60, log)
        _wait(
            "a trial in flight",
            lambda: [
                p
                for p in (shared / "artifacts" / "runs").glob("*/*/*/isolation/progress.json")
                if p.stat().st_mtime > t_start
            ],
            180,  # the job starts its worker pool first (the reference is read on the driver)
            log,
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        procs = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 130, log.read_text()[-3000:]  # interrupted, said so
        # Within 20 s of the driver's exit (SLURM's KillWait is 5 s): no job of the run queued
        # or running, and nothing running from its directory (the interchange).
        deadline = time.monotonic() + 20
        while (_queued_of(workdir) or _in(workdir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in _in(workdir)]
        assert _queued_of(workdir) == [], f"SLURM jobs left: {_queued_of(workdir)}"
        assert left == [], f"processes left: {left}"
    finally:
        _clean_up(workdir, procs + ([proc] if proc.poll() is None else []))


def test_a_job_left_by_a_killed_driver_is_cancelled_at_the_next_start(slurm, shared):
    """kill -9 of the driver runs no clean-up: the jobs it recorded in its run directory are
    cancelled by the next session (lambda_hat.parallel.blocks.cancel_previous)."""
    from lambda_hat._io import atomic_write_json
    from lambda_hat.parallel import blocks

    sub = _sh("sbatch", "--parsable", "-p", slurm["partition"], "-t", "5", "--wrap", "sleep 300")
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    run_dir = shared / "killed_driver"
    record = {"driver_pid": 2**22 + 1, "interchanges": [], "jobs": []}
    record["jobs"].append({"provider": "SlurmProvider", "job_id": job})
    atomic_write_json(run_dir / blocks.RECORD_NAME, record)
    try:
        assert blocks.cancel_previous(run_dir) == [f"scancel {job}"]
        deadline = time.monotonic() + 20
        while job in _sh("squeue", "-h", "-o", "%i").stdout.split() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job not in _sh("squeue", "-h", "-o", "%i").stdout.split()
        assert not (run_dir / blocks.RECORD_NAME).exists()
    finally:
        _sh("scancel", job)


# Parsl notices a lost worker pool by its missing heartbeats (120 s by default), and the failed
# job, which it must see before it submits a new one, by polling sacct (every 60 s: the
# SlurmProvider's read-only status_polling_interval, so a subclass of the same name, which
# lambda_hat's job record keys on). The test shortens both; the rest is the shipped config.
FAST_FAILURE_DETECTION = (
    "config.executors[0].heartbeat_period = 2\n"
    "config.executors[0].heartbeat_threshold = 10\n"
    "_provider = config.executors[0].provider\n"
    "_provider.__class__ = type(\n"
    "    'SlurmProvider', (type(_provider),), {'status_polling_interval': 5}\n"
    ")\n"
)


def _pools_of(workdir: Path) -> list[psutil.Process]:
    """The worker pools of the driver in ``workdir`` (their command line names its run dir)."""
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "process_worker_pool" in " ".join(p.info["cmdline"] or [])
        and str(workdir) in " ".join(p.info["cmdline"] or [])
    ]


def test_a_killed_worker_pool_is_replaced_by_a_new_job_and_the_study_finishes(slurm, shared):
    """kill -9 of process_worker_pool in the SLURM job (a node failure, the OOM killer): the job
    fails, Parsl submits a new one, the trials in flight come back as infrastructure failures
    and are retried there; the study finishes with max_trials, none lost, nothing left."""
    t_start = time.time()
    cached = list((shared / "artifacts" / "problems").glob("*/ref.json"))  # the first test's
    env = {"LAMBDA_HAT_SYNTHETIC_SECONDS": "3"}
    proc, workdir = _driver(
        shared,
        slurm,
        "poolkill",
        2,
        6,
        env,
        FAST_FAILURE_DETECTION,
        ", validate: null, pruner: none",  # a pruned trial is timing-dependent: not this test's
    )
    log = workdir / "driver.log"
    runs = shared / "artifacts" / "runs"
    try:
        _wait(
            "two finished trials",
            lambda: (
                len([p for p in runs.glob("*/*/*/metrics.json") if p.stat().st_mtime > t_start])
                >= 2
            ),
            180,
            log,
        )
        (first_job,) = _queued_of(workdir)
        (pool,) = _wait("the worker pool", lambda: _pools_of(workdir), 30, log)
        done = {t.number for t in _study_trials(workdir / "results") if t.state.is_finished()}
        pool.kill()
        proc.wait(timeout=240)
        text = log.read_text()
        assert proc.returncode == 0, text[-4000:]
        _wait(
            "the run's jobs and processes to end",
            lambda: not _queued_of(workdir) and not _in(workdir),
            30,
        )
    finally:
        _clean_up(workdir, [proc] if proc.poll() is None else [])
    assert "lost to the infrastructure" in text and "resubmitting" in text, text[-4000:]
    if cached:  # read on the driver: tuning did not wait for a job to run the reference
        assert "1 cached, 0 submitted" in text, text[-4000:]
    trials = _study_trials(workdir / "results")
    finished = [t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))]
    assert len(finished) == 6 and all(t.state.is_finished() for t in trials)
    assert done <= {t.number for t in finished}  # no finished trial lost
    metrics = _trial_metrics(workdir / "results")
    assert all(m["status"] == "ok" for m in metrics), metrics
    jobs = _wait(
        "sacct to list both jobs", lambda: len(_jobs_of(workdir)) >= 2 and _jobs_of(workdir), 30
    )
    assert jobs[first_job] not in ("COMPLETED", "RUNNING"), jobs  # the killed pool's job
    later = {m["job_id"] for m in metrics} - {first_job}
    assert later and later <= set(jobs), (later, jobs)  # the retried trials ran in a new job
    print(f"pool killed: jobs {jobs}")


def _study_trials(results: Path) -> list:
    journal = JournalStorage(JournalFileBackend(str(results / "studies" / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(journal)
    return optuna.load_study(study_name=summary.study_name, storage=journal).trials
