"""A trial module whose import takes a set time: a trial process's start-up, for the hard-limit
tests of both supervisors.
"""

from __future__ import annotations

import os
from pathlib import Path

SLOW_MODULE = """
import os, time
time.sleep(float(os.environ["LH_TEST_IMPORT_SEC"]))


def ok():
    return {"status": "ok", "llc_hat": 1.0}


def spin(seconds):
    time.sleep(seconds)
    return {"status": "ok"}
"""


def _slow_start(tmp_path: Path, import_sec: float) -> dict[str, str]:
    (tmp_path / "slow_start.py").write_text(SLOW_MODULE)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "LH_TEST_IMPORT_SEC": str(import_sec)}
