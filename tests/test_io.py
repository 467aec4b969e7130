"""The atomic writer: files get the mode the umask gives any new file, and no temporary is left."""

import os
import stat

import numpy as np
import pytest

from lambda_hat._io import atomic_write_bytes, atomic_write_json, atomic_write_npz, read_json


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(umask, tmp_path, mask, mode):
    umask(mask)
    paths = [
        atomic_write_bytes(tmp_path / "a.bin", b"x"),
        atomic_write_json(tmp_path / "sub" / "m.json", {"a": 1}),
        atomic_write_npz(tmp_path / "t.npz", x=np.arange(3)),
    ]
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == mode, p
    # rewriting an existing file gives the new file the umask's mode too
    umask(0o022)
    atomic_write_json(tmp_path / "sub" / "m.json", {"a": 2})
    assert stat.S_IMODE((tmp_path / "sub" / "m.json").stat().st_mode) == 0o644
    assert read_json(tmp_path / "sub" / "m.json") == {"a": 2}
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    atomic_write_json(tmp_path / "m.json", {"a": 1})

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(tmp_path / "m.json", {"a": 2})
    monkeypatch.undo()
    assert read_json(tmp_path / "m.json") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
