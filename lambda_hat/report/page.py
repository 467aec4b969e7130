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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes
from lambda_hat.log import fmt_value
from lambda_hat.report import plots
from lambda_hat.report import study_figures as report_figures
from lambda_hat.report.data import Inputs, load_inputs, problem_labels
from lambda_hat.report.tables import best_table, runs_table, validated_table
from lambda_hat.study.storage import study_name

if TYPE_CHECKING:
    import pandas as pd

    from lambda_hat.config.load import ConfigFile

log = logging.getLogger("lambda_hat.report")

Block = tuple
"""One piece of the page, rendered alike to Markdown and HTML: ``("h", level, text)``,
``("p", text)``, ``("ul", items)``, ``("table", header, rows)`` or ``("img", path relative to
the output folder, caption)``."""


def _pm(x: Any, se: Any) -> str:
    """``x ± se``, or ``n/a`` without ``x``."""
    return "n/a" if x is None else f"{x:.4g} ± {fmt_value(se, '.2g')}"


# ------------------------------------------------------------------------------- figures


class _Writer:
    """Writes PNGs under ``out`` and gives the image blocks that link them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[Path] = []

    def png(self, name: str, data: bytes, caption: str) -> Block:
        path = atomic_write_bytes(self.out / layout.REPORT_FIGURES / name, data)
        self.written.append(path)
        return ("img", path.relative_to(self.out).as_posix(), caption)

    def link(self, path: Path, caption: str) -> Block:
        return ("img", path.relative_to(self.out).as_posix(), caption)


def _study_blocks(
    w: _Writer, inp: Inputs, pid: str, method: str, study: pd.DataFrame, plotted: dict[str, Path]
) -> list[Block]:
    """A study's section: today's study figure, error vs cost, importance, slices (or why not)."""
    label = study.study_label.iloc[0]
    slug = f"{pid}_{method}"
    title = label if label == study_name(pid, method) else f"{label} ({pid} · {method})"
    blocks: list[Block] = [("h", 3, title)]
    today = plotted.get(layout.study_png(pid, method))
    if today is not None:
        blocks.append(w.link(today, "trials: objective and λ̂ per trial (lambda-hat plots)"))
    multi = inp.multi_objective.get((pid, method), False)
    png = report_figures.plot_cost(study, label, multi)
    blocks.append(w.png(f"cost_{slug}.png", png, "error against runtime and FGE"))
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


# -------------------------------------------------------------------------------- tables


def _reference_blocks(w: _Writer, inp: Inputs, plotted: dict[str, Path]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "HMC references")]
    rows = []
    names = problem_labels(inp.trials)
    for pid, ref in inp.refs.items():
        name = f"{names[pid]} ({pid})" if pid in names else pid
        if ref is None:
            rows.append([name, "missing or failed", "", "", "", ""])
            continue
        gate = ref.get("gate") or {}
        verdict = (
            "passed"
            if gate.get("passed", True)
            else "FAILED: " + "; ".join(gate.get("reasons") or [])
        )
        rows.append(
            [
                name,
                _pm(ref.get("llc_ref"), ref.get("se_ref")),
                fmt_value(ref.get("llc_theory"), ".4g"),
                fmt_value(ref.get("rhat"), ".4f"),
                fmt_value(ref.get("ess_bulk"), ".0f"),
                verdict,
            ]
        )
    if not rows:
        return [*blocks, ("p", "No problem found (no Parquet rows, no artifacts/problems/).")]
    header = ["problem", "λ̂_ref ± SE", "theory λ", "R-hat", "bulk ESS", "gate"]
    blocks.append(("table", header, rows))
    for pid in inp.refs:
        if layout.reference_png(pid) in plotted:
            blocks.append(w.link(plotted[layout.reference_png(pid)], f"HMC reference {pid}"))
    return blocks


def _best_blocks(trials: pd.DataFrame) -> list[Block]:
    header = "study,finished,ok,failed,best trial,hyperparameters,λ̂ ± SE,λ̂_ref ± SE,error"
    header += ",objective,runtime (s),R-hat,ESS"
    rows = []
    for r in best_table(trials):
        if "trial" not in r:
            fill = ["no successful trial"] + [""] * 8
        else:
            fill = [
                f"#{r['trial']}",
                r["hyperparams"],
                _pm(r["llc_hat"], r["se_hat"]),
                _pm(r["llc_ref"], r["se_ref"]),
                fmt_value(r["error"], "+.3g"),
                fmt_value(r["objective"], ".4g"),
                fmt_value(r["runtime_sec"], ".3g"),
                fmt_value(r["rhat"], ".4f"),
                fmt_value(r["ess"], ".0f"),
            ]
        done = str(r["finished"]) + (f" (+{r['running']} running)" if r["running"] else "")
        rows.append([r["label"], done, str(r["ok"]), r["failed"], *fill])
    return [("h", 2, "Best trial per study"), ("table", header.split(","), rows)]


def _validated_blocks(inp: Inputs) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Validated hyperparameters")]
    rows = validated_table(inp)
    if not rows:
        return [*blocks, ("p", "No validation yet (no validation.json with studies).")]
    header = "study,seeds,from trial,hyperparameters,mean |error| ± sd,ok/failed seeds"
    header += ",mean λ̂,mean runtime (s),max R-hat,min ESS"
    table = []
    for r in rows:
        if "note" in r:
            table.append([r["study"], str(r["seeds"]), r["note"]] + [""] * 7)
            continue
        table.append(
            [
                r["study"],
                ", ".join(str(s) for s in r["seeds"] or []),
                f"#{r['trial']}",
                r["hyperparams"],
                _pm(r["mean_abs_error"], r["sd_abs_error"]),
                f"{r['n_ok']}/{r['n_failed']}",
                fmt_value(r.get("llc_hat"), ".4g"),
                fmt_value(r.get("runtime_sec"), ".3g"),
                fmt_value(r.get("rhat"), ".4f"),
                fmt_value(r.get("ess"), ".0f"),
            ]
        )
    return [*blocks, ("table", header.split(","), table)]


def _runs_blocks(inp: Inputs) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Experiment runs (llc_runs.parquet)")]
    if inp.runs is None:
        return [*blocks, ("p", "No experiment runs yet: `lambda-hat run` writes them.")]
    rows = runs_table(inp.runs)
    if not rows:
        return [*blocks, ("p", "llc_runs.parquet has no problem and method columns to group by.")]
    header = "problem,method,set,hyperparameters from,runs,ok,failed,mean λ̂,sd over seeds"
    header += ",mean SE,mean error"
    header += ",max R-hat,min ESS,mean runtime (s)"
    table = [
        [
            str(r["problem"]),
            str(r["method"]),
            "" if r["set"] is None else str(r["set"]),
            r["from"],
            str(r["runs"]),
            str(r["ok"]),
            r["failed"],
            fmt_value(r["llc_hat"], ".4g"),
            fmt_value(r["sd"], ".2g"),
            fmt_value(r["se_hat"], ".2g"),
            fmt_value(r["error"], "+.3g"),
            fmt_value(r["rhat"], ".4f"),
            fmt_value(r["ess"], ".0f"),
            fmt_value(r["runtime_sec"], ".3g"),
        ]
        for r in rows
    ]
    return [*blocks, ("table", header.split(","), table)]


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


def report_blocks(
    inp: Inputs, out: Path, cfg: ConfigFile | None = None
) -> tuple[list[Block], list[Path]]:
    """The report's content and every figure written for it under ``out``."""
    w = _Writer(out)
    plotted = _today_plots(inp, out, cfg)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        ("h", 1, "lambda_hat report"),
        ("p", f"From {inp.results.resolve()} and {inp.artifacts.resolve()}, {when}."),
        ("h", 2, "What is missing"),
        ("ul", inp.missing) if inp.missing else ("p", "Nothing: every input was found."),
    ]
    blocks += _reference_blocks(w, inp, plotted)
    if inp.trials is not None and not inp.trials.empty:
        blocks += _best_blocks(inp.trials)
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
    blocks += _validated_blocks(inp)
    blocks += _runs_blocks(inp)
    if inp.trials is not None and not inp.trials.empty:
        blocks.append(("h", 2, "Studies"))
        for (pid, method), study in inp.trials.groupby(["pid", "method"], sort=False):
            blocks += _study_blocks(w, inp, pid, method, study, plotted)
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
