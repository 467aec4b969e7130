"""The figure of one HMC reference for ``lambda-hat plots``: its loss traces and running λ̂
per chain against λ̂_ref (:func:`plot_reference`; numbers from
:func:`lambda_hat.report.figures.running_llc`)."""

from __future__ import annotations

import math

import numpy as np

from lambda_hat.log import fmt_value
from lambda_hat.report.axes import log_axis
from lambda_hat.report.figures import (
    LAMBDA_HAT,
    LAMBDA_REF,
    axis_limits,
    new_figure,
    reference_band,
    running_llc,
    theory_line,
    to_png,
)

MAX_POINTS = 4000
"""Points per drawn line; longer traces are thinned by a stride after the running means are
computed on every draw (so thinning changes the picture's density, never its numbers)."""


def _thin(n: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / MAX_POINTS)))


def model_label(ref: dict, problem_info: dict | None) -> str:
    """``'mlp 3-4-1 tanh'`` from problem.json (or the spec stored in ref.json)."""
    model = (ref.get("spec") or {}).get("model") or {}
    widths = (problem_info or {}).get("layer_widths")
    arch = " " + "-".join(str(w) for w in widths) if widths else ""
    act = f" {model.get('activation')}" if model.get("family") == "mlp" else ""
    return f"{model.get('family', '?')}{arch}{act}"


def plot_reference(
    ref: dict, loss: np.ndarray, gate: dict, problem_info: dict | None = None
) -> bytes:
    """PNG of one HMC reference: L_n traces and running λ̂ per chain (see the module doc)."""
    nbeta, loss_star = float(ref["nbeta"]), float(ref["loss_star"])
    per_chain, pooled = running_llc(loss, loss_star, nbeta)
    C, T = per_chain.shape
    draws = np.arange(1, T + 1)
    s = _thin(T)
    fig, axes = new_figure(12, 4.6, 1, 2)
    ax_trace, ax_run = axes[0]

    for c in range(C):
        ax_trace.plot(draws[s], np.asarray(loss)[c, s], lw=0.6, alpha=0.75, color=f"C{c % 10}")
    ax_trace.axhline(loss_star, color="black", ls="--", lw=1.2, label="$L_n(w^*)$")
    ax_trace.set_xlabel("draw (after warm-up)")
    ax_trace.set_ylabel("$L_n(w)$")
    ax_trace.set_title("loss trace per chain", fontsize=10)
    right = ax_trace.secondary_yaxis(
        "right", functions=(lambda L: nbeta * (L - loss_star), lambda v: loss_star + v / nbeta)
    )
    right.set_ylabel(r"$n\beta\,(L_n(w) - L_n(w^*))$")

    for c in range(C):
        label = f"chain {c}" if C <= 8 else ("chains" if c == 0 else None)
        ax_run.plot(draws[s], per_chain[c, s], lw=0.9, alpha=0.8, color=f"C{c % 10}", label=label)
    ax_run.plot(draws[s], pooled[s], color="black", lw=1.8, label="all chains pooled")
    reference_band(ax_run, ref.get("llc_ref"), ref.get("se_ref"))
    theory_line(ax_run, ref)
    keep = [ref["llc_ref"]] if ref.get("llc_ref") is not None else []
    if ref.get("llc_theory") is not None:
        keep.append(ref["llc_theory"])
    if ref.get("se_ref") is not None and math.isfinite(ref["se_ref"]):
        keep += [ref["llc_ref"] - 2 * ref["se_ref"], ref["llc_ref"] + 2 * ref["se_ref"]]
    settled = per_chain[:, max(1, T // 20) :]  # the first 5% of a running mean is noise
    ax_run.set_ylim(*axis_limits(settled.ravel(), keep))
    log_axis(ax_run, "x")
    ax_run.set_xlabel("draws used (log scale)")
    ax_run.set_ylabel(f"running {LAMBDA_HAT}")
    ax_run.set_title(f"running {LAMBDA_HAT} per chain", fontsize=10)
    handles = ax_run.get_legend_handles_labels()[0] + ax_trace.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8)

    passed = gate.get("passed")
    status = "gate passed" if passed else "gate FAILED: " + "; ".join(gate.get("reasons") or [])
    extra = ", stopped early (budget)" if ref.get("stopped_early") else ""
    fig.suptitle(
        f"HMC reference {ref['pid']}  ·  {model_label(ref, problem_info)}, d={ref.get('d')}, "
        f"n={ref.get('n')}, {C} chains × {T} draws{extra}\n"
        f"{LAMBDA_REF} = {_number(ref, 'llc_ref', '.4g')} ± {_number(ref, 'se_ref', '.2g')}"
        f"   R-hat {_number(ref, 'rhat', '.4f')}   bulk ESS {_number(ref, 'ess_bulk', '.0f')}"
        f"   divergences {ref.get('divergences', 'n/a')}   {status}",
        fontsize=10,
        color="black" if passed else "tab:red",
    )
    return to_png(fig)


def _number(ref: dict, key: str, spec: str) -> str:
    return fmt_value(ref.get(key), spec, finite=True)
