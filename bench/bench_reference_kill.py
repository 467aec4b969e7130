"""Time lost to a kill -9 in the middle of an HMC reference (issue 19).

Runs ``lambda-hat reference --config CONFIG`` in a fresh artifacts folder, kills it with SIGKILL
``--kill-after`` seconds after its reference started (its "NUTS ..." log line), then runs the
same command again to the end. Prints the reference seconds the killed run had spent, what the
rerun continued from (the seconds its saved state holds: 0 when it started over) and the
difference, the time lost; and the rerun's wall time.

    python bench/bench_reference_kill.py --config /tmp/ref.yaml --kill-after 45
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SPENT = re.compile(r"(?:(\d+)m)?([\d.]+)s spent so far")


def run(config: Path, kill_after: float | None) -> tuple[float, float | None, str]:
    """Seconds the command ran, the seconds its reference had run when it was killed (None:
    it finished) and its log."""
    cmd = [sys.executable, "-m", "lambda_hat.cli", "reference", "--config", str(config)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: list[str] = []
    started: list[float] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if " NUTS " in line and not started:
                started.append(time.perf_counter())

    reader = threading.Thread(target=read)
    reader.start()
    killed = None
    while kill_after is not None and proc.poll() is None:
        if started and time.perf_counter() - started[0] >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = time.perf_counter() - started[0]
            break
        time.sleep(0.05)
    proc.wait()
    reader.join()
    return time.perf_counter() - t0, killed, "".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--kill-after", type=float, default=45.0)
    args = p.parse_args()
    os.chdir(args.config.parent)
    shutil.rmtree("artifacts", ignore_errors=True)
    wall, ran, _ = run(args.config, args.kill_after)
    assert ran is not None, "the reference finished before the kill"
    rerun_wall, _, log = run(args.config, None)
    spent = SPENT.search(log)
    kept = 60 * int(spent.group(1) or 0) + float(spent.group(2)) if spent else 0.0
    print(f"killed run: {wall:.1f} s wall, its reference killed after {ran:.1f} s")
    print(f"rerun: {rerun_wall:.1f} s wall, continued from a state holding {kept:.1f} s of work")
    print(f"time lost to the kill: {ran - kept:.1f} s")
    print(*[ln for ln in log.splitlines() if "continuing" in ln or "NUTS" in ln], sep="\n")
    print(log.splitlines()[-1])


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
