"""The report's problem-class section: each class study's recommendation in its units
(``<results>/classes/*/*/recommendation.json``) and the held-out proof (``transfer.parquet``):
a table per holdout member and setting, and the relative error against the member's d."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lambda_hat import layout
from lambda_hat.log import fmt_value
from lambda_hat.report.axes import log_axis
from lambda_hat.report.figures import legend, new_figure, to_png
from lambda_hat.report.sections import Block, Writer
from lambda_hat.study import summarize_transfer

__all__ = ["class_blocks"]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _recommendations(results: Path) -> list[dict]:
    out = []
    for path in sorted((results / layout.CLASSES).glob(f"*/*/{layout.RECOMMENDATION_JSON}")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _units_text(units: dict, scaled: list[str]) -> str:
    return ", ".join(
        f"{k}={fmt_value(v, '.3g', floats=True)}{' × ε_max' if k in scaled else ''}"
        for k, v in units.items()
    )


def class_blocks(w: Writer, results: Path) -> list[Block]:
    """The section, or nothing when no class study ran."""
    recs = _recommendations(results)
    proof = _read(results / layout.TRANSFER_TABLE)
    if not recs and proof is None:
        return []
    blocks: list[Block] = [("h", 2, "Problem classes: tuned once, proven on held-out members")]
    rows = []
    for r in recs:
        picked = r.get("validated") or r
        mean = (r.get("validated") or {}).get("mean")
        rows.append(
            [
                f"{r['class']}:{r['method']}",
                f"#{picked.get('trial')} ({r['pick']})",
                fmt_value(r.get("objective"), ".3g"),
                fmt_value(mean, ".3g"),
                _units_text(picked.get("units") or {}, r.get("scaled") or []),
            ]
        )
    header = ["class study", "recommended", "tuned objective", "validated", "setting (units)"]
    blocks.append(("table", header, rows))
    if proof is not None and not proof.empty:
        summary = summarize_transfer(proof.to_dict("records"))
        table = [
            [
                f"{s['class']}:{s['method']}",
                s["label"],
                str(s["d"]),
                s["setting"],
                "n/a" if "llc_hat" not in s else f"{s['llc_hat']:.4g} ± {s['se_hat']:.2g}",
                f"{fmt_value(s['ref'], '.4g')} ({s['ref_kind']})",
                fmt_value(s.get("z"), "+.2f"),
                fmt_value(s.get("rel_error"), ".1%"),
                f"{s['ok']}/{s['runs']}",
            ]
            for s in summary
        ]
        head = ["study", "holdout member", "d", "setting", "λ̂ ± SE", "reference", "z"]
        blocks.append(("table", [*head, "rel. error", "ok"], table))
        blocks.append(w.png("transfer.png", _figure(summary), "relative error against d"))
    return blocks


def _figure(summary: list[dict]) -> bytes:
    """Relative error of each setting on each holdout member against the member's d."""
    fig, axes = new_figure(7.5, 4.2)
    ax = axes[0, 0]
    styles = {"recommended": ("o", "tab:blue"), "baseline": ("x", "tab:red")}
    for kind, (marker, color) in styles.items():
        pts = [
            (s["d"], s["rel_error"])
            for s in summary
            if s.get("rel_error") and (s["recommended"] if kind == "recommended" else s["baseline"])
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            label = "recommended setting" if kind == "recommended" else "fixed baseline"
            ax.plot(x, y, ls="none", marker=marker, ms=8, color=color, label=label)
    others = [
        (s["d"], s["rel_error"])
        for s in summary
        if s.get("rel_error") and not s["recommended"] and not s["baseline"]
    ]
    if others:
        x, y = zip(*others, strict=True)
        ax.plot(x, y, ls="none", marker=".", color="0.5", label="other top settings")
    ax.set_xscale("log")
    log_axis(ax, "x")
    if any(s.get("rel_error") for s in summary):
        log_axis(ax, "y")
    failed = [s for s in summary if "llc_hat" not in s]
    for s in failed:  # no estimate: marked on the top edge with its failure
        ax.annotate(
            f"{'baseline' if s['baseline'] else s['setting']}: {s['failure'] or 'failed'}",
            (s["d"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -12),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="tab:red",
        )
    ax.axhline(0.05, color="0.6", lw=0.8, ls="--", label="5 %")
    ax.set_xlabel("holdout member's d (parameters)")
    ax.set_ylabel("|λ̂ − λ_ref| / λ_ref (mean over seeds)")
    ax.set_title("held-out proof: the class's settings on members the tuner never saw")
    legend(ax, fontsize=8)
    return to_png(fig)
