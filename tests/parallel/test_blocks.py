"""A driver killed with kill -9 leaves its interchange (and batch jobs) behind: the next
session finds them in the run directory's record and stops them (issue 10); what a dead worker
pool left is killed. (A pool lost mid-study end to end: tests/integration/test_lost_worker_pool.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers.procs import kill_and_wait

from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.parallel import blocks


def _fake_interchange() -> subprocess.Popen:
    code = "import time; time.sleep(120)"
    return subprocess.Popen([sys.executable, "-c", code, "parsl: HTEX interchange"])


def test_a_dead_drivers_interchange_is_killed_and_the_record_removed(tmp_path):
    proc = _fake_interchange()
    try:
        atomic_write_json(
            tmp_path / blocks.RECORD_NAME,
            {"driver_pid": 2**22 + 1, "interchanges": [proc.pid], "jobs": []},
        )
        assert blocks.cancel_previous(tmp_path) == [f"killed interchange {proc.pid}"]
        assert proc.wait(timeout=10) == -9
        assert not (tmp_path / blocks.RECORD_NAME).exists()
    finally:
        proc.kill()
        proc.wait()


def test_the_blocks_of_a_driver_that_still_runs_are_left_alone(tmp_path):
    proc, other_driver = _fake_interchange(), _fake_interchange()  # any live python process
    try:
        record = {"driver_pid": other_driver.pid, "interchanges": [proc.pid], "jobs": []}
        atomic_write_json(tmp_path / blocks.RECORD_NAME, record)
        assert blocks.cancel_previous(tmp_path) == []
        assert proc.poll() is None and read_json(tmp_path / blocks.RECORD_NAME) == record
    finally:
        for p in (proc, other_driver):
            p.kill()
            p.wait()


def test_a_pid_that_is_no_interchange_is_never_killed(tmp_path):
    atomic_write_json(
        tmp_path / blocks.RECORD_NAME,
        {"driver_pid": 2**22 + 1, "interchanges": [os.getpid()], "jobs": []},
    )
    assert blocks.cancel_previous(tmp_path) == []  # this pytest process is still here


def test_only_parsls_interchange_is_taken_for_one(tmp_path):
    """By its title or its launch script, not by the word: pytest-xdist titles a worker with
    the test it runs, and this file's ``..._no_interchange_...`` test once killed its worker."""
    script = tmp_path / "interchange.py"
    script.write_text("import time\ntime.sleep(120)\n")
    sleeper = "import time; time.sleep(120)"
    procs = {
        "title": subprocess.Popen([sys.executable, "-c", sleeper, "parsl: HTEX interchange"]),
        "launch": subprocess.Popen([sys.executable, str(script)]),
        "word": subprocess.Popen([sys.executable, "-c", sleeper, "test_no_interchange_here"]),
    }
    try:
        time.sleep(0.2)
        found = {name: blocks._is_interchange(p.pid) for name, p in procs.items()}
        assert found == {"title": True, "launch": True, "word": False}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_a_local_session_records_its_interchange_and_removes_the_record(tmp_path):
    from lambda_hat.parallel import configs, session

    run_dir = tmp_path / "runinfo"
    with session.parsl_session(configs.local_config(1, run_dir=run_dir)):
        rec = read_json(blocks.record_path(run_dir))
        assert rec["driver_pid"] == os.getpid() and len(rec["interchanges"]) == 1
    assert not blocks.record_path(run_dir).exists()


# ----------------------------------------------------------- several drivers, one results dir


def test_each_driver_has_its_own_record_and_a_live_ones_is_left_alone(tmp_path):
    """Two drivers on one results directory: each writes its own record; a starting driver
    cancels only the dead one's (it once took the live driver's interchange for a leftover)."""
    live_driver, live_ic, dead_ic = _fake_interchange(), _fake_interchange(), _fake_interchange()
    try:
        started = psutil.Process(live_driver.pid).create_time()
        live = {"host": socket.gethostname(), "driver_pid": live_driver.pid}
        live.update(driver_started=started, interchanges=[live_ic.pid], jobs=[])
        atomic_write_json(blocks.record_path(tmp_path, os_pid=live_driver.pid), live)
        dead = {"host": socket.gethostname(), "driver_pid": 2**22 + 3}
        dead.update(interchanges=[dead_ic.pid], jobs=[])
        atomic_write_json(blocks.record_path(tmp_path, os_pid=2**22 + 3), dead)
        assert blocks.cancel_previous(tmp_path) == [f"killed interchange {dead_ic.pid}"]
        assert dead_ic.wait(timeout=10) == -9 and live_ic.poll() is None
        assert [p.name for p in tmp_path.glob(blocks.RECORD_GLOB)] == [
            blocks.record_path(tmp_path, os_pid=live_driver.pid).name
        ]
        # the same pid started later (pid reuse) is not the recorded driver: cancelled
        live["driver_started"] = started - 100.0
        atomic_write_json(blocks.record_path(tmp_path, os_pid=live_driver.pid), live)
        assert blocks.cancel_previous(tmp_path) == [f"killed interchange {live_ic.pid}"]
    finally:
        for p in (live_driver, live_ic, dead_ic):
            p.kill()
            p.wait()


def test_a_record_from_another_host_is_a_dead_drivers_only_once_stale(tmp_path):
    path = blocks.record_path(tmp_path, host="elsewhere", os_pid=os.getpid())
    record = {"host": "elsewhere", "driver_pid": os.getpid(), "interchanges": [os.getpid()]}
    atomic_write_json(path, {**record, "jobs": []})
    assert blocks.cancel_previous(tmp_path) == [] and path.exists()  # touched just now
    old = time.time() - blocks.STALE_SEC - 1
    os.utime(path, (old, old))
    assert blocks.cancel_previous(tmp_path) == []  # nothing here to kill: another host's pid
    assert not path.exists()


def test_two_sessions_in_one_results_dir_keep_two_records(tmp_path):
    """A second driver's session records itself beside the first one's and leaves it alone."""
    from lambda_hat.parallel import configs, session

    run_dir = tmp_path / "runinfo"
    other = _fake_interchange()  # stands for the other driver (a live Python process)
    try:
        theirs = blocks.record_path(run_dir, os_pid=other.pid)
        record = {"host": socket.gethostname(), "driver_pid": other.pid, "interchanges": []}
        atomic_write_json(theirs, {**record, "jobs": []})
        with session.parsl_session(configs.local_config(1, run_dir=run_dir)):
            assert read_json(theirs) == {**record, "jobs": []}
            mine = read_json(blocks.record_path(run_dir))
            assert mine["driver_pid"] == os.getpid() and len(mine["interchanges"]) == 1
        assert theirs.exists() and not blocks.record_path(run_dir).exists()
    finally:
        other.kill()
        other.wait()


def test_two_drivers_numbering_the_same_parsl_run_dir_at_once_is_retried(tmp_path, monkeypatch):
    """Parsl lists ``runinfo/`` then creates the next number: a driver that loses that race to
    another gets FileExistsError, and its start is retried with the next free number."""
    import parsl.dataflow.dflow as dflow

    from lambda_hat.parallel import configs
    from lambda_hat.study import pipeline

    real, calls = dflow.make_rundir, []

    def racing(path):
        calls.append(path)
        if len(calls) == 1:  # the other driver took "000" between our listing and creating
            os.makedirs(Path(path) / "000")
            raise FileExistsError(str(Path(path) / "000"))
        return real(path)

    monkeypatch.setattr(dflow, "make_rundir", racing)
    with pipeline.parsl_session(configs.local_config(1), tmp_path):
        assert len(calls) == 2 and (tmp_path / "runinfo" / "001").is_dir()
        assert read_json(blocks.record_path(tmp_path / "runinfo"))["driver_pid"] == os.getpid()


def _fake_pool(run_dir: Path) -> subprocess.Popen:
    """A process named like a worker pool of ``run_dir`` with a helper in its own session
    (as Parsl's multiprocessing manager outlives a killed pool)."""
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        "time.sleep(120)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "process_worker_pool", f"--logdir={run_dir}/x"]
    )


def _helpers(pool: subprocess.Popen) -> list[psutil.Process]:
    proc, deadline = psutil.Process(pool.pid), time.monotonic() + 20
    while not proc.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.children()


def test_what_a_dead_pool_left_is_killed_and_other_runs_pools_are_not_touched(tmp_path):
    mine, other = tmp_path / "runinfo" / "000", tmp_path / "elsewhere" / "000"
    pool, foreign = _fake_pool(mine), _fake_pool(other)
    helpers = [*_helpers(pool), *_helpers(foreign)]
    try:
        helper, foreign_helper = helpers
        reaper = blocks.PoolReaper(mine)
        assert reaper.scan() == [] and list(reaper.pools.values()) == [
            {helper.pid: helper.create_time()}
        ]
        pool.kill()
        pool.wait()
        assert helper.is_running()  # Parsl's case: the pool's helper outlives it
        assert reaper.scan() == [helper.pid] and reaper.pools == {}
        assert not helper.is_running() and foreign_helper.is_running()
    finally:
        for p in (pool, foreign):
            p.kill()
            p.wait()
        kill_and_wait(helpers)
