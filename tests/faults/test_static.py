"""Source-level guarantees: no pickle loads anywhere, servers bind loopback by default."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("src", "steps", "flows", "benchmarks") for p in (REPO / d).rglob("*.py"))


def test_sources_found():
    assert len(SOURCES) > 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_pickle_loads(path: Path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(
        r"^\s*(import pickle|from pickle|import cPickle|import dill|import joblib)", text, re.M
    ), "pickle-family import"
    assert "pickle.load" not in text and "np.load(" not in text.replace("allow_pickle=False", "")
    for m in re.finditer(r"torch\.load\(", text):
        # the whole call, up to its closing parenthesis
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        call = text[m.start(): i + 1]
        assert "weights_only=True" in call, f"torch.load without weights_only=True: {call}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_servers_bind_loopback(path: Path):
    text = path.read_text(encoding="utf-8")
    assert "0.0.0.0" not in text, "a server bound to all interfaces"
    for m in re.finditer(r"""["']--host["']\s*,\s*["']([^"']+)["']""", text):
        assert m.group(1) in ("127.0.0.1", "localhost"), m.group(0)
