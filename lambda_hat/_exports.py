"""A package's public names, loaded on first use (PEP 562).

A stage package's ``__init__`` lists what other stages may use (its ``__all__``) and where each
name lives, without importing its modules: a trial's child process that imports one module of
:mod:`lambda_hat.trial` must not pay for Parsl or Optuna at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module
    (relative to the package) that defines it; a submodule that is not listed is imported by
    the usual rules (``from lambda_hat.trial import identity``)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
