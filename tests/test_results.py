"""The README's results tables come from metrics/ (tristage/results.py); the seed's success table is computed
(evaluation/criteria.py)."""
from __future__ import annotations

import json

from conftest import REPO

from tristage.evaluation.criteria import criteria_lines, seed_criteria
from tristage.results import FILES, MARK, render, stale


def test_committed_results_tables_match_the_committed_metrics():
    """Fails when a README / docs results table was edited by hand or the metrics changed without
    `tristage results --write` (make demo runs it)."""
    found = [m.group("name") for name in FILES if (REPO / name).is_file()
             for m in MARK.finditer((REPO / name).read_text())]
    assert {"stages", "seed_criteria"} <= set(found)
    assert stale(REPO) == []


def test_a_table_that_differs_from_the_metrics_is_found(tmp_path):
    (tmp_path / "metrics").mkdir()
    ev = {"stage1": {"mel_loss": 2.5, "mel_top1": 0.5, "wer": 0.7, "wer_se": 0.04, "wer_n": 40},
          "ground_truth": {"wer": 0.5, "wer_se": 0.05, "wer_n": 40},
          "seed_criteria": seed_criteria({"stage1": {"mel_loss": 2.5, "mel_top1": 0.5}}, {}, (0.3, 0.6)),
          "audio_judges": {"asr": "whisper tiny.en"}}
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(ev))
    (tmp_path / "metrics/stage1.json").write_text(json.dumps({"steps": 900, "trainable_fraction": 0.99}))
    doc = "intro\n<!-- results:stages -->\nold\n<!-- /results:stages -->\n" \
          "<!-- results:seed_criteria -->\n<!-- /results:seed_criteria -->\nend\n"
    (tmp_path / "README.md").write_text(doc)
    assert stale(tmp_path) == ["README.md: stages", "README.md: seed_criteria"]
    new = render(doc, tmp_path)
    assert new.startswith("intro\n") and new.endswith("end\n") and "0.700 ± 0.040 (n=40)" in new
    assert "| stage1 | 900 | 99.0% | 2.5000 |" in new
    assert "| stage1 | mel_loss < 2.0 | < 2.0 | 2.5 | **no** |" in new
    (tmp_path / "README.md").write_text(new)
    assert stale(tmp_path) == []


def test_seed_criteria_pass_and_fail():
    per = {"stage1": {"mel_loss": 1.9, "mel_top1": 0.55}, "stage2": {"mel_loss": 1.95, "speaker_acc": 0.45},
           "stage3": {"mel_loss": 2.2}}
    crit = seed_criteria(per, {"stage3": 0.46}, (0.3, 0.6))
    got = {(s, r["metric"]): r["pass"] for s, rows in crit.items() for r in rows}
    assert got == {("stage1", "mel_loss"): True, ("stage1", "mel_top1"): False,
                   ("stage2", "speaker_acc"): True, ("stage2", "mel_loss"): True,
                   ("stage3", "mel_loss"): False, ("stage3", "trainable_fraction"): True}
    assert crit["stage3"][0]["target"].startswith("<= stage2's 1.9500")
    lines = criteria_lines(crit)
    assert len(lines) == 6 and lines[1].endswith("FAIL") and lines[0].endswith("pass")
    only3 = seed_criteria({"stage3": {"mel_loss": 2.0}}, {}, (0.3, 0.6))
    assert only3["stage3"][0]["pass"] is None and only3["stage3"][1]["pass"] is None


def test_an_experiments_metrics_are_found_in_dvc_exp_show_json():
    from tristage.results import _exp_metrics

    seed = {"name": "adversary-seed",
            "metrics": {"metrics/stage2.json": {"data": {"adversary": "seed"}},
                        "metrics/evaluate.json": {"data": {"stage2": {"speaker_acc": 0.5}}}}}
    workspace = {"metrics": {"metrics/stage2.json": {"data": {"adversary": "project"}}}}
    show = [{"rev": "workspace", "data": workspace},
            {"rev": "abc", "data": {}, "experiments": [{"revs": [{"rev": "def", "name": "adversary-seed",
                                                                  "data": seed}]}]}]
    got = _exp_metrics(show, "adversary-seed")
    assert got["metrics/stage2.json"] == {"adversary": "seed"}
    assert got["metrics/evaluate.json"]["stage2"]["speaker_acc"] == 0.5
    assert _exp_metrics(show, "missing") is None
