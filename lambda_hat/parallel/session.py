"""A Parsl session (load a config, clean up after) and the apps submitted within one.

An app wraps a module-level function handed in by the stage that owns it (the trial's
:func:`lambda_hat.trial.app.execute_trial`, the reference's
:func:`lambda_hat.reference.app.execute_reference`): Parsl ships such a function by reference,
so a worker imports its module like any other. Workers receive a plain dict and return a plain
dict (see :mod:`lambda_hat.study.driver` for the contract).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

from lambda_hat import layout
from lambda_hat.parallel import blocks

__all__ = ["app", "ensure_worker_path", "parsl_session"]


def app(fn: Callable[[dict], dict]) -> Callable[[dict], Future]:
    """``submit(payload) -> AppFuture`` running ``fn`` on the loaded executors."""
    from parsl import python_app

    return python_app(fn)


def ensure_worker_path() -> None:
    """Put this interpreter's bin directory on PATH: Parsl launches ``process_worker_pool.py``
    by name, and users should not have to activate the virtual environment for that."""
    bindir = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *parts])


@contextlib.contextmanager
def parsl_session(config, run_dir: str | Path | None = None) -> Iterator[None]:
    """Load ``config`` for the duration of the block, then shut the executors down.

    ``run_dir`` replaces Parsl's default ``runinfo`` (relative to the working directory) with a
    directory under the results, so a run keeps its logs with its studies. SIGTERM and SIGHUP
    (a scheduler's or a closed terminal's stop) raise ``KeyboardInterrupt`` inside the block
    like Ctrl-C, so the clean-up below cancels the blocks and stops the interchange instead of
    leaving them (and their batch jobs) running; after a ``kill -9`` the next session cancels
    what the dead one left (:mod:`lambda_hat.parallel.blocks`).
    """
    import parsl

    ensure_worker_path()
    if run_dir is not None and config.run_dir == layout.RUNINFO:
        config.run_dir = str(run_dir)
    blocks.cancel_previous(config.run_dir)  # a driver killed with kill -9 left them
    saved = _interrupt_on(signal.SIGTERM, signal.SIGHUP)
    dfk = parsl.load(config)
    recorder = blocks.Recorder(config.run_dir, dfk).start()
    try:
        yield
    finally:
        try:
            dfk.cleanup()
            parsl.clear()
        finally:
            recorder.close()
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _interrupt_on(*signals: signal.Signals) -> dict:
    """Make ``signals`` raise KeyboardInterrupt (main thread only); the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {}
    for sig in signals:
        saved[sig] = signal.signal(sig, signal.default_int_handler)
    return saved
