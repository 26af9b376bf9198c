"""What every importer shares: a streaming manifest writer with a rejects file.

    with ImportWriter(out_dir) as w:
        w.add({"id": ..., "audio": "/abs/a.wav", "text": ..., "speaker": ...})   # one manifest row
        w.reject("metadata.csv:12", "audio_not_found", "wavs/LJ001-0001.wav")  # one rejected entry
    w.summary -> {"rows": 13100, "rejected": 2, "rejects_by_reason": {...}, "manifest": ...}

Rows go to `<out_dir>/manifest.jsonl` as they come (written to a temp file, renamed at the
end, so an interrupted import leaves the old manifest or none); rejects to
`<out_dir>/rejects.jsonl` (`{"source": "file:line", "reason", "detail"}`). Nothing is kept
in memory but the counts (and the ids seen, to reject duplicates). `prepare` reads the
manifest and checks the audio itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tristage.data.manifest import OPTIONAL_COLUMNS

REASONS = ("bad_line", "missing_text", "missing_speaker", "audio_not_found", "unreadable_audio", "bad_layout",
           "unsupported_source", "unknown_recording", "duplicate_id", "unsupported_audio", "not_audio")
CONTRACT = ("id", "audio", "text", "speaker", *[c for c in OPTIONAL_COLUMNS if c != "id"])
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file name for an id: unsafe characters -> "_", long ids shortened with a hash."""
    name = _UNSAFE.sub("_", text).strip("._") or "utt"
    if len(name) > 120:
        name = name[:100] + "_" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return name


def parse_columns(items: list[str] | None) -> dict[str, str]:
    """["sentence=text", "client_id=speaker"] -> {"sentence": "text", "client_id": "speaker"}
    (source=contract)."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"--columns {part!r}: expected SOURCE=CONTRACT, e.g. sentence=text")
            src, dst = (s.strip() for s in part.split("=", 1))
            if dst not in CONTRACT:
                raise ValueError(
                    f"--columns {part!r}: {dst!r} is not a manifest column ({', '.join(CONTRACT)})"
                )
            out[src] = dst
    return out


class ImportWriter:
    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = self.out / "manifest.jsonl"
        self._tmp = self.out / ".manifest.jsonl.tmp"
        self.rows = 0
        self.reasons: Counter[str] = Counter()
        self._ids: set[str] = set()

    def __enter__(self) -> ImportWriter:
        self._f = open(self._tmp, "w", encoding="utf-8")
        self._r = open(self.out / "rejects.jsonl", "w", encoding="utf-8")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._f.close()
        self._r.close()
        if exc_type is None:
            os.replace(self._tmp, self.manifest)
        else:
            self._tmp.unlink(missing_ok=True)

    def add(self, row: dict[str, Any], source: str) -> bool:
        """Write one manifest row (None values dropped); False (and a reject) when its id was seen."""
        row = {k: v for k, v in row.items() if v is not None and v != ""}
        uid = str(row.get("id", ""))
        if uid in self._ids:
            self.reject(source, "duplicate_id", uid)
            return False
        self._ids.add(uid)
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1
        return True

    def reject(self, source: str, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.reasons[reason] += 1
        self._r.write(json.dumps({"source": source, "reason": reason, "detail": str(detail)[:500]},
                                 ensure_ascii=False) + "\n")

    @property
    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "rejected": sum(self.reasons.values()),
                "rejects_by_reason": dict(sorted(self.reasons.items())), "manifest": str(self.manifest),
                "rejects": str(self.out / "rejects.jsonl")}
