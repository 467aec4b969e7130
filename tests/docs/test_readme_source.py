"""README's "Your own network": the module and YAML as written load (the source called and
checked, its pid taken), and the config section names the source keys."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from lambda_hat.config.load import load_config
from lambda_hat.problem import source as source_mod

REPO = Path(__file__).resolve().parents[2]
SECTION = (REPO / "README.md").read_text().split("## Your own network\n", 1)[1]
SECTION = SECTION.split("\n## ", 1)[0]


def test_the_readme_source_example_loads_as_written(tmp_path, monkeypatch):
    pytest.importorskip("equinox")
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    yaml_text = re.search(r"```yaml\n(.*?)```", SECTION, re.S).group(1)
    (tmp_path / "my_models.py").write_text(code)
    (tmp_path / "tune.yaml").write_text(yaml_text)
    monkeypatch.setattr(source_mod, "_CACHE", {})
    try:
        cfg = load_config(tmp_path / "tune.yaml")
    finally:
        sys.modules.pop("my_models", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
    (spec,) = cfg.problems
    assert spec.source.source == "my_models:mlp" and spec.source.d == 2 * 8 + 8 + 8 + 1
    assert spec.data.n == 256 and spec.source.loss == "gaussian"
