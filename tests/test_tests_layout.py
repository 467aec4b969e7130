"""The test tree mirrors the stages: a folder per ``lambda_hat`` package (plus ``integration/``,
``docs/`` and ``helpers/``), module basenames unique across folders (pytest imports each test
module by its basename), and no test module imports another one (which works or not depending
on the order pytest collected them in): shared code lives in ``helpers/``."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import lambda_hat

TESTS = Path(__file__).parent
EXTRA_FOLDERS = {"integration", "docs", "helpers"}


def _test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def test_every_folder_is_a_stage_or_one_of_the_extra_ones():
    stages = {p.name for p in Path(lambda_hat.__file__).parent.iterdir() if p.is_dir()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders - EXTRA_FOLDERS <= stages, sorted(folders - EXTRA_FOLDERS - stages)


def test_module_basenames_are_unique():
    names = Counter(p.name for p in _test_modules())
    assert [n for n, count in names.items() if count > 1] == []


def test_no_test_module_imports_another():
    found = []
    for path in [*_test_modules(), *(TESTS / "helpers").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0].startswith("test_"):
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno} imports {name}")
    assert found == []
