"""Why a study's trials fail, in words: the text the all-fail guard stops a study with.

Pure functions over the guard's :class:`Record` list (one per finished trial). The heuristic
that matters is :func:`cutoff`: the one-parameter threshold beyond which every trial tried
failed with the dominant kind, turned into "move that bound to ...". Ties are broken toward the
usual culprit of the kind for the study's method (``culprits``, from
:func:`lambda_hat.methods.culprits`: e.g. a step size that is too large for ``diverged``).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lambda_hat._io import finite_float
from lambda_hat.trial.outcome import KINDS

__all__ = ["Record", "cutoff", "diagnosis", "param_ranges", "stability_note", "suggestion"]


class Record(NamedTuple):
    """One finished trial as the guard saw it."""

    number: int
    failure: dict | None  # None for a success; else in the one spelling (outcome.failure_of)
    path: str | None  # its metrics.json
    params: dict


def _round_sig(x: float, down: bool) -> float:
    """``x`` to one significant figure, rounded toward zero (``down``) or away from it."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** math.floor(math.log10(abs(x)))
    m = abs(x) / scale
    m = math.floor(m + 1e-9) if down else math.ceil(m - 1e-9)
    return math.copysign(float(f"{m * scale:.1g}"), x)


def _number(v: Any) -> float | None:
    return None if isinstance(v, bool) else finite_float(v)


def param_ranges(records: Sequence[Record]) -> list[str]:
    """One line per parameter: the numeric range tried, or the set of categories."""
    names: dict[str, list[Any]] = {}
    for r in records:
        for k, v in r.params.items():
            names.setdefault(k, []).append(v)
    out = []
    for name, vals in names.items():
        nums = [_number(v) for v in vals if not isinstance(v, bool)]
        if nums and all(x is not None for x in nums) and len(nums) == len(vals):
            out.append(f"{name}: {min(nums):.3g} .. {max(nums):.3g} ({len(vals)} trials)")
        else:
            cats = sorted({repr(v) for v in vals})
            out.append(f"{name}: {{{', '.join(cats)}}} ({len(vals)} trials)")
    return out


def _is(r: Record, kind: str) -> bool:
    return r.failure is not None and r.failure["kind"] == kind


def cutoff(records: Sequence[Record], kind: str, culprits: Sequence[str] = ()) -> str | None:
    """The best one-parameter explanation of ``kind``: a threshold beyond which every trial
    tried failed with that kind, as a suggestion to move that bound.

    Candidates are ranked by how many failures they explain, then by whether the parameter
    is a usual culprit of the kind when too large (``culprits``), then by how many distinct
    values were tried.
    """
    best: tuple[tuple, str] | None = None
    for name in sorted({k for r in records for k in r.params}):
        pts = [(x, _is(r, kind)) for r in records if (x := _number(r.params.get(name))) is not None]
        distinct = len({x for x, _ in pts})
        if distinct < 2:
            continue
        lo, hi = min(x for x, _ in pts), max(x for x, _ in pts)
        for upper in (True, False):
            ordered = sorted(pts, reverse=upper)  # walk inward from the extreme
            n = 0
            while n < len(ordered) and ordered[n][1]:
                n += 1
            if n < 2:
                continue
            edge = ordered[n - 1][0]
            rest = [x for x, _ in ordered[n:]]
            if rest:  # the nearest value tried that did not fail this way
                bound = _round_sig(max(rest) if upper else min(rest), down=upper)
            elif edge > 0:  # everything tried failed: step a factor 3 (or a span) beyond
                bound = _round_sig(edge / 3 if upper else edge * 3, down=upper)
            else:
                bound = edge - (hi - lo) if upper else edge + (hi - lo)
            side, bound_name = (">=", "upper") if upper else ("<=", "lower")
            scope = (
                f"{name} {side} {edge:.3g} {kind} every time ({n} of {len(pts)} trials)"
                if rest
                else f"every trial {kind} over {name} in [{lo:.3g}, {hi:.3g}]"
            )
            text = f"{scope}: move {name}'s {bound_name} bound to {bound:.3g}"
            key = (n, upper and name in culprits, distinct)
            if best is None or key > best[0]:
                best = (key, text)
    return None if best is None else best[1]


def _timeout_advice(failed: Sequence[Record]) -> str:
    fracs = [f for r in failed if (f := finite_float(r.failure.get("fraction_done"))) is not None]  # type: ignore[union-attr]
    if not fracs:
        return "raise method_budget_sec or lower the steps range"
    med = sorted(fracs)[len(fracs) // 2]
    factor = max(1.5, 1.2 / max(med, 1e-3))
    return (
        f"trials time out with a median {med:.0%} of the work done: raise "
        f"method_budget_sec about {factor:.1f}x or lower the steps range"
    )


def stability_note(records: Sequence[Record], step_limits: Mapping[str, float]) -> str | None:
    """When most failures are divergences and a step size's stability limit ε_max is known
    (``step_limits``: name -> ε_max, from the problem's curvature), that limit against the
    range tried, and what to change; else None."""
    kinds = collections.Counter(r.failure["kind"] for r in records if r.failure is not None)
    if not kinds or kinds.most_common(1)[0][0] != "diverged":
        return None
    for name, eps in step_limits.items():
        tried = [x for r in records if (x := _number(r.params.get(name))) is not None]
        if not tried or not eps > 0:
            continue
        lo = min(tried)
        text = f"{name} above {eps:.2g} diverges on this problem: the range starts at {lo:.2g}"
        if lo > eps:
            return (
                f"{text}; search {name} relative to the limit, {{low: 1.0e-3, high: 1.0, "
                "log: true, scale: stability}"
            )
        return (
            f"{text}; below the limit trials diverged too (minibatch noise, or a loss that is "
            f"not quadratic far from w*): lower {name}'s upper bound, e.g. to {eps / 10:.2g}"
        )
    return None


def suggestion(
    records: Sequence[Record],
    culprits: Mapping[str, Sequence[str]],
    step_limits: Mapping[str, float] | None = None,
) -> str:
    """A concrete next step, derived from the dominant failure kind and the parameters (and,
    for divergences, the step sizes' stability limits: :func:`stability_note`)."""
    note = stability_note(records, step_limits or {})
    if note is not None:
        return note
    failed = [r for r in records if r.failure is not None]
    if not failed:
        return "nothing to change: no trial failed"
    kinds = collections.Counter(r.failure["kind"] for r in failed)  # type: ignore[index]
    kind = kinds.most_common(1)[0][0]
    last = next(r for r in reversed(failed) if _is(r, kind))
    f = last.failure or {}
    where = f" (see {last.path})" if last.path else ""
    own = _check_fix(failed, kind)
    if own is not None:
        return own
    if KINDS[kind].told == "COMPLETE":  # a parameter failure: diverged, timeout, oom
        cut = cutoff(records, kind, culprits.get(kind, ()))
        if cut is not None:
            return cut + (", or raise method_budget_sec" if kind == "timeout" else "")
        if kind == "diverged":
            return "every region tried diverged: shrink the step-size range (eta0 / lr / step_size) by 10x"
        if kind == "timeout":
            return _timeout_advice(failed)
        return (
            "trials run out of memory: lower batch sizes / model size or give workers more memory"
        )
    if kind == "error":
        tb = f" traceback: {f['traceback_path']}" if f.get("traceback_path") else ""
        return f"fix the error {f.get('exc_type', '')}: {f.get('message', '')}{tb}{where}"
    if kind == "crashed":
        how = f.get("signal_name") or f.get("signal") or f"exit code {f.get('exit_code')}"
        return f"the trial process died ({how}); inspect its log{where}"
    return f"the {kind} failures are not caused by the parameters: check the workers/cluster{where}"


def _check_fix(failed: Sequence[Record], kind: str) -> str | None:
    """The method's own advice when every failure of ``kind`` failed the same named check and
    says how to fix it (``... Fix: ...`` in its message): e.g. VI's drift check, where no range
    of the searched parameters would help."""
    same = [r.failure for r in failed if _is(r, kind)]
    checks = {f.get("check") for f in same if f is not None}
    message = str((same[-1] or {}).get("message", "")) if same else ""
    if len(checks) != 1 or None in checks or "Fix: " not in message:
        return None
    return f"every trial failed the {checks.pop()} check; " + message.split("Fix: ", 1)[1]


def _first_line(failure: Mapping[str, Any]) -> str:
    text = str(failure.get("message", "")).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def diagnosis(
    records: Sequence[Record],
    culprits: Mapping[str, Sequence[str]],
    step_limits: Mapping[str, float] | None = None,
) -> str:
    """Human-readable summary: failure kinds with counts, the most common message, example
    metrics paths, the parameter ranges tried, and a concrete suggestion."""
    failed = [r for r in records if r.failure is not None]
    n_success = len(records) - len(failed)
    lines = [f"{len(records)} trials recorded: {n_success} succeeded, {len(failed)} failed"]
    if failed:
        kinds = collections.Counter(r.failure["kind"] for r in failed)  # type: ignore[index]
        lines.append("failure kinds: " + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()))
        msg, n = collections.Counter(_first_line(r.failure) for r in failed).most_common(1)[0]  # type: ignore[arg-type]
        lines.append(f"most common message ({n}x): {msg}")
        paths = [r.path for r in failed if r.path][:3]
        if paths:
            lines.append("example metrics: " + ", ".join(paths))
    ranges = param_ranges(records)
    if ranges:
        lines.append("parameter ranges tried:")
        lines.extend(f"  {line}" for line in ranges)
    lines.append("suggestion: " + suggestion(records, culprits, step_limits))
    return "\n".join(lines)
