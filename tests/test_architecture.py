"""The package's shape (plans/architecture.md): stage packages in layers, no import cycle, no
import upward, small modules, functions and classes.

Imports are read from the source, every one counted: inside functions and under
``TYPE_CHECKING`` too, since a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lambda_hat

ROOT = Path(lambda_hat.__file__).parent

#: Lowest first: a package may import its own modules and those of the layers below it.
LAYERS = [
    {"_io", "_exports", "hashing", "log", "layout", "precision", "schema"},
    {"llc"},
    {"samplers"},
    {"problem"},
    {"parallel"},
    {"methods"},
    {"trial"},
    {"reference"},
    {"config"},
    {"results"},
    {"study"},
    {"runs"},
    {"report"},
    {"cli", "dashboard", "notebook", "__init__"},
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 400, 60, 200


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    """The stage a module belongs to: ``lambda_hat.study.driver`` -> ``study``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str) -> set[tuple[str, int]]:
    """``(imported lambda_hat module, line)`` for every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add((name, node.lineno))
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_every_module_belongs_to_a_layer():
    assert {_unit(m) for m in MODULES} - set(RANK) == set()


def test_no_import_cycle_counting_lazy_and_type_checking_imports():
    assert _cycles() == []


def test_nothing_imports_upward():
    upward = [
        f"{m}:{line} imports {t} ({_unit(m)} is below {_unit(t)})"
        for m, edges in GRAPH.items()
        for t, line in edges
        if RANK[_unit(t)] > RANK[_unit(m)]
    ]
    assert upward == []


def test_the_walk_sees_lazy_imports():
    """The check above can fail: a function-level import is an edge like any other."""
    lazy = {t for t, _ in GRAPH["lambda_hat.cli"]}
    assert "lambda_hat.runs" in {".".join(t.split(".")[:2]) for t in lazy}


def _sizes():
    for module, path in sorted(MODULES.items()):
        text = path.read_text()
        yield module, "module", len(text.splitlines()), MAX_MODULE_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
                yield f"{module}.{node.name}", kind, node.end_lineno - node.lineno + 1, limit


@pytest.mark.parametrize("kind", ["module", "function", "class"])
def test_modules_functions_and_classes_stay_small(kind):
    over = [f"{name}: {n} lines" for name, k, n, limit in _sizes() if k == kind and n > limit]
    assert over == []


PACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != "lambda_hat")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_a_package_resolves(package):
    pkg = importlib.import_module(package)
    assert pkg.__doc__ and "TODO" not in pkg.__doc__
    assert [name for name in pkg.__all__ if not hasattr(pkg, name)] == []


def test_other_stages_use_only_a_package_s_public_names():
    """``from lambda_hat.<stage>.<module> import name`` across stages names something the
    stage's ``__init__`` lists; importing a whole module is fine."""
    private = []
    for module in sorted(MODULES):
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module in MODULES):
                continue
            if MODULES[node.module].name == "__init__.py":  # the package's own surface
                continue
            package = node.module.rpartition(".")[0]
            if package == "lambda_hat" or _unit(node.module) == _unit(module):
                continue
            public = importlib.import_module(package).__all__
            private += [
                f"{module}:{node.lineno} {node.module}.{a.name}"
                for a in node.names
                if a.name not in public and f"{node.module}.{a.name}" not in MODULES
            ]
    assert private == []


def test_a_trial_process_starts_without_parsl_optuna_or_pandas():
    """The supervised child imports what it runs, not the driver's machinery (start-up is paid
    per fresh trial process): the stage packages load their public names lazily."""
    code = (
        "import sys, lambda_hat.trial.process.oneshot, lambda_hat.trial.process.warm; "
        "print(sorted(m for m in ('parsl', 'optuna', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
