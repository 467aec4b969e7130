"""Two ``parsl-optuna`` drivers on one config and one storage: a real PostgreSQL server, and a
shared journal file. Both must end with exactly ``max_trials`` finished trials per study, no
run twice, none lost, and neither driver may settle the other's running trials.

The PostgreSQL server is a throw-away cluster (``initdb`` in a temporary directory, as the
``postgres`` user when run as root) on 127.0.0.1 and a free port, stopped at teardown. Debian's
``postgresql`` package is installed with apt-get when missing and root is available. Without a
server the tests skip, saying why; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import TINY_PROBLEM, TINY_REFERENCE
from optuna.trial import TrialState

from lambda_hat import cli
from lambda_hat.study import sharing
from lambda_hat.study import storage as studies
from lambda_hat.study.tell import counts_as_finished

CLI = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]
SYNTHETIC = "lambda_hat.trial.synthetic:synthetic_trial"
MAX_TRIALS = 6

optuna.logging.set_verbosity(optuna.logging.WARNING)

# one xdist worker: the module's PostgreSQL server and shared study are built once
pytestmark = pytest.mark.xdist_group("postgres")


def _unavailable(reason: str) -> None:
    """Skip, or fail in CI (where PostgreSQL must be installable)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL test could not run in CI: {reason}")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _install_postgres() -> str | None:
    """apt-get install Debian's ``postgresql``; the reason it cannot, or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and apt-get as root is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run ``cmd`` as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie: exited, not yet reaped by its parent)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database on a temporary PostgreSQL cluster; the server is stopped afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        why = _install_postgres()
        if why:
            _unavailable(why)
        bindir = _pg_bindir()
        if bindir is None:
            _unavailable("apt-get installed postgresql but no pg_ctl was found")
    root = Path(tempfile.mkdtemp(prefix="lambda_hat_pg_"))
    data, logfile, port = root / "data", root / "server.log", _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        init = subprocess.run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
            ),
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            _unavailable(f"initdb failed: {init.stderr[-500:]}")
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
        start = subprocess.run(
            _as_postgres([*pg_ctl, "-l", str(logfile), "-o", opts, "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
        )
        started = start.returncode == 0
        if not started:
            log = logfile.read_text() if logfile.exists() else ""
            _unavailable(f"pg_ctl start failed: {start.stderr[-300:]} {log[-500:]}")
        subprocess.run(
            _as_postgres(
                [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
                + ["lambda_hat_test"]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/lambda_hat_test"
    finally:
        if started:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            subprocess.run(_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"]), check=True)
            assert _exited(pid), "the PostgreSQL server outlived its stop"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_config(tmp_path_factory, tiny_reference) -> Path:
    """One problem, two methods; its HMC reference there before the drivers start (conftest's
    ``tiny_reference``, computed once per session), so they share it."""
    root = tmp_path_factory.mktemp("two_drivers")
    tiny_reference(root / "artifacts")
    config = root / "config.yaml"
    config.write_text(
        f"problems: [{TINY_PROBLEM}]\nmethods: [sgld, vi]\nreference: {TINY_REFERENCE}\n"
        # No pruning: whether a trial is pruned depends on timing, and the check wants every
        # counted trial COMPLETE. Validation (tested elsewhere) kept to one run per study.
        "optuna: {n_startup_trials: 2, isolate: false, pruner: none,"
        " validate: {top_k: 1, seeds: 1}}\n"
        f"paths: {{artifacts: {root / 'artifacts'}, results: {root / 'results'}}}\n"
    )
    assert cli.main(["reference", "--config", str(config)]) == 0  # reads the stored one
    return config


def _two_drivers(config: Path, storage: str, tmp: Path) -> list[str]:
    """Start two drivers at once on ``config`` and ``storage``; wait for both; their logs."""
    procs = []
    for i in range(2):
        args = ["--config", str(config), "--local", "--storage", storage]
        args += ["--results", str(tmp / f"results{i}"), "--trial-target", SYNTHETIC]
        args += ["--max-trials", str(MAX_TRIALS), "--batch-size", "2"]
        procs.append(
            subprocess.Popen(
                CLI + args,
                cwd=tmp,
                env={**os.environ, "LAMBDA_HAT_SYNTHETIC_SECONDS": "1.0"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        outs.append(out)
        assert proc.returncode == 0, out[-4000:]
    return outs


def _check_shared_studies(storage: str, tmp: Path) -> None:
    opened = studies.open_storage_at(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
    assert len(names) == 2, names
    owners = set()
    for name in names:
        trials = optuna.load_study(study_name=name, storage=opened).get_trials()
        assert all(t.state.is_finished() for t in trials), name  # nothing left running
        finished = [
            t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))
        ]
        assert len(finished) == MAX_TRIALS, name
        assert all(t.state == TrialState.COMPLETE for t in finished), name
        ids = [t.user_attrs["run_id"] for t in finished]
        assert len(set(ids)) == MAX_TRIALS, name  # no run told twice
        for t in finished:  # nothing lost: every counted trial's metrics are on disk
            assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()
        owners |= {t.user_attrs[sharing.OWNER_ATTR] for t in finished}
        others = [t for t in trials if t not in finished]
        assert all(t.user_attrs.get("failure_kind") == "interrupted" for t in others), name
        print(f"{name}: {len(finished)} finished, {len(others)} surplus asks told interrupted")
    assert len(owners) == 2, owners  # both drivers ran trials of the shared studies
    for i in range(2):  # each driver waited for the other's trials before its Parquet
        df = pd.read_parquet(tmp / f"results{i}" / "optuna_trials.parquet")
        assert (df[df.status == "ok"].groupby("method").size() == MAX_TRIALS).all()


@pytest.mark.postgres
def test_two_drivers_share_postgres_studies_exactly(postgres_url, shared_config, tmp_path):
    t0 = time.monotonic()
    _two_drivers(shared_config, postgres_url, tmp_path)
    _check_shared_studies(postgres_url, tmp_path)
    print(f"two drivers on PostgreSQL: {time.monotonic() - t0:.1f}s")


@pytest.mark.slow  # ~30 s; the same two-driver sharing is tested on PostgreSQL in CI
def test_two_drivers_share_one_journal_exactly(shared_config, tmp_path):
    t0 = time.monotonic()
    journal = str(tmp_path / "shared" / "journal.log")
    _two_drivers(shared_config, journal, tmp_path)
    _check_shared_studies(journal, tmp_path)
    print(f"two drivers on one journal: {time.monotonic() - t0:.1f}s")
