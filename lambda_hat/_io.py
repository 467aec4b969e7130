"""The one atomic writer, and readers that never trust a half-written file.

Every artifact lambda_hat writes goes through :func:`atomic_write_bytes`: the bytes land in a
temporary file in the destination directory, are flushed and fsynced, then ``os.replace``\\ d
over the target. Readers therefore see either the old file or the new one, never a torn one,
and concurrent writers of the same path cannot interleave lines. The file's mode is 0666 less
the process umask, as for any ``open()`` (``tempfile.mkstemp`` would make it 0600: colleagues
sharing a cluster project directory could not read the results).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON view of ``obj``: numpy scalars/arrays become Python values, non-finite floats
    become ``None`` (JSON has no ``Infinity``/``NaN`` tokens), tuples become lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, str):
        arr = np.asarray(obj)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r}")


def finite_float(x: Any) -> float | None:
    """``x`` as a float when it is a finite real number, else ``None`` (bools and strings are
    not numbers here: a JSON ``true`` must not read as 1.0). The one finite-number check."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``path``; its mode respects the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (no NaN/Infinity tokens; see :func:`to_jsonable`)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Write numpy arrays as one ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object at ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
