"""Whether a validated recommendation holds up: its mean error on fresh seeds against the
reference, in units of the combined SE (plans/objective.md).

    z = ē / √(SE(ē)² + se_ref²),   SE(ē) = √(max(s², mean se_hat²) / n)

over the n successful fresh-seed runs of a configuration (signed errors e_i, sample variance
s², the runs' own SEs se_hat_i). The larger of the two variance estimates is used because with
the few seeds a validation runs (2-3) the sample variance alone is often far too small by
chance (one degree of freedom with 2 seeds), and a run's own SE misses what varies between
seeds. |z| > :data:`Z_LIMIT` is "not reliable yet": the configuration reads off the reference
by more than its noise explains, so the tuned error was luck or the runs are biased.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from lambda_hat._io import finite_float
from lambda_hat.log import fmt_value

__all__ = ["Z_LIMIT", "fix_text", "mark", "mark_line", "se_of_mean", "verdict", "z_score"]

#: |z| above which a recommendation is "not reliable yet" (two combined SEs, as lambda-hat run's
#: ``agrees`` column).
Z_LIMIT = 2.0


def se_of_mean(errors: Sequence[float], se_hats: Sequence[float | None]) -> float | None:
    """SE of the mean of ``errors`` (one per successful run): √(max(s², mean se_hat²) / n);
    None without runs, s² left out with one run and unknown SEs left out of the mean."""
    n = len(errors)
    if n == 0:
        return None
    var = statistics.variance(errors) if n > 1 else 0.0
    known = [s for s in (finite_float(x) for x in se_hats) if s is not None]
    own = statistics.fmean(s * s for s in known) if known else 0.0
    return math.sqrt(max(var, own) / n)


def z_score(mean_error: float | None, se_mean: float | None, se_ref: float | None) -> float | None:
    """ē / √(SE(ē)² + se_ref²); None without a mean or when the combined SE is 0."""
    if mean_error is None:
        return None
    combined = math.hypot(se_mean or 0.0, finite_float(se_ref) or 0.0)
    return mean_error / combined if combined > 0 else None


def fix_text(method: str, finished: int | None, steps_high: int | None, top_k: int) -> str:
    """What would make the study's recommendation hold up, naming the config keys
    (``finished``: the study's finished trials; ``steps_high``: its longest run's steps)."""
    trials = f" (the study has {finished} finished trials)" if finished else ""
    steps = f"; now up to {steps_high}" if steps_high else ""
    return (
        f"more trials: raise optuna.max_trials{trials}, so the tuner finds a configuration "
        f"that is accurate, not lucky; longer chains: raise optuna.search_space.{method}.steps "
        f"(its low and high{steps}), so each run is less biased and less noisy; more "
        f"candidates: raise optuna.validate.top_k (now {top_k}); then rerun parsl-optuna with "
        "the same config (the study resumes and is validated again)"
    )


def verdict(
    errors: Sequence[float],
    se_hats: Sequence[float | None],
    se_ref: float | None,
    tuned_error: float | None,
    fix: str,
) -> dict:
    """``{"reliable": bool, "reliability": {"z", "reason", "fix"}}`` of one validated
    configuration (``errors``: signed errors of its successful fresh-seed runs; ``tuned_error``:
    the signed error of its tuning trial). Reliable: |z| ≤ :data:`Z_LIMIT`; no successful run
    or no SE to judge a nonzero error by is not reliable."""
    n = len(errors)
    if n == 0:
        reason = "no validation run of it succeeded"
        return {"reliable": False, "reliability": {"z": None, "reason": reason, "fix": fix}}
    mean = statistics.fmean(errors)
    se_mean = se_of_mean(errors, se_hats)
    z = z_score(mean, se_mean, se_ref)
    combined = math.hypot(se_mean or 0.0, finite_float(se_ref) or 0.0)
    seen = (
        f"validated mean error {fmt_value(mean, '+.4g')} over {n} fresh seed(s), combined SE "
        f"{fmt_value(combined, '.2g')} (its runs {fmt_value(se_mean, '.2g')}, the reference "
        f"{fmt_value(finite_float(se_ref), '.2g', '0')})"
    )
    if z is None:
        ok = mean == 0
        reason = seen + ("" if ok else ": no SE to judge it by")
    else:
        ok = abs(z) <= Z_LIMIT
        reason = f"{seen}: z = {z:+.2f}" + ("" if ok else f", |z| > {Z_LIMIT:g}")
        if not ok and tuned_error is not None and abs(tuned_error) < abs(mean) / 2:
            reason += (
                f"; the tuned error {tuned_error:+.4g} did not repeat on fresh seeds (it was luck)"
            )
    return {"reliable": ok, "reliability": {"z": z, "reason": reason, "fix": "" if ok else fix}}


def mark(v: dict | None) -> str:
    """A verdict's mark for a table cell: ``reliable``, ``not reliable yet`` or ``-`` (none)."""
    if not v:
        return "-"
    return "reliable" if v.get("reliable") else "not reliable yet"


def mark_line(label: str, v: dict) -> str:
    """One line for people: ``label``'s mark, the reason and, when not reliable, the fix."""
    why = v.get("reliability") or {}
    line = f"{label}: {mark(v)}: {why.get('reason') or '-'}"
    return line if v.get("reliable") else f"{line}. Fix: {why.get('fix') or '-'}"
