"""A driver killed with kill -9 leaves its interchange (and batch jobs) behind: the next
session finds them in the run directory's record and stops them (issue 10)."""

from __future__ import annotations

import os
import subprocess
import sys

from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.workflow import blocks


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


def test_a_local_session_records_its_interchange_and_removes_the_record(tmp_path):
    from lambda_hat.workflow import execution

    run_dir = tmp_path / "runinfo"
    with execution.parsl_session(execution.local_config(1, run_dir=run_dir)):
        rec = read_json(run_dir / blocks.RECORD_NAME)
        assert rec["driver_pid"] == os.getpid() and len(rec["interchanges"]) == 1
    assert not (run_dir / blocks.RECORD_NAME).exists()
