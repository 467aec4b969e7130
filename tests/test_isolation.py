"""run_isolated: every way a trial can end comes back as the runner's metrics shape.

The module-level functions below are the targets; the child imports this file as
``test_isolation`` (its directory is put on the child's PYTHONPATH).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lambda_hat.llc import channel
from lambda_hat.llc.channel import report_progress
from lambda_hat.trial.outcome import FAILURE_KINDS, failed_metrics
from lambda_hat.trial.process import supervise
from lambda_hat.trial.process.oneshot import run_isolated

ENV = {
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
}


# --- targets (run in the child) ------------------------------------------------------------


def ok(x: float, name: str) -> dict:
    return {"status": "ok", "llc_hat": 2.0 * x, "name": name}


def raises(x: float) -> dict:
    raise ValueError(f"bad x={x}")


def diverges(steps: int) -> dict:
    return failed_metrics("diverged", "non-finite loss", step=12, steps_total=steps)


def native_hang(seconds: int) -> dict:
    report_progress(0.25, step=250)
    ctypes.CDLL(None).sleep(seconds)  # blocks in C: no Python signal handler can run
    return {"status": "ok"}


def hang_in_grandchild(pid_file: str) -> dict:
    proc = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(proc.pid))
    proc.wait()
    return {"status": "ok"}


def sigkill_self() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {"status": "ok"}


def segfault() -> dict:
    ctypes.string_at(0)
    return {"status": "ok"}


def memory_error() -> dict:
    raise MemoryError("cannot allocate")


def xla_oom() -> dict:
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB")


def exit_three() -> dict:
    os._exit(3)


def returns_list() -> list:
    return [1, 2]


# --- tests ---------------------------------------------------------------------------------


def _run(target: str, tmp_path: Path, timeout: float = 30.0, **payload) -> dict:
    return run_isolated(f"test_isolation:{target}", payload, timeout, tmp_path / "trial", env=ENV)


def _kind(metrics: dict) -> str:
    assert metrics["status"] == "failed", metrics
    assert metrics["failure"]["kind"] in FAILURE_KINDS
    return metrics["failure"]["kind"]


def test_success_returns_the_function_value(tmp_path):
    assert _run("ok", tmp_path, x=1.5, name="a") == {"status": "ok", "llc_hat": 3.0, "name": "a"}


def test_exception_is_error_with_traceback_file(tmp_path):
    m = _run("raises", tmp_path, x=3)
    assert _kind(m) == "error"
    f = m["failure"]
    assert f["exc_type"] == "ValueError" and "bad x=3" in f["message"] and f["phase"] == "run"
    assert "ValueError: bad x=3" in Path(f["traceback_path"]).read_text()


def test_unimportable_target_is_an_import_error(tmp_path):
    m = run_isolated("no_such_module_zz:f", {}, 30, tmp_path, env=ENV)
    assert _kind(m) == "error"
    assert m["failure"]["exc_type"] == "ModuleNotFoundError" and m["failure"]["phase"] == "import"


def test_divergence_reported_by_the_function_passes_through(tmp_path):
    m = _run("diverges", tmp_path, steps=1000)
    assert _kind(m) == "diverged"
    assert m["failure"]["step"] == 12 and m["failure"]["steps_total"] == 1000


def test_native_hang_is_killed_as_timeout_with_progress(tmp_path):
    t0 = time.monotonic()
    m = _run("native_hang", tmp_path, timeout=6.0, seconds=120)  # slack for a slow import
    assert _kind(m) == "timeout"
    assert m["failure"]["fraction_done"] == 0.25 and m["failure"]["progress"] == {"step": 250}
    assert time.monotonic() - t0 < 20


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    m = _run("hang_in_grandchild", tmp_path, timeout=4.0, pid_file=str(pid_file))
    assert _kind(m) == "timeout" and m["failure"]["fraction_done"] is None
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    for _ in range(100):  # gone, or a zombie waiting for init to reap it
        try:
            if stat.read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"grandchild still running: {stat.read_text()}")


def test_sigkill_is_crashed_and_caller_survives(tmp_path):
    m = _run("sigkill_self", tmp_path)
    assert _kind(m) == "crashed"
    assert m["failure"]["signal"] == signal.SIGKILL and m["failure"]["signal_name"] == "SIGKILL"


def test_sigkill_with_oom_kill_evidence_is_oom(tmp_path, monkeypatch):
    counts = iter([4, 5])
    monkeypatch.setattr(supervise, "oom_kills", lambda: next(counts))
    m = _run("sigkill_self", tmp_path)
    assert _kind(m) == "oom" and "4 -> 5" in m["failure"]["message"]


def test_segfault_is_crashed_with_python_traceback_in_log(tmp_path):
    m = _run("segfault", tmp_path)
    assert _kind(m) == "crashed" and m["failure"]["signal_name"] == "SIGSEGV"
    assert "segfault" in Path(m["failure"]["log_path"]).read_text()


@pytest.mark.parametrize("target", ["memory_error", "xla_oom"])
def test_memory_exhaustion_in_the_child_is_oom(tmp_path, target):
    m = _run(target, tmp_path)
    assert _kind(m) == "oom" and Path(m["failure"]["traceback_path"]).exists()


def test_nonzero_exit_without_result_is_crashed(tmp_path):
    m = _run("exit_three", tmp_path)
    assert _kind(m) == "crashed" and m["failure"]["exit_code"] == 3


def test_non_dict_return_is_error(tmp_path):
    m = _run("returns_list", tmp_path)
    assert _kind(m) == "error" and "expected a metrics dict" in m["failure"]["message"]


def test_bad_arguments_fail_before_starting(tmp_path):
    with pytest.raises(ValueError, match="hard_timeout_sec"):
        run_isolated("test_isolation:ok", {}, 0, tmp_path)
    m = run_isolated("no_colon", {}, 30, tmp_path, env=ENV)
    assert _kind(m) == "error" and "package.module:function" in m["failure"]["message"]


def test_report_progress_is_a_noop_outside_isolation(monkeypatch):
    monkeypatch.delenv(channel.PROGRESS_ENV, raising=False)
    report_progress(0.5)  # must not raise or write anywhere
    assert sys.modules["lambda_hat.llc.channel"] is channel
