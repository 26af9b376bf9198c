"""Atomic writes: all or nothing, and ordinary permissions (not mkstemp's 0600); the JSON reader; sha256."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from tristage.fsio import atomic_dir, atomic_path, read_json, sha256, write_json, write_text


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


def test_read_json_raises_without_a_default_and_falls_back_with_one(tmp_path):
    write_json(tmp_path / "obj.json", {"a": 1})
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "obj.json") == {"a": 1} and read_json(tmp_path / "list.json") == [1, 2]
    for name, error in (("missing.json", FileNotFoundError), ("bad.json", json.JSONDecodeError)):
        with pytest.raises(error):
            read_json(tmp_path / name)
        assert read_json(tmp_path / name, {}) == {}
    assert read_json(tmp_path / "list.json", {}) == {}  # another type than the default's: the default
    assert read_json(tmp_path / "obj.json", {}) == {"a": 1}
    assert read_json(tmp_path / "missing.json", None) is None


def test_sha256_reads_the_file_in_chunks(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256(tmp_path / "f.bin", chunk=1000) == sha256(tmp_path / "f.bin") == want
