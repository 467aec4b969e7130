"""``lambda-hat dashboard``: optuna-dashboard on a config's study storage.

The storage is ``--storage``, else the config file's (either kind,
:attr:`lambda_hat.config.load.ConfigFile.storage`): a tuning YAML's ``optuna.storage`` or
its results journal, a run YAML's ``from_study`` storage. A journal file must exist: the
dashboard would otherwise show an empty new one. It listens on loopback unless ``--host`` says
otherwise (it has no login) and prints the SSH tunnel to reach it on a cluster.

It serves a view of the storage (:class:`LabelledStorage`) that names each study of the
config's problems by its label, ``linear·s0:sgld (p_…:sgld)``, and each objective by what it
measures (``|λ̂ − λ̂_ref|``, ``runtime (s)``) where the study set no metric names: the storage
itself is not written to for that.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from lambda_hat.config.load import ConfigFile, load_config
from lambda_hat.results.tables import problem_labels, study_label
from lambda_hat.schema import ConfigError

__all__ = [
    "LOOPBACK",
    "LabelledStorage",
    "add_arguments",
    "dashboard_lines",
    "dashboard_storage",
    "metric_names",
    "run",
    "study_names",
]

METRIC_NAMES_ATTR = "study:metric_names"  # where Study.set_metric_names keeps them
_ERROR_NAMES = {"abs": "|λ̂ − λ̂_ref|", "huber": "Huber(λ̂ − λ̂_ref)"}


def metric_names(objectives: list[str] | None, kind: str | None = None, n: int = 1) -> list[str]:
    """The names of a study's objectives: ``error`` as the tuning objective ``kind`` measures
    it, ``runtime`` in seconds; without the config's ``objectives``, the ``n`` the study has
    (one: the error; two: error and runtime)."""
    names = objectives or (["error", "runtime"] if n == 2 else ["error"] * n)
    error = _ERROR_NAMES.get(kind or "abs", f"error ({kind})")
    return [error if o == "error" else "runtime (s)" if o == "runtime" else o for o in names]


def study_names(cfg: ConfigFile) -> dict[str, str]:
    """Study name -> the name the dashboard shows, ``<label>:<method> (<study name>)``, for
    every problem × method of the config (:func:`lambda_hat.results.tables.problem_labels`)."""
    entries = cfg.loaded.config.problems
    labels = problem_labels(entries, cfg.problems)
    return {
        f"{pid}:{method}": f"{study_label(label, method)} ({pid}:{method})"
        for pid, label in labels.items()
        for method in cfg.methods
    }


class LabelledStorage(BaseStorage):
    """A study storage as the dashboard shows it: studies renamed by ``names`` (both names
    find the study) and metric names supplied by ``metrics(directions)`` where a study set
    none. Every other call, writes included, goes to ``inner`` unchanged."""

    def __init__(self, inner: BaseStorage, names: dict[str, str], metrics) -> None:
        self._inner, self._names, self._metrics = inner, dict(names), metrics
        self._real = {shown: real for real, shown in self._names.items()}

    def __getattr__(self, name: str) -> Any:  # storage-specific extras (RDB's, journal's)
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _attrs(self, attrs: dict, directions: list[StudyDirection]) -> dict:
        if METRIC_NAMES_ATTR in attrs:
            return attrs
        return {**attrs, METRIC_NAMES_ATTR: self._metrics(len(directions))}

    def get_all_studies(self) -> list:
        out = []
        for frozen in self._inner.get_all_studies():
            s = copy.copy(frozen)
            s.study_name = self._names.get(s.study_name, s.study_name)
            s.system_attrs = self._attrs(s.system_attrs, s.directions)
            out.append(s)
        return out

    def get_study_name_from_id(self, study_id: int) -> str:
        name = self._inner.get_study_name_from_id(study_id)
        return self._names.get(name, name)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(self._real.get(study_name, study_name))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        attrs = self._inner.get_study_system_attrs(study_id)
        return self._attrs(attrs, self._inner.get_study_directions(study_id))


def _delegate(name: str):
    def call(self, *args, **kwargs):
        return getattr(self._inner, name)(*args, **kwargs)

    call.__name__ = name
    return call


# Every other storage call goes to the wrapped storage (the abstract ones, and the two the
# dashboard calls that storages speed up); the class is complete once they are set.
for _name in sorted(BaseStorage.__abstractmethods__ | {"get_n_trials", "get_best_trial"}):
    if _name not in LabelledStorage.__dict__:
        setattr(LabelledStorage, _name, _delegate(_name))
LabelledStorage.__abstractmethods__ = frozenset()

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def dashboard_storage(args: argparse.Namespace) -> str:
    """Where the studies are: ``--storage``, else the config file's storage (a journal file
    there must exist)."""
    if args.storage:
        where, field = args.storage, "--storage"
    elif args.config:
        where, field = load_config(args.config).storage, "--config"
    else:
        raise ConfigError("--config", "neither --config nor --storage was given.", "pass one.")
    if "://" not in str(where) and not Path(where).is_file():
        raise ConfigError(
            field,
            f"there is no study journal at {where}.",
            "run parsl-optuna with this config first, or pass --storage.",
        )
    return str(where)


def dashboard_lines(where: str, host: str, port: int) -> list[str]:
    """What ``lambda-hat dashboard`` prints: the storage, the URL, the SSH tunnel for a cluster."""
    from lambda_hat.study import storage as studies

    lines = [
        f"optuna-dashboard on {studies.describe_storage(where)}",
        f"open http://{'127.0.0.1' if host in LOOPBACK else host}:{port}/",
        f"on a cluster, tunnel from your machine: ssh -N -L {port}:127.0.0.1:{port} "
        "user@login-node (the node this runs on), then open the URL above",
    ]
    if host not in LOOPBACK:
        lines.append(f"WARNING: listening on {host}: anyone who can reach it sees every study")
    return lines


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; exit code 0."""
    import optuna_dashboard

    from lambda_hat.study import storage as studies

    where = dashboard_storage(args)
    cfg = load_config(args.config) if args.config else None
    tuning = None if cfg is None else cfg.tuning
    objectives = None if tuning is None else list(tuning.optuna.objectives)
    kind = None if tuning is None else tuning.optuna.objective
    storage = LabelledStorage(
        studies.open_storage_at(where),
        {} if cfg is None else study_names(cfg),
        lambda n: metric_names(objectives, kind, n),
    )
    print("\n".join(dashboard_lines(where, args.host, args.port)), flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The dashboard's own options (``--config`` is every command's)."""
    p.add_argument("--storage", metavar="URL", help="a database URL or journal file path")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
