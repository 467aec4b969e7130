"""A running reference's checkpoint and progress record: saved after every chunk, continued
on the rerun.

Every warm-up and sampling chunk of :func:`lambda_hat.reference.nuts.compute_reference` ends
with :meth:`Checkpoint.save`, which writes, each atomically:

- ``ref_state.npz`` (:data:`lambda_hat.layout.REF_STATE`): the chains' state, every draw so far
  and the meta a continuation needs (the reference settings it was made with, the chunk
  length, the sessions and seconds spent);
- ``ref_progress.json`` (:data:`lambda_hat.layout.REF_PROGRESS`): how far it is and its ETA,
  what a driver waiting on a reference computed elsewhere prints (:mod:`lambda_hat.reference.stage`).

Ctrl-C, kill -9 or a lost node thus lose at most the chunk in progress: :func:`saved_run` gives
the rerun the saved run, and the continuation draws what an uninterrupted run draws (sampling
chunk ``i``'s keys depend only on ``i``; the chunked warm-up gives the same bits for any
split), so the continued reference is the same reference. A finished reference removes both
files (:func:`clear`); one stopped by its budget keeps the state (ref.json says so).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.llc import engine
from lambda_hat.llc.engine import Timer
from lambda_hat.log import fmt_seconds
from lambda_hat.problem.build import Problem
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.reference.store import reference_settings
from lambda_hat.samplers import hmc

__all__ = [
    "PROGRESS_EVERY_SEC",
    "SECONDS",
    "Checkpoint",
    "clear",
    "progress_line",
    "read_progress",
    "resumable",
    "saved_run",
]

log = logging.getLogger("lambda_hat.reference")

#: The phases whose seconds a reference records (``ref.json`` ``seconds``).
SECONDS = ("compile", "warmup", "sampling", "total")

#: A running reference's progress line is shown at most this often (and at each phase change).
PROGRESS_EVERY_SEC = 10.0


class Checkpoint:
    """Saves ``run`` (a :class:`lambda_hat.samplers.hmc.NUTSRun`) after every chunk of one
    session and logs a progress line (INFO at most every :data:`PROGRESS_EVERY_SEC` and when
    the phase changes, DEBUG otherwise).

    ``run.seconds`` holds what earlier sessions spent; the saved seconds add this session's so
    far (``timer`` counts its compile and run time), so a budget covers the reference's whole
    life, interrupted sessions included.
    """

    def __init__(self, home: Path, pid: str, cfg: ReferenceConfig, run: hmc.NUTSRun, timer: Timer):
        self.home, self.pid, self.cfg, self.timer = Path(home), pid, cfg, timer
        self.t0, self.before = engine.clock(), dict(run.seconds)
        self.phase = ""
        self.start, self.rate_from = self._mark(run), None
        self.resumed = None  # where an earlier session's saved run left off
        if run.sessions:
            self.resumed = {"warmup_done": run.warmup_done, "draws_done": run.draws_done}
        self._shown_phase, self._shown_at = "", -float("inf")

    def _mark(self, run: hmc.NUTSRun) -> tuple[float, float, float, int]:
        done = run.warmup_done if self.phase == "warmup" else run.draws_done
        return engine.clock(), self.timer.compile, self.timer.run, done

    def begin(self, phase: str, run: hmc.NUTSRun) -> None:
        """Start ``phase`` ("warmup", "sampling"; "" between them): its seconds and its rate
        (for the ETA: measured from the end of its first chunk, the first warm-up steps and
        any compilation being no guide to the rest) count from here."""
        self.phase = phase
        self.start, self.rate_from = self._mark(run), None

    def seconds(self, run: hmc.NUTSRun) -> dict:
        """Seconds spent on the reference so far, earlier sessions included, by phase."""
        t0, c0, r0, _ = self.start
        out = dict(run.seconds)
        out["compile"] = self.before["compile"] + self.timer.compile
        out["total"] = self.before["total"] + engine.clock() - self.t0
        if self.phase == "warmup":
            out["warmup"] += engine.clock() - t0 - (self.timer.compile - c0)
        elif self.phase == "sampling":
            out["sampling"] += self.timer.run - r0
        return out

    def save(self, run: hmc.NUTSRun, acceptance: float | None = None) -> None:
        """Write the state and the progress record; log the progress line."""
        seconds = self.seconds(run)
        self.save_state(run, seconds, run.sessions + 1)  # this session counts once it saved
        record = {
            "pid": self.pid,
            "gamma": self.cfg.gamma,
            "phase": "warmup" if run.chains is None else "sampling",
            "warmup_done": run.warmup_done,
            "warmup": self.cfg.warmup,
            "draws_done": run.draws_done,
            "draws": self.cfg.draws,
            "chains": self.cfg.chains,
            "acceptance": acceptance,
            "seconds": seconds["total"],
            "eta_sec": self._eta(run),
            "resumed_from": self.resumed,
            "updated_at": time.time(),
        }
        atomic_write_json(self.home / layout.REF_PROGRESS, record)
        self._log(record)

    def save_state(self, run: hmc.NUTSRun, seconds: dict, sessions: int) -> None:
        """Write ``ref_state.npz``: ``run`` with what continuing it needs."""
        meta = {
            "pid": self.pid,
            "settings": reference_settings(self.cfg),
            "kind": "warm" if run.warm is not None else "chains",
            "chunk": run.chunk,
            "sessions": sessions,
            "seconds": seconds,
        }
        hmc.save_run(self.home / layout.REF_STATE, run, meta)

    def _eta(self, run: hmc.NUTSRun) -> float | None:
        """Seconds left in the current phase at this session's rate after the phase's first
        chunk; None before there is one."""
        if self.rate_from is None:
            self.rate_from = self._mark(run)
            return None
        t0, c0, _, done0 = self.rate_from
        if self.phase == "warmup":
            done, left = run.warmup_done, self.cfg.warmup - run.warmup_done
        else:
            done, left = run.draws_done, self.cfg.draws - run.draws_done
        spent = engine.clock() - t0 - (self.timer.compile - c0)
        return spent / (done - done0) * left if done > done0 and spent > 0 else None

    def _log(self, record: dict) -> None:
        now = engine.clock()
        show = record["phase"] != self._shown_phase or now - self._shown_at >= PROGRESS_EVERY_SEC
        show = show and self.phase != ""  # warm-up done: the reference logs it itself
        if show:
            self._shown_phase, self._shown_at = record["phase"], now
        log.log(logging.INFO if show else logging.DEBUG, "%s", progress_line(record))


def progress_line(record: dict) -> str:
    """One line of a progress record: where the reference is, the time spent, the ETA."""
    head = f"reference {record.get('pid')} (γ = {record.get('gamma', 0):g})"
    eta = record.get("eta_sec")
    eta = "known after the next chunk" if eta is None else fmt_seconds(eta)
    if record.get("phase") == "warmup":
        where = f"warm-up {record.get('warmup_done')}/{record.get('warmup')} steps"
        eta = f"warm-up ETA {eta}"
    else:
        done, total = record.get("draws_done", 0), max(record.get("draws", 1), 1)
        where = f"warm-up done; {done}/{total} draws per chain ({100 * done / total:.0f}%)"
        if record.get("acceptance") is not None:
            where += f", acceptance {record['acceptance']:.2f}"
        eta = f"ETA {eta}"
    back = record.get("resumed_from")
    if back:
        at = back["draws_done"] or back["warmup_done"]
        where += f" (continued from {'draw' if back['draws_done'] else 'warm-up step'} {at})"
    return f"{head}: {where}, {fmt_seconds(record.get('seconds', 0.0))} spent, {eta}"


def read_progress(home: Path) -> dict | None:
    """The last progress record of the reference living in ``home`` (None: none)."""
    return read_json(Path(home) / layout.REF_PROGRESS)


def saved_run(home: Path, post, cfg: ReferenceConfig, pid: str) -> hmc.NUTSRun:
    """The run a checkpoint saved in ``home``, ready to continue (sessions, seconds, chunk
    from its meta). OSError/ValueError/KeyError when there is none, it is unreadable, it
    belongs to other settings or another problem, or it predates the meta (then the caller
    reads those from ref.json)."""
    path = Path(home) / layout.REF_STATE
    meta = hmc.read_meta(path)
    if meta is None:
        raise KeyError("the state file has no meta")
    if meta["pid"] != pid or meta["settings"] != reference_settings(cfg):
        raise ValueError("the state file belongs to other reference settings")
    run = hmc.load_run(path, post, cfg.target_accept, cfg.chains, meta["kind"])
    run.chunk, run.sessions = int(meta["chunk"]), int(meta["sessions"])
    run.seconds = {k: float(meta["seconds"][k]) for k in SECONDS}
    return run


def resumable(problem: Problem, cfg: ReferenceConfig, ref: dict | None) -> hmc.NUTSRun | None:
    """The saved run to continue in ``problem``'s folder, or None (logged when a state was
    there). ``ref`` is a stored reference its budget stopped; None means no ref.json at these
    settings, so the run to continue is an interrupted one, if it saved a state."""
    if ref is None and not (problem.path / layout.REF_STATE).exists():
        return None
    was = "interrupted"
    if ref is not None:
        was = (
            f"stopped early ({ref.get('stopped_in')}) under budget "
            f"{fmt_seconds(ref['budget_sec'])}; budget now "
            f"{'none' if cfg.budget_sec is None else fmt_seconds(cfg.budget_sec)}"
        )
    try:
        run = _load_state(problem, cfg, ref)
    except (OSError, ValueError, KeyError) as exc:
        log.warning(
            "reference %s: %s; saved state unusable (%s): recomputing", problem.pid, was, exc
        )
        return None
    log.info(
        "reference %s: %s: continuing it from its saved state (warm-up %d/%d, %d/%d draws per "
        "chain, %s spent so far)",
        *(problem.pid, was, run.warmup_done, cfg.warmup, run.draws_done, cfg.draws),
        fmt_seconds(run.seconds["total"]),
    )
    return run


def _load_state(problem: Problem, cfg: ReferenceConfig, ref: dict | None) -> hmc.NUTSRun:
    """The run a stopped or interrupted reference saved (ValueError/OSError/KeyError when it
    is unusable); a state saved before states carried their meta takes ref.json's numbers."""
    post = problem.posterior(cfg.beta, cfg.gamma)
    try:
        return saved_run(problem.path, post, cfg, problem.pid)
    except KeyError:
        if ref is None:
            raise
    kind = "warm" if ref["stopped_in"] == "warmup" else "chains"
    run = hmc.load_run(problem.path / layout.REF_STATE, post, cfg.target_accept, cfg.chains, kind)
    if (run.warmup_done, run.draws_done) != (ref["warmup_done"], ref["draws_per_chain"]):
        raise ValueError("the state file does not belong to ref.json")
    run.chunk, run.sessions = ref["chunk"], ref["sessions"]
    run.seconds = {k: ref["seconds"][k] for k in SECONDS}
    return run


def clear(home: Path, state: bool = True) -> None:
    """Remove the progress record (and, with ``state``, the saved state) of ``home``."""
    names = (layout.REF_PROGRESS, layout.REF_STATE) if state else (layout.REF_PROGRESS,)
    for name in names:
        (Path(home) / name).unlink(missing_ok=True)
