"""Supervised trials: every way a trial can end comes back as the runner's metrics shape, the same
under both supervisors — a fresh child per trial (``run_isolated``) and a warm child that runs
trial after trial (``run_warm``; its own properties are in tests/trial/test_warm.py).

The warm supervisor keeps its child between the tests of this module (this thread's warm child),
so most warm cases run in a child that already ran trials, as in a worker.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.procs import _gone
from trial_targets import ENV

from lambda_hat.llc import channel
from lambda_hat.llc.channel import report_progress, request_stop
from lambda_hat.trial.outcome import FAILURE_KINDS
from lambda_hat.trial.process import supervise, warm
from lambda_hat.trial.process.oneshot import run_isolated
from lambda_hat.trial.process.warm import run_warm

SUPERVISORS = {"oneshot": run_isolated, "warm": run_warm}


@pytest.fixture(scope="module", autouse=True)
def _no_warm_child_left():
    yield
    warm.shutdown()


@pytest.fixture(params=list(SUPERVISORS))
def supervisor(request) -> str:
    return request.param


def _run(supervisor: str, target: str, tmp_path: Path, timeout: float = 30.0, **payload) -> dict:
    run = SUPERVISORS[supervisor]
    return run(f"trial_targets:{target}", payload, timeout, tmp_path / "trial", env=ENV)


def _kind(metrics: dict) -> str:
    assert metrics["status"] == "failed", metrics
    assert metrics["failure"]["kind"] in FAILURE_KINDS
    return metrics["failure"]["kind"]


def test_success_returns_the_function_value(supervisor, tmp_path):
    m = _run(supervisor, "ok", tmp_path, x=1.5, name="a")
    m.pop("warm", None)
    assert m == {"status": "ok", "llc_hat": 3.0, "name": "a"}


def test_exception_is_error_with_traceback_file(supervisor, tmp_path):
    m = _run(supervisor, "raises", tmp_path, x=3)
    assert _kind(m) == "error"
    f = m["failure"]
    assert f["exc_type"] == "ValueError" and "bad x=3" in f["message"] and f["phase"] == "run"
    assert "ValueError: bad x=3" in Path(f["traceback_path"]).read_text()


def test_unimportable_target_is_an_import_error(supervisor, tmp_path):
    m = SUPERVISORS[supervisor]("no_such_module_zz:f", {}, 30, tmp_path, env=ENV)
    assert _kind(m) == "error"
    assert m["failure"]["exc_type"] == "ModuleNotFoundError" and m["failure"]["phase"] == "import"


def test_divergence_reported_by_the_function_passes_through(supervisor, tmp_path):
    m = _run(supervisor, "diverges", tmp_path, steps=1000)
    assert _kind(m) == "diverged"
    assert m["failure"]["step"] == 12 and m["failure"]["steps_total"] == 1000


def test_native_hang_is_killed_as_timeout_with_progress(supervisor, tmp_path):
    t0 = time.monotonic()
    m = _run(supervisor, "native_hang", tmp_path, timeout=6.0, seconds=120)  # slow-import slack
    assert _kind(m) == "timeout"
    assert m["failure"]["fraction_done"] == 0.25 and m["failure"]["progress"] == {"step": 250}
    assert time.monotonic() - t0 < 20


def test_timeout_kills_the_whole_process_group(supervisor, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    m = _run(supervisor, "hang_in_grandchild", tmp_path, timeout=4.0, pid_file=str(pid_file))
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


@pytest.mark.parametrize(
    ("target", "timeout", "payload", "kind"),
    [
        ("native_hang", 3.0, {"seconds": 120}, "timeout"),
        ("segfault", 30.0, {}, "crashed"),
        ("sigkill_self", 30.0, {}, "crashed"),
        ("exit_three", 30.0, {}, "crashed"),
    ],
)
def test_a_trial_that_kills_its_child_is_contained_and_the_next_runs(
    supervisor, tmp_path, target, timeout, payload, kind
):
    """The caller survives; under ``run_warm`` the killed child is replaced by a fresh one."""
    before = _run(supervisor, "ok", tmp_path, x=1.0, name="before")
    m = _run(supervisor, target, tmp_path, timeout=timeout, **payload)
    assert _kind(m) == kind
    after = _run(supervisor, "ok", tmp_path, x=2.0, name="after")
    assert after["llc_hat"] == 4.0
    if supervisor == "warm":
        assert m["warm"]["recycled"] == "killed"
        assert m["warm"]["pid"] == before["warm"]["pid"] and _gone(m["warm"]["pid"])
        assert after["warm"]["trial"] == 1 and after["warm"]["pid"] != before["warm"]["pid"]


def test_sigkill_is_crashed_and_caller_survives(supervisor, tmp_path):
    m = _run(supervisor, "sigkill_self", tmp_path)
    assert _kind(m) == "crashed"
    assert m["failure"]["signal"] == signal.SIGKILL and m["failure"]["signal_name"] == "SIGKILL"


def test_sigkill_with_oom_kill_evidence_is_oom(supervisor, tmp_path, monkeypatch):
    counts = iter([4, 5])  # before the trial (the supervisor), after its death
    monkeypatch.setattr(supervise, "oom_kills", lambda: next(counts))
    m = _run(supervisor, "sigkill_self", tmp_path)
    assert _kind(m) == "oom" and "4 -> 5" in m["failure"]["message"]


def test_segfault_is_crashed_with_python_traceback_in_log(supervisor, tmp_path):
    m = _run(supervisor, "segfault", tmp_path)
    assert _kind(m) == "crashed" and m["failure"]["signal_name"] == "SIGSEGV"
    assert "segfault" in Path(m["failure"]["log_path"]).read_text()  # faulthandler, this log


@pytest.mark.parametrize("target", ["memory_error", "xla_oom"])
def test_memory_exhaustion_in_the_child_is_oom(supervisor, tmp_path, target):
    m = _run(supervisor, target, tmp_path)
    assert _kind(m) == "oom" and Path(m["failure"]["traceback_path"]).exists()
    if supervisor == "warm":  # the child is recycled
        assert m["warm"]["recycled"] == "oom" and _gone(m["warm"]["pid"])


def test_nonzero_exit_without_result_is_crashed(supervisor, tmp_path):
    m = _run(supervisor, "exit_three", tmp_path)
    assert _kind(m) == "crashed" and m["failure"]["exit_code"] == 3


def test_non_dict_return_is_error(supervisor, tmp_path):
    m = _run(supervisor, "returns_list", tmp_path)
    assert _kind(m) == "error" and "expected a metrics dict" in m["failure"]["message"]
    if supervisor == "warm":
        assert m["warm"]["recycled"] is None  # an exception leaves the child usable


def test_bad_arguments_fail_before_starting(supervisor, tmp_path):
    run = SUPERVISORS[supervisor]
    with pytest.raises(ValueError, match="hard_timeout_sec"):
        run("trial_targets:ok", {}, 0, tmp_path)
    m = run("no_colon", {}, 30, tmp_path, env=ENV)
    assert _kind(m) == "error" and "package.module:function" in m["failure"]["message"]


def test_a_stop_request_past_its_grace_is_pruned_and_kills_the_child(supervisor, tmp_path):
    workdir = tmp_path / "trial"

    def stop_once_running():  # the trial reported progress: it is past its start-up
        while channel.read_progress(workdir) is None:
            time.sleep(0.05)
        request_stop(workdir)

    threading.Thread(target=stop_once_running, daemon=True).start()
    t0 = time.monotonic()
    m = SUPERVISORS[supervisor](
        "trial_targets:native_hang", {"seconds": 120}, 60, workdir, env=ENV,
        stop_grace_sec=1.0,
    )  # fmt: skip
    assert _kind(m) == "pruned" and m["failure"]["fraction_done"] == 0.25
    assert time.monotonic() - t0 < 10
    if supervisor == "warm":
        assert _gone(m["warm"]["pid"])


def test_report_progress_is_a_noop_outside_isolation(monkeypatch):
    monkeypatch.delenv(channel.PROGRESS_ENV, raising=False)
    report_progress(0.5)  # must not raise or write anywhere
    assert sys.modules["lambda_hat.llc.channel"] is channel
