"""The campaign the plots and report tests draw: a tuning config of two tiny problems, and a
reference's files written from exact draws instead of NUTS.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from lambda_hat._io import atomic_write_json, atomic_write_npz
from lambda_hat.layout import problem_dir
from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.problem.build import problem_id
from lambda_hat.reference.store import REF_SCHEMA, evaluate_gate, reference_settings
from lambda_hat.schema import as_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = """\
problems:
  - {{model: linear, data: small, teacher: _null, seed: 0}}
  - {{model: linear, data: small, teacher: _null, seed: 1}}
methods: [sgld, vi]
reference: {{chains: 2, draws: 200, warmup: 100, rhat_max: 1.1, ess_min: 50}}
paths: {{artifacts: {root}/artifacts, results: {root}/results}}
"""


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def _fake_reference(exp, spec, chains: int = 2, draws: int = 300) -> dict:
    """ref.json + ref_trace.npz in the layout ``compute_reference`` writes, from exact draws of
    nβ·(L_n − L_n(w*)) ~ ½χ²₃ (a regular model with d = 3, λ = 1.5) instead of NUTS: the plots
    see a real reference's files without the ~20 s of NUTS compilation (the slow test has that).
    """
    cfg, n = exp.config.reference, spec.data.n
    nbeta, loss_star = n / math.log(n), 0.49
    loss = loss_star + 0.5 * np.random.default_rng(0).chisquare(3, (chains, draws)) / nbeta
    est = estimate_llc(loss, loss_star, nbeta)
    pid = problem_id(spec)
    ref = {
        "schema": REF_SCHEMA,
        "pid": pid,
        "llc_ref": est["llc_hat"],
        "se_ref": est["se_hat"],
        "llc_per_chain": est["llc_per_chain"],
        "rhat": est["rhat"],
        "ess_bulk": est["ess_bulk"],
        "ess_tail": est["ess_tail"],
        "divergences": 0,
        "chains": chains,
        "draws_per_chain": draws,
        "stopped_early": False,
        "beta": 1 / math.log(n),
        "gamma": cfg.gamma,
        "nbeta": nbeta,
        "n": n,
        "d": 3,
        "loss_star": loss_star,
        "theory": {"lambda": 1.5, "source": "regular model: d/2"},
        "llc_theory": 1.5,
        "settings": reference_settings(cfg),
        "spec": as_dict(spec),
    }
    ref["gate"] = evaluate_gate(ref, cfg)
    path = problem_dir(exp.config.paths.artifacts, pid)
    atomic_write_npz(path / "ref_trace.npz", loss=loss, acceptance_rate=np.ones_like(loss))
    atomic_write_json(path / "ref.json", ref)
    return ref
