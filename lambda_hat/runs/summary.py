"""The summary ``lambda-hat run`` prints: per (problem, method, set), the mean λ̂ over the
seeds, its spread, how it agrees with its reference (HMC; the theoretical λ for
``reference: theory``, z then from the runs' own SE; ``no reference`` for ``reference: none``,
unscored) and with theory where known, and, for a
set taken from a validated study, whether its recommendation was reliable (the study's own
verdict on fresh seeds, :mod:`lambda_hat.study.reliability`)."""

from __future__ import annotations

import math
import statistics

from lambda_hat.log import fmt_value, format_table
from lambda_hat.results.tables import study_label
from lambda_hat.study.reliability import mark, mark_line

__all__ = ["summarize", "summary_table"]


def summarize(rows: list[dict], verdicts: dict[tuple, dict | None] | None = None) -> list[dict]:
    """Per (problem, method, set), in table order: successful/all runs, the mean λ̂ over the
    seeds and its spread (sd), the reference, ``d_ref`` = mean − λ_ref and ``z`` = d_ref over
    √(se_ref² + se_mean²) (se_mean: sd/√k over k ≥ 2 seeds, else the run's own SE), ``agrees``
    (|z| ≤ 2), ``d_theory`` = mean − λ_theory where theory gives λ, and ``reliable`` /
    ``reliability``: the validation verdict of the study trial the set came from
    (``verdicts[(pid, method, set)]``; None: a fixed set, or a trial never validated)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pid"], r["method"], r["set"]), []).append(r)
    out = []
    for (pid, method, index), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        vals = [r["llc_hat"] for r in ok]
        first = group[0]
        mean = statistics.fmean(vals) if vals else None
        sd = statistics.stdev(vals) if len(vals) > 1 else None
        se_mean = sd / math.sqrt(len(vals)) if sd is not None else (ok[0]["se_hat"] if ok else None)
        ref, se_ref, theory = first["llc_ref"], first["se_ref"], first["llc_theory"]
        d_ref = None if mean is None or ref is None else mean - ref
        se = math.sqrt((se_ref or 0.0) ** 2 + (se_mean or 0.0) ** 2)
        z = None if d_ref is None or se == 0 else d_ref / se
        source = first["source_study"] and f"{first['source_pick']} #{first['source_trial']}"
        if first.get("from_class"):
            source = f"class {first['from_class']} {first['source_pick']} #{first['source_trial']}"
        out.append(
            {
                "label": study_label(first["label"], method) if first["label"] else pid,
                "pid": pid,
                "method": method,
                "set": index,
                "source": source or "fixed",
                "n_ok": len(ok),
                "n": len(group),
                "mean": mean,
                "sd": sd,
                "ref_kind": first.get("ref_kind") or "hmc",
                "llc_ref": ref,
                "se_ref": se_ref,
                "d_ref": d_ref,
                "z": z,
                "agrees": None if z is None else abs(z) <= 2,
                "llc_theory": theory,
                "d_theory": None if mean is None or theory is None else mean - theory,
                **_verdict_of((verdicts or {}).get((pid, method, index))),
            }
        )
    return out


def _reference(s: dict) -> str:
    """The reference column: λ_ref ± se (HMC), ``λ (theory)``, or ``no reference``."""
    if s["llc_ref"] is None:
        return "no reference"
    if s["ref_kind"] == "theory":
        return f"{fmt_value(s['llc_ref'], '.4g')} (theory)"
    return f"{fmt_value(s['llc_ref'], '.4g', '-')} ± {fmt_value(s['se_ref'], '.2g', '-')}"


def _verdict_of(v: dict | None) -> dict:
    if not v:
        return {"reliable": None, "reliability": None}
    return {"reliable": v.get("reliable"), "reliability": v.get("reliability")}


def summary_table(rows: list[dict], verdicts: dict[tuple, dict | None] | None = None) -> str:
    """The printed summary (:func:`summarize`), one line per (problem, method, set); the
    ``tuned`` column is the source trial's validation mark, and every set whose study
    recommendation is not reliable yet gets a line below with the reason and the fix."""
    header = "study set source ok mean_λ̂ sd λ_ref±se Δref z agrees λ_theory Δtheory tuned"
    header = header.split()
    lines, notes = [], []
    for s in summarize(rows, verdicts):
        if s["reliable"] is False:
            notes.append(mark_line(f"{s['label']} set {s['set']} ({s['source']})", s))
        lines.append(
            [
                s["label"],
                str(s["set"]),
                s["source"],
                f"{s['n_ok']}/{s['n']}",
                fmt_value(s["mean"], ".4g", "-"),
                fmt_value(s["sd"], ".2g", "-"),
                _reference(s),
                fmt_value(s["d_ref"], "+.3g", "-"),
                fmt_value(s["z"], "+.2f", "-"),
                "-" if s["agrees"] is None else ("yes" if s["agrees"] else "NO"),
                fmt_value(s["llc_theory"], ".4g", "-"),
                fmt_value(s["d_theory"], "+.3g", "-"),
                mark(s if s["reliable"] is not None else None),
            ]
        )
    return "\n".join([format_table(header, lines), *notes])
