"""The session guard of conftest.py: a process a test leaves running fails the run, and dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import SESSION_ENV, session_processes

CONFTEST = Path(__file__).with_name("conftest.py")


def _orphan(cwd: Path, env: dict) -> int:
    """Start ``sleep 60`` through a shell that exits at once: the sleep is reparented to init."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def test_orphans_are_found_by_marker_and_by_working_directory(tmp_path_factory, tmp_path):
    basetemp = tmp_path_factory.getbasetemp()
    by_marker = _orphan(Path("/"), dict(os.environ))  # inherits the session marker
    by_cwd = _orphan(tmp_path, {"PATH": os.environ["PATH"]})  # no marker, cwd in the session
    try:
        assert psutil.Process(by_marker).ppid() != os.getpid()  # not a descendant any more
        found = {p.pid for p in session_processes(basetemp)}
        assert {by_marker, by_cwd} <= found
        assert os.getpid() not in found
    finally:
        for pid in (by_marker, by_cwd):
            psutil.Process(pid).kill()
        psutil.wait_procs([psutil.Process(p) for p in (by_marker, by_cwd)], timeout=5)
    assert not {by_marker, by_cwd} & {p.pid for p in session_processes(basetemp)}


def test_a_session_that_leaves_a_process_fails_and_kills_it(tmp_path):
    conftest = CONFTEST.read_text().replace("LEFTOVER_GRACE_SEC = 10.0", "LEFTOVER_GRACE_SEC = 0.5")
    assert "LEFTOVER_GRACE_SEC = 0.5" in conftest
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_leaky.py").write_text(
        "import subprocess\n\n"
        "def test_leaks(tmp_path):\n"
        "    out = subprocess.run(['sh', '-c', 'sleep 60 >/dev/null 2>&1 & echo $!'],\n"
        "                         capture_output=True, text=True, check=True)\n"
        "    (tmp_path.parent / 'pid').write_text(out.stdout)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(CONFTEST.parents[1]), env.get("PYTHONPATH", "")])
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", "bt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 passed, 1 error" in out, out
    assert "1 process(es) started by the tests were still running" in out, out
    pid = int((tmp_path / "bt" / "pid").read_text())
    assert f"pid {pid} " in out and "sleep 60" in out, out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - t0 < 60
