"""Problems from your code (``source:``): every bad input is a ConfigError before any work, the
pid follows the arrays, a stored problem loads without calling the source, and a regular model
from a source has the HMC reference d/2.

The sources are ``tests/helpers/user_models.py``, copied next to each test's config so they are
imported by module name from the config's folder, as a user's are.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lambda_hat import cli
from lambda_hat.config.load import load_tuning
from lambda_hat.problem import source as source_mod
from lambda_hat.problem import source_store
from lambda_hat.problem.build import build_problem, load_problem, problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.reference.nuts import ensure_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


def _resolve(folder: Path, **entry):
    return resolve_problem(entry, "problems[0]", folder=folder)


BAD = [
    ({"source": "nowhere_module:problem"}, "cannot import module 'nowhere_module'"),
    ({"source": "user_models"}, "got 'user_models'"),
    ({"source": "user_models:absent"}, "has no attribute 'absent'"),
    ({"source": "user_models:NOT_CALLABLE"}, "is a int, not callable"),
    ({"source": "user_models:raises"}, "raised RuntimeError: no checkpoint found"),
    ({"source": "user_models:missing_data"}, "has no data"),
    ({"source": "user_models:wrong_n"}, "data X has shape (200, 3), y (199, 1)"),
    ({"source": "user_models:wrong_output"}, "loss returned shape (2, 1) for 2 rows"),
    ({"source": "user_models:cannot_apply"}, "cannot be applied to the parameters and the data"),
    ({"source": "user_models:nan_params"}, "L_n at the given parameters is nan"),
    ({"source": "user_models:untrained"}, "not at a local minimum"),
    ({"source": "user_models:linear", "model": "tiny"}, "takes no presets"),
]


@pytest.mark.parametrize(("entry", "says"), BAD, ids=[b[0]["source"] for b in BAD])
def test_bad_input_is_a_config_error_naming_the_source(folder, entry, says):
    with pytest.raises(ConfigError) as info:
        _resolve(folder, **entry)
    where = "problems[0].model" if "model" in entry else "problems[0].source"
    assert info.value.where == where and says in info.value.problem, info.value
    assert info.value.fix


def test_the_gradient_check_says_how_far_and_how_to_proceed(folder):
    with pytest.raises(ConfigError) as info:
        _resolve(folder, source="user_models:untrained")
    err = info.value
    assert "posterior standard deviations" in err.problem and "biasing λ̂" in err.problem
    assert "allow_nonminimum: true" in err.fix and "train longer" in err.fix
    spec = _resolve(folder, source="user_models:untrained", allow_nonminimum=True)
    assert spec.source.d == 4


def test_a_bad_source_exits_2_with_nothing_written(folder):
    config = folder / "run.yaml"
    config.write_text(
        "problems: [{source: 'user_models:linear'}, {source: 'user_models:untrained'}]\n"
        "methods: {sgld: [{fixed: {steps: 100}}]}\nseeds: [0]\n"
        "paths: {artifacts: artifacts, results: results}\n"
    )
    assert cli.main(["run", "--config", str(config), "--local"]) == 2
    assert not (folder / "artifacts").exists() and not (folder / "results").exists()


def test_the_pid_changes_with_the_data_and_not_otherwise(folder, tmp_path_factory):
    data = folder / "xy.npy"
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    np.save(data, np.stack([x, 2 * x + 0.1 * rng.normal(size=50)], axis=1))
    entry = {"source": "user_models:from_file", "args": {"path": str(data)}}
    first = problem_id(_resolve(folder, **entry))
    source_mod._CACHE.clear()  # a new process: the source is called again
    assert problem_id(_resolve(folder, **entry)) == first
    elsewhere = tmp_path_factory.mktemp("copy")  # the config moved: folder is not hashed
    shutil.copy(folder / "user_models.py", elsewhere / "user_models.py")
    assert problem_id(_resolve(elsewhere, **entry)) == first
    assert problem_id(_resolve(folder, **entry, seed=1)) != first
    source_mod._CACHE.clear()
    arr = np.load(data)
    arr[0, 1] += 1.0  # one changed label: a new problem
    np.save(data, arr)
    assert problem_id(_resolve(folder, **entry)) != first


def test_a_stored_source_problem_loads_without_calling_the_source(folder, monkeypatch):
    spec = _resolve(folder, source="user_models:eqx_mlp", args={"steps": 500})
    built = build_problem(spec, folder / "artifacts")
    assert (built.path / "source.pkl").is_file() and built.d == 13 and built.n == 128

    def no_call(*a, **k):
        raise AssertionError("the source was called")

    monkeypatch.setattr(source_mod, "call_source", no_call)
    monkeypatch.setattr(source_store, "call_source", no_call)
    sys.modules.pop("user_models", None)
    loaded = load_problem(folder / "artifacts", problem_id(spec))
    w = loaded.w_star
    assert float(loaded.loss(w, loaded.X, loaded.y)) == pytest.approx(
        float(built.loss(built.w_star, built.X, built.y)), rel=1e-12
    )
    w32 = np.asarray(w, np.float32)  # a float32 run computes in float32
    assert loaded.loss(w32, np.float32(loaded.X), np.float32(loaded.y)).dtype == np.float32
    assert loaded.summary() == "source user_models:eqx_mlp d=13 (gaussian)"


@pytest.mark.slow  # NUTS 4 × 1500 draws on d = 4: about 20 s
def test_a_linear_model_from_a_source_has_the_reference_d_over_2(folder):
    spec = _resolve(folder, source="user_models:linear", args={"n": 400, "noise": 0.5})
    problem = build_problem(spec, folder / "artifacts")
    cfg = ReferenceConfig(chains=4, draws=1500, warmup=300, chunk=500, gamma=1.0)
    ref = ensure_reference(problem, cfg, force=True)
    assert ref["gate"]["passed"], ref["gate"]
    assert abs(ref["llc_ref"] - 2.0) < 3 * ref["se_ref"], (ref["llc_ref"], ref["se_ref"])


def test_class_members_from_a_source_sweep_its_args(folder):
    config = folder / "tune.yaml"
    config.write_text(
        "problems: []\nmethods: [sgld]\nclasses:\n  - name: lin\n    train:\n"
        "      - {source: 'user_models:linear', sweep: {args.n: [100, 200]}}\n"
        "    holdout:\n      - {source: 'user_models:linear', args: {n: 300}, reference: none}\n"
    )
    members = load_tuning(config).classes["lin"]
    assert [s.data.n for s in members.train] == [100, 200] and members.holdout[0].data.n == 300
    assert len({problem_id(s) for s in [*members.train, *members.holdout]}) == 3
