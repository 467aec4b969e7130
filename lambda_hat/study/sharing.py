"""Several drivers on one study: who owns a RUNNING trial, and whether that owner still lives.

Two ``parsl-optuna`` drivers may run the same config on one storage (a PostgreSQL URL shared by
two login nodes, or one journal file on one host). Each stays correct on its own terms because

- every trial it asks carries its owner tag (user attr :data:`OWNER_ATTR`,
  ``host:os_pid:token``), and while it runs a :data:`HEARTBEAT_ATTR` refreshed every
  :data:`HEARTBEAT_SEC`; a RUNNING trial is *orphaned* (its driver died: told ``interrupted``
  and asked again) only when its owner is gone — on this host, its process is gone; on another
  host, its heartbeat is older than :data:`STALE_SEC`. Trials of a live driver are left alone
  and counted as in flight;
- after every ask the driver ranks its new trial (:func:`slots_before`): the storage numbers
  trials in creation order, so when ``max_trials`` slots are already taken by trials numbered
  before it, the trial is surplus (two drivers asked for the last slot at once) and is told
  ``interrupted`` without running. Counts thus end at exactly ``max_trials`` finished trials.
  So is a trial whose hyperparameters another driver's trial already has; the sampler is then
  reseeded at random (sharing gives up the seeded reproducibility of a lone driver's
  proposals, which the interleaving of two drivers loses anyway).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from lambda_hat.study.tell import counts_as_finished

#: User attr naming the driver that asked a trial.
OWNER_ATTR = "driver"
#: User attr holding the epoch seconds of the owner's last sign of life for a running trial.
HEARTBEAT_ATTR = "heartbeat"
#: How often a driver refreshes the heartbeat of its running trials.
HEARTBEAT_SEC = 30.0
#: A running trial of a driver on another host is orphaned once its heartbeat is this old.
STALE_SEC = 180.0

_LIVE: set[str] = set()  # tags of the drivers running in this process


@dataclass(frozen=True)
class Owner:
    """One driver's identity: host name, OS process id and a random token (a process may run
    several drivers one after another, as the tests do)."""

    host: str
    os_pid: int
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    @property
    def tag(self) -> str:
        return f"{self.host}:{self.os_pid}:{self.token}"

    @classmethod
    def parse(cls, tag: object) -> Owner | None:
        if not isinstance(tag, str) or tag.count(":") < 2:
            return None
        host, os_pid, token = tag.rsplit(":", 2)
        return cls(host, int(os_pid), token) if os_pid.isdigit() else None

    def start(self) -> None:
        """Mark this driver alive (for the other drivers of this process)."""
        _LIVE.add(self.tag)

    def stop(self) -> None:
        _LIVE.discard(self.tag)


def _process_alive(os_pid: int) -> bool:
    try:
        os.kill(os_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(frozen: FrozenTrial, now: float | None = None) -> bool:
    """Whether the driver that asked this RUNNING trial is still alive (see the module doc).
    A trial without an owner tag was asked by a driver that predates tags: not alive."""
    owner = Owner.parse(frozen.user_attrs.get(OWNER_ATTR))
    if owner is None:
        return False
    if owner.host == socket.gethostname():
        if owner.os_pid == os.getpid():
            return owner.tag in _LIVE
        if not _process_alive(owner.os_pid):
            return False
    start = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
    beat = max(float(frozen.user_attrs.get(HEARTBEAT_ATTR) or 0.0), start)
    return (time.time() if now is None else now) - beat < STALE_SEC


def orphaned(frozen: FrozenTrial, now: float | None = None) -> bool:
    """Whether a RUNNING trial's driver is dead (:func:`owner_alive`). A trial without an owner
    tag is orphaned once it has a run directory (a driver that predates tags asked it) or is
    older than :data:`STALE_SEC`: until then it may be one another driver is asking right now
    (Optuna creates the trial, then samples; the tag follows)."""
    if OWNER_ATTR in frozen.user_attrs:
        return not owner_alive(frozen, now)
    if "run_dir" in frozen.user_attrs or frozen.datetime_start is None:
        return True
    return (time.time() if now is None else now) - frozen.datetime_start.timestamp() > STALE_SEC


def heartbeat(trials: Iterable[Trial]) -> None:
    """Refresh the heartbeat of these running trials (one storage write each)."""
    now = time.time()
    for trial in trials:
        try:
            trial.set_user_attr(HEARTBEAT_ATTR, now)
        except UpdateFinishedTrialError:
            pass  # taken for orphaned by another driver: its completion is logged and dropped


def owned_by(frozen: FrozenTrial, owner: Owner) -> bool:
    return frozen.user_attrs.get(OWNER_ATTR) == owner.tag


def why_not_run(trials: list[FrozenTrial], trial: Trial, owner: Owner, max_trials: int) -> str:
    """Why a just-asked trial must not run ('' when it may): ``max_trials`` slots are taken
    by trials numbered before it (:func:`slots_before`), or another driver runs or ran the same
    hyperparameters (two drivers started together propose the same seeded start-up points)."""
    if slots_before(trials, trial.number) >= max_trials:
        return "another driver took this study's last slot first; not run"
    for t in trials:
        if t.number == trial.number or owned_by(t, owner) or t.params != trial.params:
            continue
        if t.state == TrialState.RUNNING or counts_as_finished(
            t.state, t.user_attrs.get("failure_kind")
        ):
            return f"another driver proposed the same hyperparameters (trial {t.number}); not run"
    return ""


def slots_before(trials: Iterable[FrozenTrial], number: int) -> int:
    """Slots of ``max_trials`` taken by trials numbered before ``number``: finished trials that
    count (:func:`lambda_hat.study.tell.counts_as_finished`), and running or waiting ones (they will)."""
    taken = 0
    for t in trials:
        if t.number >= number:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            taken += 1
        elif counts_as_finished(t.state, t.user_attrs.get("failure_kind")):
            taken += 1
    return taken
