"""``lambda-hat dashboard``: optuna-dashboard on a config's study storage.

The storage is ``--storage``, else the config file's (either kind,
:attr:`lambda_hat.config.load.ConfigFile.storage`): a tuning YAML's ``optuna.storage`` or
its results journal, a run YAML's ``from_study`` storage. A journal file must exist: the
dashboard would otherwise show an empty new one. It listens on loopback unless ``--host`` says
otherwise (it has no login) and prints the SSH tunnel to reach it on a cluster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lambda_hat.config.load import load_config
from lambda_hat.schema import ConfigError

__all__ = ["LOOPBACK", "add_arguments", "dashboard_lines", "dashboard_storage", "run"]

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
    storage = studies.open_storage_at(where)
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
