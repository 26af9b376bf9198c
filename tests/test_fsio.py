"""Atomic writes: all or nothing, and ordinary permissions (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

import pytest

from tristage.fsio import atomic_dir, atomic_path, write_text


def test_atomic_file_gets_umask_permissions_and_failure_keeps_the_old_file(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "out.txt"
        write_text(p, "first")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        with pytest.raises(RuntimeError):
            with atomic_path(p) as tmp:
                tmp.write_text("half")
                raise RuntimeError("crash")
        assert p.read_text() == "first"
        assert [q.name for q in tmp_path.iterdir()] == ["out.txt"]  # no temp left behind
        with atomic_dir(tmp_path / "folder") as d:
            (d / "a").write_text("x")
        assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    finally:
        os.umask(old)
