"""``lambda-hat report``: one page of everything a tuning and experiment run left behind.

Writes ``<out>/index.html`` and ``<out>/summary.md`` (the same content; every link relative, so
the folder can be copied or served anywhere), today's ``lambda-hat plots`` figures under
``<out>/plots/`` and the report's own figures under ``<out>/figures/``
(:mod:`lambda_hat.report.study_figures`), from the stored files only (:mod:`lambda_hat.report.data`).
It computes nothing expensive and runs at any time, including on a partial run: every input
that is missing, unreadable or failed is listed under "What is missing" instead of stopping the
report. Every file is written atomically (:mod:`lambda_hat._io`).
"""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes, finite_float
from lambda_hat.report import calibration, plots, run_figures, training_figures
from lambda_hat.report import study_figures as report_figures
from lambda_hat.report.data import Inputs, load_inputs, problem_labels
from lambda_hat.report.sections import (
    Block,
    Writer,
    best_blocks,
    flag_blocks,
    flag_lines,
    reference_blocks,
    runs_blocks,
    validated_blocks,
)
from lambda_hat.report.tables import best_table, runs_table, validated_table
from lambda_hat.report.transfer import class_blocks
from lambda_hat.study.storage import study_name

if TYPE_CHECKING:
    import pandas as pd

    from lambda_hat.config.load import ConfigFile

log = logging.getLogger("lambda_hat.report")


# ------------------------------------------------------------------------------- figures


def _theory(inp: Inputs, pid: Any) -> float | None:
    return finite_float((inp.refs.get(pid) or {}).get("llc_theory"))


def chain_block(w: Writer, name: str, run_dir: Any, heading: str, theory: float | None) -> Block:
    """The chain figure of one run (:func:`lambda_hat.report.run_figures.plot_run`) written as
    ``chains_<name>.png``, or a sentence saying why there is none."""
    run, why = run_figures.load_run(run_dir)
    if run is None:
        return ("p", f"No chain figure for {heading}: {why}.")
    png = run_figures.plot_run(run, heading, theory)
    return w.png(f"chains_{name}.png", png, f"chains of {heading}: loss, running λ̂, diagnostics")


@dataclass
class _Tables:
    """The report's table rows, computed once and shared by the tables, flags and figures."""

    best: list[dict] = field(default_factory=list)
    validated: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def of(self, rows: list[dict], pid: str, method: str) -> dict:
        return next((r for r in rows if r.get("pid") == pid and r.get("method") == method), {})


def _chain_blocks(w: Writer, inp: Inputs, tables: _Tables, pid: str, method: str) -> list[Block]:
    """The chains of a study's best trial and of its recommendation's first fresh seed."""
    slug, theory = f"{pid}_{method}", _theory(inp, pid)
    best, rec = tables.of(tables.best, pid, method), tables.of(tables.validated, pid, method)
    out = []
    if "trial" in best:
        heading = f"{best['label']} best trial #{best['trial']} ({best['hyperparams']})"
        out.append(chain_block(w, f"{slug}_best", best["run_dir"], heading, theory))
    if rec.get("trial") is not None:
        heading = f"{rec['study']} recommended: trial #{rec['trial']} ({rec['hyperparams']})"
        heading += f", validation seed {rec.get('seed')}"
        out.append(chain_block(w, f"{slug}_recommended", rec.get("run_dir"), heading, theory))
        if rec.get("reliability"):
            out.append(("p", f"Recommendation: {rec['reliability']}."))
    return out


def _calibration_block(
    w: Writer, inp: Inputs, tables: _Tables, pid: str, method: str, study: pd.DataFrame
) -> Block:
    axis = calibration.calibration_axis(study, method, inp.eps_max.get((pid, method)))
    if axis is None:
        return ("p", "No calibration picture: the finished trials tried fewer than two step sizes.")
    rec = tables.of(tables.validated, pid, method).get("trial")
    png = calibration.plot_calibration(study, axis, study.study_label.iloc[0], rec)
    what = "ε/ε_max" if axis[1] else axis[0].removeprefix("hp_")
    return w.png(f"calibration_{pid}_{method}.png", png, f"signed error against {what}")


def _study_blocks(
    w: Writer, inp: Inputs, tables: _Tables, study: pd.DataFrame, plotted: dict[str, Path]
) -> list[Block]:
    """A study's section: today's study figure, the chains of its best and recommended runs,
    calibration, error vs cost, importance, slices (or why not)."""
    pid, method = study.pid.iloc[0], study.method.iloc[0]
    label = study.study_label.iloc[0]
    slug = f"{pid}_{method}"
    title = label if label == study_name(pid, method) else f"{label} ({pid} · {method})"
    blocks: list[Block] = [("h", 3, title)]
    today = plotted.get(layout.study_png(pid, method))
    if today is not None:
        blocks.append(w.link(today, "trials: objective and λ̂ per trial (lambda-hat plots)"))
    blocks += _chain_blocks(w, inp, tables, pid, method)
    blocks.append(_calibration_block(w, inp, tables, pid, method, study))
    multi = inp.multi_objective.get((pid, method), False)
    png = report_figures.plot_cost(study, label, multi)
    blocks.append(
        w.png(f"cost_{slug}.png", png, "error against runtime (without compilation) and FGE")
    )
    scales = inp.log_scale.get((pid, method))
    imp, note = report_figures.importances(study, scales)
    if imp is None:
        blocks.append(("p", f"Hyperparameter importance not computed: {note}."))
    else:
        png = report_figures.plot_importance(imp, label, note)
        blocks.append(w.png(f"importance_{slug}.png", png, "hyperparameter importance"))
    params = report_figures.searched_params(study)
    if params:
        png = report_figures.plot_slices(study, params, label, scales)
        blocks.append(w.png(f"slices_{slug}.png", png, "objective against each hyperparameter"))
    else:
        blocks.append(("p", "No slice plots: no hyperparameter varies across finished trials."))
    return blocks


def _training_blocks(w: Writer, inp: Inputs) -> list[Block]:
    """LLC over training: one figure per checkpointed source, method and set."""
    curves = training_figures.training_curves(inp.runs)
    if not curves:
        return []
    out: list[Block] = [("h", 2, "LLC over training")]
    for (source, seed, method, index), curve in curves.items():
        name = source.rpartition(":")[2]
        title = f"{source} seed {seed}: {method} set {index}, one setting at every checkpoint"
        png = training_figures.plot_training(curve, title)
        caption = f"λ̂ ± SE and the training and test loss against training step: {title}"
        out.append(w.png(f"training_{name}_s{seed}_{method}_set{index}.png", png, caption))
    return out


def _run_set_blocks(w: Writer, inp: Inputs, rows: list[dict]) -> list[Block]:
    """The chains of each ``lambda-hat run`` set's first successful seed."""
    out = []
    for r in rows:
        name = f"{r['pid']}_{r['method']}_set{r['set']}"
        heading = (
            f"run {r['problem']} {r['method']} set {r['set']} ({r['from']}), seed {r.get('seed')}"
        )
        if r.get("run_dir") is not None:
            out.append(chain_block(w, name, r["run_dir"], heading, _theory(inp, r["pid"])))
    return out


# ------------------------------------------------------------------------------ rendering


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            cells = [[c.replace("|", "\\|") for c in row] for row in [b[1], *b[2]]]
            lines = ["| " + " | ".join(row) + " |" for row in cells]
            lines.insert(1, "|" + "---|" * len(b[1]))
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}th{background:#eee}"
    "img{max-width:100%;display:block;margin:0.5em 0}"
)


def to_html(blocks: list[Block], title: str) -> str:
    """The blocks as one self-contained HTML page (images linked by relative paths)."""
    e = html.escape
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "img":
            src = e(b[1], quote=True)
            body.append(f'<figure><a href="{src}"><img src="{src}" alt="{e(b[2])}"></a>')
            body.append(f"<figcaption>{e(b[2])}</figcaption></figure>")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------- main


def _today_plots(inp: Inputs, out: Path, cfg: ConfigFile | None) -> dict[str, Path]:
    """``lambda-hat plots``' figures under ``<out>/plots``, by file name."""
    where = out / layout.PLOTS
    if cfg is not None:
        paths = plots.make_plots(cfg, where)
    else:
        paths = plots.plot_stored(inp.artifacts, inp.results, where, pids=list(inp.refs) or None)
    return {p.name: p for p in paths}


def _tables(inp: Inputs) -> _Tables:
    has_trials = inp.trials is not None and not inp.trials.empty
    return _Tables(
        best=best_table(inp.trials) if has_trials else [],
        validated=validated_table(inp),
        runs=runs_table(inp.runs) if inp.runs is not None else [],
    )


def report_blocks(
    inp: Inputs, out: Path, cfg: ConfigFile | None = None
) -> tuple[list[Block], list[Path]]:
    """The report's content and every figure written for it under ``out``."""
    w = Writer(out)
    plotted = _today_plots(inp, out, cfg)
    tables = _tables(inp)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        ("h", 1, "lambda_hat report"),
        ("p", f"From {inp.results.resolve()} and {inp.artifacts.resolve()}, {when}."),
        ("h", 2, "What is missing"),
        ("ul", inp.missing) if inp.missing else ("p", "Nothing: every input was found."),
        *flag_blocks(flag_lines(tables.best, tables.validated, tables.runs)),
    ]
    blocks += reference_blocks(w, inp, plotted)
    if tables.best:
        blocks += best_blocks(tables.best)
        if layout.SUMMARY_PNG in plotted:
            blocks.append(
                w.link(plotted[layout.SUMMARY_PNG], "best trial per method vs the reference")
            )
        cols = inp.trials[["pid", "method", "study_label"]]
        labels = {(p, m): lab for p, m, lab in cols.itertuples(index=False)}
        png = report_figures.plot_convergence(inp.trials, labels, problem_labels(inp.trials))
        blocks.append(w.png("convergence.png", png, "best objective against finished trials"))
    else:
        blocks += [("h", 2, "Best trial per study"), ("p", "No tuning trials to report yet.")]
    blocks += validated_blocks(tables.validated)
    blocks += class_blocks(w, inp.results)
    blocks += runs_blocks(inp, tables.runs)
    blocks += _training_blocks(w, inp)
    blocks += _run_set_blocks(w, inp, tables.runs)
    if tables.best:
        blocks.append(("h", 2, "Studies"))
        for _, study in inp.trials.groupby(["pid", "method"], sort=False):
            blocks += _study_blocks(w, inp, tables, study, plotted)
    return blocks, [*plotted.values(), *w.written]


def make_report(
    results: str | Path,
    out: str | Path | None = None,
    artifacts: str | Path | None = None,
    cfg: ConfigFile | None = None,
) -> list[Path]:
    """Write the report of ``results`` (default ``<results>/report``); return every file written.

    ``cfg`` (a config file of either kind, :func:`lambda_hat.config.load.load_config`; optional)
    supplies the reference gate thresholds and the problem list, a tuning YAML also the
    objectives; without it they come from the files.
    """
    out = Path(out) if out is not None else Path(results) / layout.REPORT
    objectives, gate = None, None
    if cfg is not None:
        from lambda_hat.reference.store import evaluate_gate

        objectives = None if cfg.tuning is None else list(cfg.tuning.optuna.objectives)
        gate = functools.partial(evaluate_gate, cfg=cfg.reference)
    inp = load_inputs(results, artifacts, objectives, gate)
    for line in inp.missing:
        log.info("report: %s", line)
    blocks, figures = report_blocks(inp, out, cfg)
    md = atomic_write_bytes(out / layout.REPORT_MD, to_markdown(blocks).encode())
    html_text = to_html(blocks, "lambda_hat report").encode()
    page = atomic_write_bytes(out / layout.REPORT_HTML, html_text)
    return [page, md, *figures]
