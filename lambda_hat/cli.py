"""``lambda-hat``: the command-line entry point and every sub-command.

``reference`` (HMC references + table), ``trial`` (one run of one method), ``run`` (the
experiments after tuning, :mod:`lambda_hat.runs.stage`), ``plots`` (PNGs),
``report`` (one HTML + Markdown page of a run), ``dashboard`` (optuna-dashboard on the study
storage, :mod:`lambda_hat.dashboard`). Every ``--config`` takes either YAML kind, a tuning
YAML or a run YAML (:func:`lambda_hat.config.load.load_config`); ``run`` takes a run YAML.
Each handler takes the parsed arguments and returns an exit code: 0 done, 1 a result that
failed (a reference gate, a failed trial), 2 bad input (nothing was done).
``parsl-optuna`` (the tuning workflow) has its own entry point, :func:`lambda_hat.study.pipeline.main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lambda_hat import dashboard, layout, methods
from lambda_hat.config.load import ConfigFile, load_config
from lambda_hat.log import setup_logging
from lambda_hat.precision import enable_x64
from lambda_hat.problem.build import build_problem, problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference import stage as references
from lambda_hat.reference.store import load_reference_at
from lambda_hat.reference.table import reference_table
from lambda_hat.report import plots
from lambda_hat.report.checks import run_verdict
from lambda_hat.schema import ConfigError, parse_yaml
from lambda_hat.trial import identity as runs
from lambda_hat.trial import runner

CONFIG_HELP = "a tuning YAML (parsl-optuna) or a run YAML (lambda-hat run)"


def select_problems(specs: list[ProblemSpec], wanted: list[str] | None) -> list[ProblemSpec]:
    """The problems named by index or pid (all of them when ``wanted`` is empty)."""
    if not wanted:
        return specs
    out = []
    pids = [problem_id(p) for p in specs]
    for w in wanted:
        if w.isdigit() and int(w) < len(specs):
            out.append(specs[int(w)])
        elif w in pids:
            out.append(specs[pids.index(w)])
        else:
            raise ConfigError(
                "--problem",
                f"{w!r} is neither an index nor a pid of this config ({', '.join(pids)}).",
                "pass an index (0, 1, ...) or a pid.",
            )
    return out


# ------------------------------------------------------------------------------ reference


def run_references(
    specs: list[ProblemSpec], cfg: ConfigFile, force: bool = False, verbose: int = 0
) -> list[dict]:
    """References of ``specs`` at ``cfg``'s settings (order kept): the reference stage
    (:func:`lambda_hat.reference.stage.reference_stage`) on local processes, as many as cores
    allow (``reference.workers``)."""
    workers = min(len(specs), cfg.reference.workers or os.cpu_count() or 1)
    with references.process_submitter(workers, verbose) as submit:
        refs = references.reference_stage(
            specs,
            cfg.reference,
            cfg.paths.artifacts,
            submit,
            force=force,
            watch=False,
            kinds=cfg.kinds,
        )
    return [{"pid": problem_id(s), **refs[problem_id(s)]} for s in specs]


def _cmd_reference(args: argparse.Namespace) -> int:
    overrides = {}
    if args.budget is not None:
        overrides["reference"] = {"budget_sec": args.budget}
    cfg = load_config(args.config, overrides)
    specs = select_problems(cfg.problems, args.problem)
    try:
        refs = run_references(specs, cfg, args.force, args.verbose)
    except references.ReferenceInterrupted as exc:
        print(
            f"interrupted: {exc}. Run the same command again (without --force): each "
            "reference continues from its last saved chunk."
        )
        return 130
    print(reference_table(refs))
    failed = [r["pid"] for r in refs if not (r.get("gate") or {}).get("passed", False)]
    if failed:
        print(
            f"\nWARNING: {len(failed)} reference(s) failed the quality gate: "
            f"{', '.join(failed)} (see the log above for why)."
        )
    return 1 if failed else 0


def _command(
    sub,
    name: str,
    func,
    help: str,
    description: str,
    config_required: bool = True,
    config_help: str = CONFIG_HELP,
) -> argparse.ArgumentParser:
    """A sub-command parser with the ``--config`` every command takes, handled by ``func``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", required=config_required, help=config_help)
    p.set_defaults(func=func)
    return p


def _add_reference(sub) -> None:
    p = _command(
        sub,
        "reference",
        _cmd_reference,
        "compute (or reuse) HMC reference LLCs",
        "Compute the HMC reference LLC of every problem in "
        "the config (cached by pid in artifacts/problems/<pid>/ref.json).",
    )
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--problem", action="append", help="only this pid or index (repeatable)")
    p.add_argument("--budget", type=float, help="wall-clock budget per reference, seconds")


# ---------------------------------------------------------------------------------- trial


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError("--set", f"got {item!r}.", "write NAME=VALUE, e.g. eta0=1e-4.")
        out[name.strip()] = parse_yaml(value, f"--set {name.strip()}")
    return out


def _cmd_trial(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    hp = runs.resolve_hyperparams(args.method, _parse_sets(args.set), "--set")
    (spec,) = select_problems(cfg.problems, [args.problem])
    problem = build_problem(spec, cfg.paths.artifacts)
    ref = load_reference_at(problem, cfg.reference, hp.get("gamma")) or {
        "beta": cfg.reference.beta,
        "gamma": cfg.reference.gamma,
    }
    budget = args.budget if args.budget is not None else cfg.budget_sec
    m = runner.run_method_trial(
        problem, args.method, hp, budget, args.seed, ref, cfg.paths.artifacts
    )
    llc = "n/a" if m["llc_hat"] is None else f"{m['llc_hat']:.4g} ± {m['se_hat'] or 0:.2g}"
    line = f"{args.method} on {problem.pid}: {m['status']}, λ̂ = {llc}"
    if m.get("llc_ref") is not None:
        line += f" (HMC {m['llc_ref']:.4g} ± {m['se_ref'] or 0:.2g})"
    if m["failure"]:
        line += f"; {m['failure']['kind']}: {m['failure']['message']}"
    print(line)
    if m["llc_hat"] is not None:
        print("  " + run_verdict(m))
    print(f"metrics: {Path(m['run_dir']) / layout.METRICS}")
    return 0 if m["status"] == "ok" else 1


def _add_trial(sub) -> None:
    p = _command(
        sub,
        "trial",
        _cmd_trial,
        "run one SGLD / VI / MCLMC trial on one problem",
        "Run one trial and write artifacts/runs/<pid>/<method>/<run id>/.",
    )
    p.add_argument("--problem", required=True, help="problem pid, or its index in the config")
    p.add_argument("--method", required=True, choices=methods.METHODS)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter (repeatable), e.g. --set eta0=1e-4",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock budget (s); default: optuna.method_budget_sec (a run YAML: budget_sec)",
    )
    p.add_argument("--seed", type=int, default=0)


# ------------------------------------------------------------------------------------ run


def _cmd_run(args: argparse.Namespace) -> int:
    import warnings

    from lambda_hat.config.load import load_runs
    from lambda_hat.runs import stage as experiments

    # Parsl starts its worker pool with fork+exec, which is safe; JAX warns about any fork.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    plan = experiments.plan_experiments(load_runs(args.config), args.parsl_config)
    print(experiments.describe(plan), flush=True)
    if args.dry_run:
        return 0
    try:
        return experiments.execute(plan)
    except references.ReferenceInterrupted as exc:
        print(
            f"interrupted during the reference stage, before any run: {exc}. Run the same "
            "command again: each reference continues from its last saved chunk."
        )
        return 130
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (parallel.session.parsl_session)
        print("interrupted: finished runs are stored; run the same command to resume.")
        return 130


def _add_run(sub) -> None:
    p = _command(
        sub,
        "run",
        _cmd_run,
        "run the experiments (tuned or fixed hyperparameters) into llc_runs.parquet",
        "Run problems x methods x hyperparameter sets x seeds of an experiments YAML "
        "(config/experiments.yaml) against their HMC references; results in "
        "<paths.results>/llc_runs.parquet. Re-run the same command to resume.",
        config_help="a run YAML (e.g. config/experiments.yaml)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--local", action="store_true", help="run on this machine, one worker per core (default)"
    )
    where.add_argument(
        "--parsl-config",
        metavar="FILE",
        help="Python file defining a Parsl `config` (e.g. parsl_configs/slurm.py)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the config and print the runs; write nothing"
    )


# ---------------------------------------------------------------------------- plots, report


def _folders(args: argparse.Namespace, cfg: ConfigFile | None) -> tuple[Path, Path | None]:
    """``(results, artifacts)`` of ``plots`` and ``report``: the flags, else the config's
    paths, else ``results/`` and None (artifacts: where the trials' runs are)."""
    results = args.results or Path(cfg.paths.results if cfg else layout.RESULTS)
    artifacts = args.artifacts or (Path(cfg.paths.artifacts) if cfg else None)
    return results, artifacts


def _cmd_plots(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else None
    results, artifacts = _folders(args, cfg)
    out = args.out or results / layout.PLOTS
    if cfg is not None:
        written = plots.make_plots(cfg, out, results, artifacts)
    else:
        written = plots.plot_stored(artifacts, results, out)
    for path in written:
        print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lambda_hat.report.page import make_report

    cfg = load_config(args.config) if args.config else None
    results, artifacts = _folders(args, cfg)
    written = make_report(results, args.out or results / layout.REPORT, artifacts, cfg)
    print(written[0])
    return 0


def _add_folders(p: argparse.ArgumentParser, out: str) -> None:
    """The ``--results``, ``--out`` and ``--artifacts`` options ``plots`` and ``report`` share."""
    p.add_argument(
        "--results", type=Path, help="results folder (default: the config's, or results/)"
    )
    p.add_argument("--out", type=Path, help=f"output folder (default: <results>/{out})")
    p.add_argument(
        "--artifacts",
        type=Path,
        help="artifacts folder (default: the config's, or where the trials' runs are)",
    )


def _add_plots(sub) -> None:
    p = _command(
        sub,
        "plots",
        _cmd_plots,
        "plot references, studies and a summary as PNGs",
        "Plot what `lambda-hat reference` and `parsl-optuna` wrote (HMC references, one figure "
        "per study, a summary) from the stored files; missing inputs are skipped. With "
        "--config: that config's problems and gate thresholds; without: every stored problem.",
        config_required=False,
    )
    _add_folders(p, layout.PLOTS)


def _add_report(sub) -> None:
    p = _command(
        sub,
        "report",
        _cmd_report,
        "write one HTML + Markdown report of a tuning and experiment run",
        "Write <out>/index.html and summary.md (relative links) with the references, the best "
        "and validated hyperparameters, experiment-run summaries, convergence, error vs cost, "
        "importance and slice figures, from the stored files; what is missing is listed.",
        config_required=False,
    )
    _add_folders(p, layout.REPORT)


def _add_dashboard(sub) -> None:
    p = _command(
        sub,
        "dashboard",
        dashboard.run,
        "serve optuna-dashboard on the study storage",
        "Serve optuna-dashboard (a live web view of the studies) on the config's study "
        "storage, or --storage; loopback only unless --host says otherwise. Ctrl-C stops it.",
        config_required=False,
    )
    dashboard.add_arguments(p)


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambda-hat", description="Local learning coefficient estimation (lambda_hat)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_reference, _add_trial, _add_run, _add_plots, _add_report, _add_dashboard):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lambda-hat`` (float64 on: lambda_hat owns this process)."""
    enable_x64()
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
