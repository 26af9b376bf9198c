"""The fine-tune's data steps: the user's folder -> a manifest for `prepare`; the held-out split.

    run_import(fp, work)   # <work>/imported/manifest.jsonl + rejects.jsonl (importers.formats.import_corpus)
    run_split(fp, work)    # <work>/split.json: {"train": [ids], "heldout": [ids]} from the prepared rows
    rejected_lines(work)   # one line per file the import or `prepare` left out, and why

Every row gets the speaker `finetune.speaker` (the fine-tune is one voice). The held-out utterances are
drawn by `finetune.seed` from the prepared rows (the ones `prepare` kept): never trained on, judged in
the report. Fewer usable utterances than `min_utterances + heldout` is one UserError naming the flags.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from tristage.errors import UserError
from tristage.finetune.config import FinetuneParams

log = logging.getLogger("tristage.finetune")
IMPORTED, PREPARED, SPLIT = "imported", "prepared", "split.json"


def run_import(fp: FinetuneParams, work: Path) -> dict:
    """Import the user's folder; every row's speaker is `fp.speaker` -> the importer's summary."""
    from tristage.fsio import write_text
    from tristage.importers.formats import import_corpus

    out = Path(work) / IMPORTED
    summary = import_corpus(fp.format, fp.data, out, speaker=fp.speaker)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    others = sorted({str(r.get("speaker")) for r in rows} - {fp.speaker})
    if others:
        log.info("finetune: %d speaker name(s) in %s (%s); all rows are treated as %s",
                 len(others) + 1, fp.data, ", ".join(others[:5]), fp.speaker)
    write_text(out / "manifest.jsonl",
               "".join(json.dumps({**r, "speaker": fp.speaker}, ensure_ascii=False) + "\n" for r in rows))
    for line in rejected_lines(work):
        log.warning("%s", line)
    return summary


def _rejects(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rejected_lines(work: Path) -> list[str]:
    """One line per file left out: by the import (missing transcript, unreadable audio, stray files) and by
    `prepare` (audio that doesn't decode, silence, too short or too long, ...)."""
    work = Path(work)
    lines = [f"skipped {r['source']}: {r['reason']} ({r['detail']})"
             for r in _rejects(work / IMPORTED / "rejects.jsonl")]
    for r in _rejects(work / PREPARED / "rejects.jsonl"):
        where = Path(str((r.get("row") or {}).get("audio") or f"manifest line {r.get('line')}")).name
        lines.append(f"skipped {where}: {r['reason']} ({r['detail']})")
    return lines


def heldout_ids(ids: list[str], n: int, seed: int) -> list[str]:
    """`n` of `ids` drawn by `seed` (sorted first, so the order the files were listed in doesn't matter)."""
    ids = sorted(map(str, ids))
    pick = np.random.default_rng([seed, 4099]).choice(len(ids), n, replace=False)
    return sorted(ids[i] for i in pick)


def run_split(fp: FinetuneParams, work: Path) -> dict:
    """Hold out `fp.heldout` of the prepared utterances; UserError when too few are left to train on."""
    from tristage.data.manifest import read_prepared
    from tristage.fsio import write_json

    work = Path(work)
    ids = sorted(map(str, read_prepared(work / PREPARED / "manifest.parquet", columns=["id"])["id"]))
    need = fp.min_utterances + fp.heldout
    if len(ids) < need:
        left = len(rejected_lines(work))
        skipped = f" ({left} file(s) skipped, listed above)" if left else ""
        raise UserError(
            f"{fp.data}: {len(ids)} usable utterance(s){skipped}"
            f"; at least {need} needed: --min-utterances {fp.min_utterances} to train on + --heldout "
            f"{fp.heldout} for the report. Add recordings, or lower --min-utterances / --heldout")
    held = heldout_ids(ids, fp.heldout, fp.seed)
    split = dict(seed=fp.seed, heldout=held, train=[i for i in ids if i not in set(held)])
    write_json(work / SPLIT, split)
    log.info("finetune: %d utterances: %d to train on, %d held out for the report (%s)", len(ids),
             len(split["train"]), len(held), ", ".join(held))
    return dict(n_train=len(split["train"]), n_heldout=len(held))
