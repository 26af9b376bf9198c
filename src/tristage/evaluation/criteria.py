"""The seed's success table, computed (`indextts2-three-stage-training.md`, "Success Criteria").

    rows = seed_criteria(per_stage, trainable, band)   # -> metrics/evaluate.json "seed_criteria"

| stage  | key metric  | the seed's target              | computed as                        |
|--------|-------------|--------------------------------|------------------------------------|
| stage1 | mel_loss    | < 2.0, converged               | validation mel_loss < 2.0          |
| stage1 | mel_top1    | > 0.6                          | validation mel_top1 > 0.6          |
| stage2 | speaker_acc | 30-60%                         | inside `stage2.speaker_acc_band`   |
| stage2 | mel_loss    | similar to stage 1             | within 5% of stage1's              |
| stage3 | mel_loss    | similar or better than stage 2 | at most 5% above stage2's          |
| stage3 | trainable%  | ~40-50%                        | 0.40 <= trainable_fraction <= 0.50 |

Every mel_loss / mel_top1 is `evaluate`'s, on the one validation split, so the stages compare.
"similar" is read as within `SIMILAR` (5%) relative. A criterion whose value is missing (the stage
was not evaluated) has `pass: None`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

SIMILAR = 0.05  # relative difference read as "similar"
MEL_LOSS_MAX, MEL_TOP1_MIN = 2.0, 0.6
TRAINABLE_RANGE = (0.40, 0.50)


def _row(criterion: str, metric: str, target: str, value: float | None, ok: bool | None) -> dict[str, Any]:
    return dict(criterion=criterion, metric=metric, target=target,
                value=None if value is None else round(float(value), 4), **{"pass": ok})


def _check(value: float | None, test) -> bool | None:
    return None if value is None else bool(test(value))


def seed_criteria(per_stage: Mapping[str, Mapping[str, Any]], trainable: Mapping[str, float | None],
                  band: Sequence[float]) -> dict[str, list[dict[str, Any]]]:
    """{stage: [{criterion, metric, target, value, pass}, ...]} for the stages in `per_stage`.
    `trainable`: each stage's trainable_fraction (of its training run)."""
    get = lambda stage, key: (per_stage.get(stage) or {}).get(key)
    lo, hi = band
    out: dict[str, list[dict[str, Any]]] = {}
    if "stage1" in per_stage:
        loss, top1 = get("stage1", "mel_loss"), get("stage1", "mel_top1")
        out["stage1"] = [
            _row("mel_loss < 2.0", "mel_loss", f"< {MEL_LOSS_MAX}", loss,
                 _check(loss, lambda v: v < MEL_LOSS_MAX)),
            _row("mel_top1 > 0.6", "mel_top1", f"> {MEL_TOP1_MIN}", top1,
                 _check(top1, lambda v: v > MEL_TOP1_MIN))]
    if "stage2" in per_stage:
        acc, loss, ref = get("stage2", "speaker_acc"), get("stage2", "mel_loss"), get("stage1", "mel_loss")
        out["stage2"] = [
            _row(f"speaker_acc {lo:.0%}-{hi:.0%}", "speaker_acc", f"[{lo}, {hi}]", acc,
                 _check(acc, lambda v: lo <= v <= hi)),
            _row("mel_loss similar to stage1", "mel_loss",
                 "unknown (stage1 not evaluated)" if ref is None else
                 f"within {SIMILAR:.0%} of stage1's {ref:.4f}", loss,
                 None if ref is None else _check(loss, lambda v: abs(v - ref) <= SIMILAR * ref))]
    if "stage3" in per_stage:
        loss, ref, frac = get("stage3", "mel_loss"), get("stage2", "mel_loss"), trainable.get("stage3")
        out["stage3"] = [
            _row("mel_loss similar or better than stage2", "mel_loss",
                 "unknown (stage2 not evaluated)" if ref is None else
                 f"<= stage2's {ref:.4f} + {SIMILAR:.0%}", loss,
                 None if ref is None else _check(loss, lambda v: v <= ref * (1 + SIMILAR))),
            _row("trainable ~40-50%", "trainable_fraction", f"[{TRAINABLE_RANGE[0]}, {TRAINABLE_RANGE[1]}]",
                 frac, _check(frac, lambda v: TRAINABLE_RANGE[0] <= v <= TRAINABLE_RANGE[1]))]
    return out


def criteria_lines(criteria: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """One line per criterion, for `tristage summary`: `stage1  mel_loss < 2.0  2.1415  FAIL`."""
    lines = []
    for stage, rows in criteria.items():
        for r in rows:
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[r["pass"]]
            value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
            lines.append(f"{stage:<7} {r['criterion']:<42} target {r['target']:<28} {value:>8}  {verdict}")
    return lines
