"""``lambda-hat plots``: the PNGs are written, valid and complete, the numbers drawn are the
stored ones (running λ̂ ends at ref.json's λ̂_ref, best-so-far is the Parquet's cummin), and
missing or broken inputs are skipped with a log line, never a crash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.report import CONFIG, _fake_reference, _png_size

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.cli import main
from lambda_hat.config.load import load_tuning
from lambda_hat.layout import problem_dir
from lambda_hat.problem.build import build_problem, problem_id
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.report import figures
from lambda_hat.results.parquet import write_parquet


def _row(pid, method, number, llc_ref, se_ref, llc_hat=None, kind=None, state="COMPLETE"):
    ok = kind is None and state == "COMPLETE"
    return {
        "pid": pid,
        "method": method,
        "trial_id": f"r_{pid}_{method}_{number}",
        "trial_number": number,
        "state": state,
        "status": "ok" if ok else "failed",
        "hyperparams": {"eta0": 1e-4 * (number + 1)},
        "llc_hat": llc_hat,
        "se_hat": 0.05 if llc_hat is not None else None,
        "llc_ref": llc_ref,
        "se_ref": se_ref,
        "objective": abs(llc_hat - llc_ref) if ok else None,
        "error": llc_hat - llc_ref if llc_hat is not None else None,
        "failure_kind": kind,
        "failure_message": f"{kind} on purpose" if kind else None,
    }


# λ̂ of the sgld trials on the referenced problem, as offsets from λ̂_ref (None: failed)
SGLD = [0.6, -0.4, 0.5, "diverged", 0.1, -0.3, "timeout", 0.05, "error", -0.2, 40.0]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A config of two problems, a reference for the first only, and a Parquet table."""
    root = tmp_path_factory.mktemp("campaign")
    cfg = root / "c.yaml"
    cfg.write_text(CONFIG.format(root=root))
    exp = load_tuning(cfg)
    ref = _fake_reference(exp, exp.problems[0])
    pid_a, pid_b = ref["pid"], problem_id(exp.problems[1])
    lr, se = ref["llc_ref"], ref["se_ref"]
    rows = [
        _row(pid_a, "sgld", i, lr, se, None, x)
        if isinstance(x, str)
        else _row(pid_a, "sgld", i, lr, se, lr + x)
        for i, x in enumerate(SGLD)
    ]
    rows.append(_row(pid_a, "sgld", len(SGLD), lr, se, state="RUNNING", kind="interrupted"))
    rows += [
        _row(pid_a, "vi", i, lr, se, None, k, "FAIL" if k in ("crashed", "pruned") else "COMPLETE")
        for i, k in enumerate(["crashed", "oom", "pruned"])
    ]
    rows += [_row(pid_b, "sgld", i, 1.4, 0.05, 1.4 + d) for i, d in enumerate([0.3, -0.02, 0.1])]
    rows.append(_row("p_notinconfig", "sgld", 0, 1.0, 0.1, 1.0))
    write_parquet(rows, root / "results" / layout.TRIALS_TABLE)
    return {"cfg": cfg, "root": root, "ref": ref, "pid_a": pid_a, "pid_b": pid_b}


def test_plots_cli_writes_every_figure_as_a_valid_png(campaign, capsys):
    out = campaign["root"] / "plots"
    assert main(["plots", "--config", str(campaign["cfg"]), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    a, b = campaign["pid_a"], campaign["pid_b"]
    expected = {
        f"reference_{a}.png",
        f"study_{a}_sgld.png",
        f"study_{a}_vi.png",
        f"study_{b}_sgld.png",
        "summary.png",
    }
    listed = {line.rsplit("/", 1)[-1] for line in stdout.split()}
    assert listed == expected
    assert {p.name for p in out.iterdir()} == expected  # no temp files left behind
    for name in expected:
        w, h = _png_size(out / name)
        assert 600 <= w <= 3000 and 300 <= h <= 3000, (name, w, h)
        assert (out / name).stat().st_size > 20_000, name  # something was drawn
    assert _png_size(out / f"reference_{a}.png") == (12 * figures.DPI, round(4.6 * figures.DPI))
    assert f"problem {b}: no reference" in stderr and "lambda-hat reference" in stderr
    assert "p_notinconfig" in stderr  # rows of other problems are ignored, loudly


def _check_running_llc(artifacts, pid: str) -> None:
    """The running λ̂ drawn ends at ref.json's λ̂_ref and λ̂ per chain, to 1e-9."""
    stored = read_json(problem_dir(artifacts, pid) / "ref.json")
    with np.load(problem_dir(artifacts, pid) / "ref_trace.npz") as z:
        loss = z["loss"]
    per_chain, pooled = figures.running_llc(loss, stored["loss_star"], stored["nbeta"])
    assert per_chain.shape == loss.shape and pooled.shape == loss.shape[1:]
    assert pooled[-1] == pytest.approx(stored["llc_ref"], abs=1e-9, rel=1e-9)
    np.testing.assert_allclose(per_chain[:, -1], stored["llc_per_chain"], rtol=1e-9, atol=1e-9)
    # the first point is one draw per chain: nβ·(L_n(w_1) − L_n(w*))
    np.testing.assert_allclose(
        per_chain[:, 0], stored["nbeta"] * (loss[:, 0] - stored["loss_star"]), rtol=1e-12
    )


def test_running_llc_ends_at_the_stored_reference(campaign):
    _check_running_llc(campaign["root"] / "artifacts", campaign["pid_a"])
    assert campaign["ref"]["llc_ref"] == pytest.approx(1.5, abs=4 * campaign["ref"]["se_ref"])


@pytest.mark.slow
def test_plots_of_a_real_hmc_reference(tmp_path, capsys):
    """A real (short) NUTS reference through ``ensure_reference``: its files plot, and the
    running λ̂ ends at its λ̂_ref (~25 s on the shared 2 cores, 16 s of it NUTS compilation)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path))
    exp = load_tuning(cfg)
    problem = build_problem(exp.problems[0], exp.config.paths.artifacts)
    ref = ensure_reference(problem, exp.config.reference)
    assert main(["plots", "--config", str(cfg)]) == 0
    stdout, stderr = capsys.readouterr()
    png = tmp_path / "results" / "plots" / f"reference_{problem.pid}.png"
    assert stdout.split() == [str(png)]
    assert _png_size(png) == (12 * figures.DPI, round(4.6 * figures.DPI))
    assert "no Parquet yet" in stderr
    _check_running_llc(exp.config.paths.artifacts, problem.pid)
    assert ref["chains"] == 2 and ref["draws_per_chain"] == 200


def test_best_so_far_and_best_trials_follow_the_parquet(campaign):
    df = pd.read_parquet(campaign["root"] / "results" / layout.TRIALS_TABLE)
    a = campaign["pid_a"]
    numbers, best = figures.best_so_far(df[(df.pid == a) & (df.method == "sgld")])
    ok = [(i, abs(x)) for i, x in enumerate(SGLD) if not isinstance(x, str)]
    assert numbers.tolist() == [i for i, _ in ok]  # failed and running trials are not scored
    np.testing.assert_allclose(best, np.minimum.accumulate([e for _, e in ok]), atol=1e-12)
    np.testing.assert_allclose(best, [0.6, 0.4, 0.4, 0.1, 0.1, 0.05, 0.05, 0.05], atol=1e-12)
    top = figures.best_trials(df).set_index(["pid", "method"])
    assert int(top.loc[(a, "sgld"), "trial_number"]) == 7
    assert int(top.loc[(campaign["pid_b"], "sgld"), "trial_number"]) == 1
    assert (a, "vi") not in top.index  # every vi trial failed
    # the λ̂ axis covers every sane trial and the reference band; the absurd one is marked instead
    ok = df[(df.pid == a) & (df.status == "ok")].llc_hat.to_numpy()
    lr = campaign["ref"]["llc_ref"]
    lo, hi = figures.axis_limits(ok, [lr], robust=True)
    assert lo < lr - 0.4 and lr + 0.6 < hi < lr + 40


def test_missing_and_broken_inputs_are_skipped_not_fatal(campaign, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path))
    assert main(["plots", "--config", str(cfg)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert "no Parquet yet" in stderr and "run parsl-optuna first" in stderr
    assert "no plots written" in stderr
    # a trace that does not match its ref.json, a reference without numbers, a torn Parquet
    a, b = campaign["pid_a"], campaign["pid_b"]
    stored = read_json(problem_dir(campaign["root"] / "artifacts", a) / "ref.json")
    atomic_write_json(problem_dir(tmp_path / "artifacts", a) / "ref.json", stored)
    np.savez(problem_dir(tmp_path / "artifacts", a) / "ref_trace.npz", loss=np.zeros((2, 7)))
    atomic_write_json(
        problem_dir(tmp_path / "artifacts", b) / "ref.json", {**stored, "pid": b, "llc_ref": None}
    )
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / layout.TRIALS_TABLE).write_bytes(b"PAR1 torn")
    assert main(["plots", "--config", str(cfg)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert "has shape (2, 7)" in stderr and f"cannot read {tmp_path / 'results'}" in stderr
    assert f"problem {b}:" in stderr and "not a usable reference (no llc_ref)" in stderr
    # same shape, other numbers: the trace is not this reference's
    loss = np.full((stored["chains"], stored["draws_per_chain"]), stored["loss_star"] + 0.1)
    np.savez(problem_dir(tmp_path / "artifacts", a) / "ref_trace.npz", loss=loss)
    assert main(["plots", "--config", str(cfg)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and "does not belong to this ref.json" in stderr
    assert not (tmp_path / "results" / "plots").exists()


def test_plots_take_a_run_yaml_or_no_config(campaign, tmp_path, capsys):
    """``--config`` takes either YAML kind; without one, every stored problem is plotted from
    the results folder (the report's rule), the Parquet's other problems included."""
    root = campaign["root"]
    runs = tmp_path / "runs.yaml"
    tuning = CONFIG.format(root=root).replace("methods: [sgld, vi]\n", "")
    runs.write_text(tuning + "methods: {sgld: [{}], vi: [{fixed: {M: 4}}]}\nseeds: [0]\n")
    out = tmp_path / "from_runs"
    assert main(["plots", "--config", str(runs), "--out", str(out)]) == 0
    a, b = campaign["pid_a"], campaign["pid_b"]
    names = {f"reference_{a}.png", f"study_{a}_sgld.png", f"study_{a}_vi.png"}
    names |= {f"study_{b}_sgld.png", "summary.png"}
    assert {p.name for p in out.iterdir()} == names
    out = tmp_path / "no_config"
    assert main(["plots", "--results", str(root / "results"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == names | {"study_p_notinconfig_sgld.png"}
    capsys.readouterr()
