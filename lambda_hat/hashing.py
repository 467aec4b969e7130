"""The one content-hash function.

An identifier is ``prefix + sha256(canonical JSON)[:12]``. Canonical JSON sorts keys, uses no
whitespace and stores numbers as Python's ``json`` writes them, so the same resolved object
gives the same id in every process, on every machine and for every key order, and any changed
value gives a different id. Callers hash the *fully resolved* object (defaults filled in, types
coerced by the config schema), so ``1`` and ``1.0`` never both reach it for the same field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lambda_hat._io import to_jsonable


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free strict JSON of ``obj``."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(obj: Any, prefix: str = "", length: int = 12) -> str:
    """``prefix`` + the first ``length`` hex digits of sha256(canonical JSON of ``obj``)."""
    digest = hashlib.sha256(canonical_json(obj).encode()).hexdigest()
    return prefix + digest[:length]
