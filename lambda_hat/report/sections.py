"""The report's tables as page blocks: the HMC references, the best trial per study, the
validated recommendations, the ``lambda-hat run`` sets, and the flags raised on them (checks
missed, recommendations not reliable), from the rows of :mod:`lambda_hat.report.tables`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes
from lambda_hat.log import fmt_value
from lambda_hat.report.checks import ESS_MIN, MALA_MIN, RHAT_MAX, flags_text
from lambda_hat.report.data import Inputs, problem_labels

Block = tuple
"""One piece of the page, rendered alike to Markdown and HTML: ``("h", level, text)``,
``("p", text)``, ``("ul", items)``, ``("table", header, rows)`` or ``("img", path relative to
the output folder, caption)``."""


def pm(x: Any, se: Any) -> str:
    """``x ± se``, or ``n/a`` without ``x``."""
    return "n/a" if x is None else f"{x:.4g} ± {fmt_value(se, '.2g')}"


class Writer:
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


def _seconds(total: Any, compile_sec: Any) -> str:
    """``'0.21 (+1.2 compile)'``: the run without compilation, then the compiling part."""
    if total is None:
        return "n/a"
    if compile_sec is None:
        return fmt_value(total, ".3g")
    return f"{total - compile_sec:.3g} (+{compile_sec:.2g} compile)"


def reference_blocks(w: Writer, inp: Inputs, plotted: dict[str, Path]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "HMC references")]
    rows = []
    names = problem_labels(inp.trials)
    for pid, ref in inp.refs.items():
        name = f"{names[pid]} ({pid})" if pid in names else pid
        if ref is None and pid in inp.theory_only:
            lam = inp.theory_only[pid]
            rows.append([name, "no HMC reference", fmt_value(lam, ".4g"), "", "", ""])
            continue
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
                pm(ref.get("llc_ref"), ref.get("se_ref")),
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


CHECKS_NOTE = (
    f"Checks of a cheap run's chains: rank-normalized R-hat ≤ {RHAT_MAX}, bulk ESS ≥ "
    f"{ESS_MIN:.0f}, SGLD's MALA acceptance ≥ {MALA_MIN} (healthy 0.9–0.95). Runtime is the "
    "run without compilation, with the compiling seconds in brackets."
)


def best_blocks(rows: list[dict]) -> list[Block]:
    header = "study,finished,ok,failed,best trial,hyperparameters,λ̂ ± SE"
    header += ",λ̂_ref ± SE,error,objective,runtime (s),R-hat,ESS,MALA,checks"
    table = []
    for r in rows:
        if "trial" not in r:
            fill = ["no successful trial"] + [""] * 10
        else:
            fill = [
                f"#{r['trial']}",
                r["hyperparams"],
                pm(r["llc_hat"], r["se_hat"]),
                pm(r["llc_ref"], r["se_ref"]),
                fmt_value(r["error"], "+.3g"),
                fmt_value(r["objective"], ".4g"),
                _seconds(r["runtime_sec"], r["compile_sec"]),
                fmt_value(r["rhat"], ".4f"),
                fmt_value(r["ess"], ".0f"),
                fmt_value(r["mala"], ".3f", "-"),
                flags_text(r["flags"]),
            ]
        more = [f"+{r['running']} running"] if r["running"] else []
        more += [f"+{r['interrupted']} interrupted"] if r["interrupted"] else []
        done = str(r["finished"]) + (f" ({', '.join(more)})" if more else "")
        table.append([r["label"], done, str(r["ok"]), r["failed"], *fill])
    return [
        ("h", 2, "Best trial per study"),
        ("p", CHECKS_NOTE),
        ("table", header.split(","), table),
    ]


def validated_blocks(rows: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Validated hyperparameters")]
    if not rows:
        return [*blocks, ("p", "No validation yet (no validation.json with studies).")]
    header = "study,reliable,seeds,from trial,hyperparameters,mean |error| ± sd,ok/failed seeds"
    header += ",mean λ̂,mean runtime (s),max R-hat,min ESS,min MALA,checks"
    table = []
    for r in rows:
        verdict = r["reliability"] or "not assessed"
        if "note" in r:
            table.append([r["study"], verdict, str(r["seeds"]), r["note"]] + [""] * 9)
            continue
        table.append(
            [
                r["study"],
                verdict,
                ", ".join(str(s) for s in r["seeds"] or []),
                f"#{r['trial']}",
                r["hyperparams"],
                pm(r["mean_abs_error"], r["sd_abs_error"]),
                f"{r['n_ok']}/{r['n_failed']}",
                fmt_value(r.get("llc_hat"), ".4g"),
                _seconds(r.get("runtime_sec"), r.get("compile_sec")),
                fmt_value(r.get("rhat"), ".4f"),
                fmt_value(r.get("ess"), ".0f"),
                fmt_value(r.get("mala"), ".3f", "-"),
                flags_text(r["flags"]),
            ]
        )
    return [*blocks, ("table", header.split(","), table)]


def runs_blocks(inp: Inputs, rows: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Experiment runs (llc_runs.parquet)")]
    if inp.runs is None:
        return [*blocks, ("p", "No experiment runs yet: `lambda-hat run` writes them.")]
    if not rows:
        return [*blocks, ("p", "llc_runs.parquet has no problem and method columns to group by.")]
    header = "problem,method,set,hyperparameters from,runs,ok,failed,mean λ̂"
    header += ",sd over seeds,mean SE,mean error,z,agrees,max R-hat,min ESS,min MALA"
    header += ",mean runtime (s),checks"
    table = [
        [
            str(r["problem"]),
            str(r["method"]),
            "" if r["set"] is None else str(r["set"]),
            r["from"],
            str(r["runs"]) + (f" (+{r['interrupted']} interrupted)" if r["interrupted"] else ""),
            str(r["ok"]),
            r["failed"],
            fmt_value(r["llc_hat"], ".4g"),
            fmt_value(r["sd"], ".2g"),
            fmt_value(r["se_hat"], ".2g"),
            fmt_value(r["error"], "+.3g"),
            fmt_value(r.get("z"), "+.2f", "-"),
            "-" if r.get("agrees") is None else ("yes" if r["agrees"] else "NO"),
            fmt_value(r["rhat"], ".4f"),
            fmt_value(r["ess"], ".0f"),
            fmt_value(r["mala"], ".3f", "-"),
            _seconds(r["runtime_sec"], r["compile_sec"]),
            flags_text(r["flags"]),
        ]
        for r in rows
    ]
    return [*blocks, ("table", header.split(","), table)]


def flag_lines(best: list[dict], validated: list[dict], runs: list[dict]) -> list[str]:
    """One line per flag, the most serious first: a recommendation not reliable, a run set
    that disagrees with its reference, then every best trial, recommendation's runs and run
    set that missed a check of its chains."""
    verdicts, checks = [], []
    for r in validated:
        if r.get("reliable") is False:
            verdicts.append(f"{r['study']}: recommendation {r['reliability']}")
    for r in runs:
        what = f"run {r['problem']} {r['method']} set {r['set']}"
        if r.get("agrees") is False:
            verdicts.append(f"{what}: does not agree with the HMC reference (z = {r['z']:+.2f})")
    for r in best:
        if r.get("flags"):
            checks.append(f"{r['label']}: best trial #{r['trial']}: {'; '.join(r['flags'])}")
    for r in validated:
        if r.get("flags"):
            seeds = f"trial #{r.get('trial')} on seeds {r.get('seeds')}"
            checks.append(f"{r['study']}: recommended {seeds}: {'; '.join(r['flags'])}")
    for r in runs:
        if r.get("flags"):
            what = f"run {r['problem']} {r['method']} set {r['set']}"
            checks.append(f"{what}: {'; '.join(r['flags'])}")
    return verdicts + checks


def flag_blocks(lines: list[str]) -> list[Block]:
    """The "Flags" section: every check missed, or a sentence saying none was."""
    if not lines:
        return [("h", 2, "Flags"), ("p", "None: every run shown passed its checks.")]
    return [("h", 2, "Flags"), ("p", CHECKS_NOTE), ("ul", lines)]
