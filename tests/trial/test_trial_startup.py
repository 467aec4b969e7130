"""Issue 10: the hard limit counts from the end of a trial's start-up, and OOM kills are seen on
cgroup v1 and v2.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.slow_start import _slow_start

from lambda_hat.llc import channel
from lambda_hat.trial.process import _cgroup
from lambda_hat.trial.process.oneshot import run_isolated


def test_start_up_does_not_count_against_the_hard_limit(tmp_path):
    env = _slow_start(tmp_path, 2.5)  # imports take longer than the whole hard limit
    spawned = time.time()
    m = run_isolated("slow_start:ok", {}, 1.0, tmp_path / "t", env=env)
    assert m["status"] == "ok", m
    assert channel.startup_seconds(tmp_path / "t", spawned) >= 2.5  # measured


def test_the_hard_limit_still_holds_after_start_up(tmp_path):
    env = _slow_start(tmp_path, 0.0)
    m = run_isolated("slow_start:spin", {"seconds": 30}, 1.0, tmp_path / "t", env=env)
    assert m["status"] == "failed" and m["failure"]["kind"] == "timeout", m
    assert m["failure"]["elapsed_sec"] < 10 and m["failure"]["startup_sec"] is not None


def test_a_start_up_that_never_ends_is_infrastructure(tmp_path):
    env = _slow_start(tmp_path, 30.0)
    m = run_isolated("slow_start:ok", {}, 1.0, tmp_path / "t", env=env, startup_timeout_sec=1.5)
    assert m["status"] == "failed" and m["failure"]["kind"] == "infrastructure", m
    assert m["failure"]["startup_sec"] is None and m["failure"]["elapsed_sec"] < 10


def _cgroup_tree(tmp_path: Path, proc_lines: list[str], files: dict[str, str]) -> tuple[str, str]:
    proc = tmp_path / "cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(proc), str(root)


@pytest.mark.parametrize(
    ("lines", "files", "expected"),
    [
        (["0::/job/1"], {"job/1/memory.events": "low 0\nhigh 0\noom 2\noom_kill 2\n"}, 2),
        (  # cgroup v1: the memory controller's own line (not the first)
            ["12:pids:/job", "4:memory:/job/7", "1:name=systemd:/job"],
            {"memory/job/7/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"},
            3,
        ),
        (  # hybrid: v1 memory controller plus the unified hierarchy
            ["5:cpu,memory:/a", "0::/b"],
            {
                "memory/a/memory.oom_control": "oom_kill_disable 0\noom_kill 1\n",
                "b/memory.events": "oom_kill 4\n",
            },
            5,
        ),
        (["3:cpu:/x"], {}, None),  # no memory cgroup: unknown, never a guess
    ],
)
def test_oom_kill_counter_on_cgroup_v1_v2_and_hybrid(tmp_path, lines, files, expected):
    proc, root = _cgroup_tree(tmp_path, lines, files)
    assert _cgroup.oom_kills(proc, root) == expected
