"""Study storage, pruners, crash recovery and pickle export (samplers: :mod:`.optuna_samplers`).

One Optuna study per (problem, method), named ``<pid>:<method>``, all in one storage: by
default a journal file ``<results>/studies/journal.log`` (append-only, every write is one
locked line, so a ``kill -9`` at any instant leaves a readable log; safe for several processes
on one host), or any storage URL the user gives (``sqlite:///…``, ``postgresql://…``; use
PostgreSQL when several hosts share one study, file locks over NFS are not reliable).

Study pickles are exported to ``<results>/studies/optuna_llc/<pid>:<method>.pkl``. They hold
an in-memory copy of the study, so loading one needs neither the journal nor this package.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import pickle
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.schema import ConfigError
from lambda_hat.study.optuna_samplers import make_sampler

log = logging.getLogger("lambda_hat.workflow")


def study_name(pid: str, method: str) -> str:
    """The study's name in the storage (also the pickle's file stem)."""
    return f"{pid}:{method}"


def studies_dir(results: str | Path) -> Path:
    return layout.studies_dir(results)


def pickle_path(results: str | Path, pid: str, method: str) -> Path:
    return layout.pickle_path(results, study_name(pid, method))


def make_pruner(cfg: OptunaConfig, steps: int) -> optuna.pruners.BasePruner:
    """The configured pruner, for intermediate values reported at steps ``1..steps``.

    ``pruner_warmup`` (a fraction of the work) becomes the warm-up steps of the median and
    percentile pruners and Hyperband's minimum resource: an estimate from the first few chunks
    is mostly burn-in and must not decide anything.
    """
    warmup = math.ceil(cfg.pruner_warmup * steps - 1e-9)
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=warmup
        )
    if cfg.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            cfg.pruner_percentile,
            n_startup_trials=cfg.pruner_startup_trials,
            n_warmup_steps=warmup,
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, warmup), max_resource=steps, reduction_factor=3
        )
    raise ValueError(f"unknown pruner {cfg.pruner!r}")


def prunes(cfg: OptunaConfig) -> bool:
    """Whether studies prune: a pruner is set and there is one objective (Optuna cannot prune
    multi-objective studies)."""
    return cfg.pruner != "none" and len(cfg.objectives) == 1


class GroupCommitJournalBackend(JournalFileBackend):
    """Optuna's journal file format, written with group commit and read back without re-reading.

    Durability is unchanged from Optuna's backend where it matters for a crash of the driver:
    every operation is appended (one ``write`` on an ``O_APPEND`` descriptor, under an exclusive
    ``flock``) before the call returns, so a driver killed at any instant (even ``kill -9``)
    loses nothing and other processes can read it at once. What is cheaper:

    - the ``fsync`` (which protects against a power loss or kernel crash, not a process death)
      is deferred to :meth:`sync`, which the driver calls once per loop iteration, before it
      waits for trials, and which runs in the background meanwhile. Optuna's own
      backend fsyncs every one of the ~12 operations of a trial: on network or VM disks that
      dominated the per-trial overhead (``bench/bench_orchestration.py``). After a power loss
      the journal is a prefix of what was written, which resumes like a killed driver;
    - the lock is an ``flock`` on a descriptor held open, instead of Optuna's symlink lock
      (a symlink + rename + unlink of metadata per operation, ~0.3 ms each on this VM). It
      excludes every writer using this class on one host; on several hosts use a database
      storage (``optuna.storage``), as the docs say anyway;
    - Optuna's ``JournalStorage`` reads the log back after every write. When nothing but our
      own appends is in the file (its size is where our last append ended), the lines just
      written are parsed from memory instead of opening and reading the file; any other
      writer's lines make it fall back to Optuna's reader.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=None)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = False
        self._known = 0  # log lines whose start offsets are in self._log_number_offset
        self._tail: dict[int, bytes] = {}  # our own lines not yet read back, by log number
        self._syncer: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None

    def append_logs(self, logs: list[dict]) -> None:
        lines = [(json.dumps(log, separators=(",", ":")) + "\n").encode("utf-8") for log in logs]
        data = b"".join(lines)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            os.write(self._fd, data)
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._dirty = True
        if end - len(data) != self._log_number_offset.get(self._known):
            return  # another writer appended since we last looked: read_logs parses the file
        offset = end - len(data)
        for line in lines:
            self._tail[self._known] = line
            offset += len(line)
            self._known += 1
            self._log_number_offset[self._known] = offset

    def read_logs(self, log_number_from: int):
        known_end = self._log_number_offset.get(self._known)
        if os.fstat(self._fd).st_size == known_end and all(
            n in self._tail for n in range(log_number_from, self._known)
        ):
            for n in range(log_number_from, self._known):
                yield json.loads(self._tail.pop(n))
            return
        self._tail.clear()
        yield from super().read_logs(log_number_from)
        self._known = max(self._log_number_offset)

    def sync(self, wait: bool = True) -> None:
        """Make everything appended so far durable on disk.

        ``wait=False`` starts the ``fsync`` on a background thread and returns at once (the
        driver goes on waiting for trials while the disk writes; a power loss then loses at
        most the appends of the last moments, which resume like a killed driver). While one
        background ``fsync`` runs, later appends are left for the next call.
        """
        if self._inflight is not None and not self._inflight.done():
            if not wait:
                return
            self._inflight.result()
        if not self._dirty:
            return
        self._dirty = False
        if wait:
            os.fsync(self._fd)
            return
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="journal-fsync")
        self._inflight = self._syncer.submit(os.fsync, self._fd)

    def close(self) -> None:
        self.sync()
        if self._syncer is not None:
            self._syncer.shutdown()
        os.close(self._fd)


class Journal(JournalStorage):
    """The default storage: a :class:`GroupCommitJournalBackend` journal, with :meth:`sync`."""

    def __init__(self, path: str | Path):
        self.backend = GroupCommitJournalBackend(str(path))
        super().__init__(self.backend)

    def sync(self, wait: bool = True) -> None:
        self.backend.sync(wait)


#: URL schemes given without a driver, and the driver-qualified scheme SQLAlchemy is given.
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def storage_url(url: str) -> str:
    """``url`` with a database driver SQLAlchemy can load: plain ``postgresql://`` (or
    ``postgres://``) means psycopg 3 (``postgresql+psycopg://``), the driver this package
    depends on; SQLAlchemy's own default for the plain scheme is psycopg2, often missing."""
    scheme, sep, rest = url.partition("://")
    return f"{_DRIVERS[scheme]}://{rest}" if sep and scheme in _DRIVERS else url


def journal_path(results: str | Path) -> Path:
    """The default storage's file: ``<results>/studies/journal.log``."""
    return layout.journal_path(results)


def open_storage(cfg: OptunaConfig, results: str | Path) -> BaseStorage:
    """The configured storage (``optuna.storage``; ``--storage``): a database URL, or a
    journal file path, or by default ``<results>/studies/journal.log`` (created)."""
    return open_storage_at(cfg.storage or journal_path(results))


def open_storage_at(where: str | Path) -> BaseStorage:
    """A storage from a URL (``postgresql://``, ``sqlite:///``, ...) or a journal file path.

    Creating the database schema is retried: two drivers started together on an empty database
    both try to create the tables, and the loser of that race sees an integrity error.
    """
    text = str(where)
    if "://" not in text:
        path = Path(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Journal(path)
    url, attempt = storage_url(text), 0
    while True:
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            attempt += 1
            if attempt == 3:
                raise
            log.debug("storage schema race (%s); retrying", type(exc).__name__)
            time.sleep(0.5 * attempt)


def describe_storage(where: str | Path) -> str:
    """The storage for a log line, without a password in a URL."""
    text = str(where)
    if "://" not in text:
        return text
    return sqlalchemy.engine.make_url(storage_url(text)).render_as_string(hide_password=True)


def sync_storage(storage: BaseStorage, wait: bool = True) -> None:
    """fsync the default journal (a no-op for storages that commit by themselves);
    ``wait=False``: in the background (:meth:`GroupCommitJournalBackend.sync`)."""
    if isinstance(storage, Journal):
        storage.sync(wait)


def directions(cfg: OptunaConfig) -> list[str]:
    return ["minimize"] * len(cfg.objectives)


def open_study(
    storage: BaseStorage,
    pid: str,
    method: str,
    cfg: OptunaConfig,
    seed: int,
    pruning_steps: int = 10,
) -> optuna.Study:
    """Create the study or load it (resume); refuse a stored study whose objectives differ.

    The sampler is seeded with ``seed`` plus the number of trials already stored, so that a
    resumed study does not replay the random start-up proposals of the run before it. The
    pruner (not stored by Optuna) is the configured one when :func:`prunes`.
    """
    name = study_name(pid, method)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions(cfg),
        sampler=make_sampler(cfg, seed),
        pruner=make_pruner(cfg, pruning_steps) if prunes(cfg) else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    stored = len(study.get_trials(deepcopy=False))
    if stored:
        study.sampler = make_sampler(cfg, seed + stored)
    if len(study.directions) != len(cfg.objectives):
        raise ConfigError(
            "optuna.objectives",
            f"study {name!r} in the storage was created with {len(study.directions)} "
            f"objective(s), the config asks for {cfg.objectives}.",
            "keep the objectives of the stored run, or point paths.results / optuna.storage "
            "at a new location.",
        )
    _check_objective(study, cfg, stored)
    return study


#: The study user attr recording how its trials' error objective was scored.
OBJECTIVE_ATTR = "objective"


def objective_record(cfg: OptunaConfig) -> dict:
    """How a study's error values are scored: ``objective`` and the setting it reads."""
    if cfg.objective == "ucb":
        return {"objective": "ucb", "ucb_sigmas": cfg.ucb_sigmas}
    if cfg.objective == "huber":
        return {"objective": "huber", "huber_delta": cfg.huber_delta}
    return {"objective": cfg.objective}


def _check_objective(study: optuna.Study, cfg: OptunaConfig, stored: int) -> None:
    """Refuse to tell a stored study's trials values of another objective (they would be ranked
    together); record the objective of a new study. A study stored before the objective was
    recorded was scored by ``abs`` or ``huber``: it resumes under those only."""
    want, have = objective_record(cfg), study.user_attrs.get(OBJECTIVE_ATTR)
    if have == want:
        return
    legacy = have is None and stored and want["objective"] == "ucb"
    if have is not None or legacy:
        was = "abs or huber (stored before the objective was recorded)" if legacy else have
        raise ConfigError(
            "optuna.objective",
            f"study {study.study_name!r} in the storage was scored with {was}; the config asks "
            f"for {want}.",
            "set optuna.objective (and ucb_sigmas / huber_delta) as in the stored run, or point "
            "paths.results / optuna.storage at a new location.",
        )
    study.set_user_attr(OBJECTIVE_ATTR, want)


def export_pickle(study: optuna.Study, results: str | Path, pid: str, method: str) -> Path:
    """Write a self-contained (in-memory storage) copy of ``study`` as a pickle, atomically."""
    copy = optuna.create_study(
        storage=InMemoryStorage(),
        study_name=study.study_name,
        directions=study.directions,
    )
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    return atomic_write_bytes(pickle_path(results, pid, method), pickle.dumps(copy))
