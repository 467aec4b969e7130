"""The table ``lambda-hat reference`` prints: one row per reference (HMC with its gate numbers,
theory or none plainly, a failed one with its reason)."""

from __future__ import annotations

from lambda_hat.log import fmt_seconds, fmt_value, format_table
from lambda_hat.reference.stage import is_reference, usable_reason

__all__ = ["reference_table"]


def _div(ref: dict) -> str:
    """Divergent draws and their fraction of the draws (the gate's number)."""
    draws = ref["chains"] * ref["draws_per_chain"]
    return f"{ref['divergences']} ({ref['divergences'] / draws:.1%})" if draws else "n/a"


def _row(r: dict) -> list[str]:
    if not is_reference(r):  # it could not be computed: the reason instead
        why = usable_reason(r, False)
        return [r["pid"], "", "", "", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", f"FAILED: {why}"]
    if r.get("kind", "hmc") != "hmc":  # theory | none: no NUTS, nothing of HMC to show
        shown = "no reference" if r["llc_ref"] is None else f"{r['llc_ref']:.4g} (theory)"
        rest = [*["-"] * 4, fmt_value(r["llc_theory"], ".4g"), f"reference: {r['kind']}"]
        return [r["pid"], r.get("summary", ""), str(r["d"]), str(r["n"]), shown, *rest]
    return [
        r["pid"],
        r.get("summary", ""),
        str(r["d"]),
        str(r["n"]),
        f"{fmt_value(r['llc_ref'], '.4g')} ± {fmt_value(r['se_ref'], '.2g')}",
        fmt_value(r["rhat"], ".4f"),
        fmt_value(r["ess_bulk"], ".0f"),
        _div(r),
        fmt_seconds(r["seconds"]["total"]),
        fmt_value(r["llc_theory"], ".4g"),
        "ok" if r["gate"]["passed"] else "FAILED: " + "; ".join(r["gate"]["reasons"]),
    ]


def reference_table(refs: list[dict]) -> str:
    """The summary table printed by ``lambda-hat reference``."""
    header = "pid model d n λ̂_ref±se R-hat ESS div time λ_theory gate".split()
    return format_table(header, [_row(r) for r in refs])
