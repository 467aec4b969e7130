"""Time lost to a kill -9 in the middle of an HMC reference (issue 19).

Runs ``lambda-hat reference --config CONFIG`` in a fresh artifacts folder, kills it with SIGKILL
once its log says ``--kill-at`` draws per chain are done, then runs the same command again to
the end. Prints the seconds of the killed run, the rerun's seconds and whether the rerun
continued from a saved state. Time lost = killed run + rerun − the reference's own total when
uninterrupted (``--uninterrupted SEC``, or measured here with ``--measure-uninterrupted``).

    python bench/bench_reference_kill.py --config /tmp/ref.yaml --kill-at 1500
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DRAWS = re.compile(r"(\d+)/(\d+) draws per chain")


def run(config: Path, kill_at: int | None) -> tuple[float, int | None, str]:
    """Seconds the command ran, the draws per chain logged when it was killed (None: it
    finished) and its log."""
    cmd = [sys.executable, "-m", "lambda_hat.cli", "reference", "--config", str(config)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    lines, killed = [], None
    for line in proc.stdout:
        lines.append(line)
        m = DRAWS.search(line)
        if kill_at is not None and m and int(m.group(1)) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = int(m.group(1))
            break
    proc.wait()
    return time.perf_counter() - t0, killed, "".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--kill-at", type=int, default=1500)
    p.add_argument("--measure-uninterrupted", action="store_true")
    args = p.parse_args()
    os.chdir(args.config.parent)
    shutil.rmtree("artifacts", ignore_errors=True)
    if args.measure_uninterrupted:
        sec, _, _ = run(args.config, None)
        print(f"uninterrupted: {sec:.1f} s")
        shutil.rmtree("artifacts", ignore_errors=True)
    killed_sec, at, _ = run(args.config, args.kill_at)
    print(f"killed run: {killed_sec:.1f} s, killed at {at} draws per chain")
    rerun_sec, _, log = run(args.config, None)
    resumed = [ln for ln in log.splitlines() if "resum" in ln or "continu" in ln]
    print(f"rerun: {rerun_sec:.1f} s")
    print("rerun says:", *(resumed or ["(nothing about a saved state: computed from the start)"]))
    print(log.splitlines()[-1])


if __name__ == "__main__":
    main()
