"""The README and docs/ stay a guide: the README fits in 300 lines, and every relative link in README.md and
docs/*.md points to a file that exists (and, for a `#heading` in a markdown file, to a heading there)."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

README_MAX_LINES = 300
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)  # fenced code blocks
CODE = re.compile(r"`[^`\n]*`")  # inline code spans
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without code: a `[x](y)` inside a code block or span is not a link."""
    return CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, code marks and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", text)):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(files: list[Path]) -> list[str]:
    """'file: target (why)' for every relative link that points nowhere."""
    bad = []
    for f in files:
        for target in links(f.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = f if not path else (f.parent / path)
            where = f.relative_to(REPO)
            if not dest.exists():
                bad.append(f"{where}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                bad.append(f"{where}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def test_readme_is_a_guide_of_at_most_300_lines():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs"


def test_every_relative_link_points_to_a_file_that_exists():
    bad = broken_links(doc_files())
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_checker_finds_a_broken_link(tmp_path, monkeypatch):
    import test_docs

    monkeypatch.setattr(test_docs, "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A page\n\n## The `x` part\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [anchor](docs/a.md#the-x-part) [web](https://example.com) [self](#top)\n"
        "# Top\n`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/b.md) ![img](docs/missing.png) [bad anchor](docs/a.md#nope)\n")
    assert test_docs.broken_links(test_docs.doc_files()) == [
        "README.md: docs/b.md (no such file)",
        "README.md: docs/missing.png (no such file)",
        "README.md: docs/a.md#nope (no heading #nope in a.md)",
    ]
