"""A sweep's points: the grid and random ranges given on the command line, and each point's name.

    axes = parse_grid(["stage2.grl_lambda=0.3,1,3", "stage2.speaker_loss_weight=0.1,0.3"])
    points = grid_points(axes)                      # 6 dicts {"stage2.grl_lambda": 0.3, ...}
    points += random_points(parse_ranges(["stage2.grl_lambda=0.1:3:log"]), n=4, seed=0)
    point_name("lam", points[0])                    # "lam-grl_lambda0.3-speaker_loss_weight0.1"
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random as _random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from tristage.errors import UserError

_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")


def _split_values(text: str) -> list[str]:
    """`0.3,1,[0.2, 0.5]` -> ["0.3", "1", "[0.2, 0.5]"]: commas inside brackets or quotes don't split."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _key_of(item: str, flag: str) -> tuple[str, str]:
    key, sep, rest = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"{flag} {item!r}: expected KEY=VALUES with a dotted params key, "
                        f"e.g. {flag} stage2.grl_lambda=0.3,1,3")
    return key, rest


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """`["stage2.grl_lambda=0.3,1,3"]` -> {"stage2.grl_lambda": [0.3, 1, 3]} (values parsed as YAML)."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, rest = _key_of(item, "--grid")
        raw = _split_values(rest)
        if any(v == "" for v in raw):
            raise UserError(
                f"--grid {item!r}: an empty value; separate values with commas, e.g. {key}=0.3,1,3"
            )
        if key in axes:
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid")
        values = [yaml.safe_load(v) for v in raw]
        axes[key] = list(dict.fromkeys(json.dumps(v) for v in values))  # dedupe, keep order
        axes[key] = [json.loads(v) for v in axes[key]]
    return axes


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def sample(self, rng: _random.Random) -> float | int:
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return float(f"{value:.4g}")  # readable values (and experiment names)


def parse_range(key: str, spec: Any) -> Range:
    """`"0.1:3:log"`, `"1:8"` (integers -> integer samples), or a list `[0.1, 3, "log"]`."""
    parts = (
        spec.split(":") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    )
    if not parts or len(parts) not in (2, 3) or (len(parts) == 3 and str(parts[2]) not in ("log", "lin")):
        raise UserError(f"--range {key}: expected LOW:HIGH or LOW:HIGH:log, got {spec!r}")
    try:
        low, high = (yaml.safe_load(p) if isinstance(p, str) else p for p in parts[:2])
        lo_f, hi_f = float(low), float(high)
    except (TypeError, ValueError, yaml.YAMLError):
        raise UserError(f"--range {key}: LOW and HIGH must be numbers, got {spec!r}") from None
    log = len(parts) == 3 and str(parts[2]) == "log"
    if not lo_f < hi_f or (log and lo_f <= 0):
        raise UserError(f"--range {key}: need LOW < HIGH (and LOW > 0 with log), got {spec!r}")
    integer = isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool) and not log
    return Range(lo_f, hi_f, log, integer)


def parse_ranges(items: Iterable[str] | Mapping[str, Any]) -> dict[str, Range]:
    if isinstance(items, Mapping):
        return {k: parse_range(k, v) for k, v in items.items()}
    out = {}
    for item in items:
        key, rest = _key_of(item, "--range")
        out[key] = parse_range(key, rest.strip())
    return out


def grid_points(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first axis varying slowest."""
    if not axes:
        return []
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def random_points(ranges: Mapping[str, Range], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` points drawn independently per key (log-uniform for `log` ranges); same seed, same points."""
    if n and not ranges:
        raise UserError("--random N needs at least one --range KEY=LOW:HIGH[:log]")
    rng = _random.Random(seed)
    return [{k: r.sample(rng) for k, r in ranges.items()} for _ in range(n)]


def unique_points(points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for p in points:
        sig = json.dumps(p, sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            out.append(dict(p))
    return out


def check_sweep_name(name: str) -> str:
    if not _NAME_OK.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise UserError(
            f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (it names DVC experiments "
            f"and the folder sweeps/<name>)"
        )
    return name


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def point_name(sweep: str, point: Mapping[str, Any]) -> str:
    """A DVC experiment name from the values: `lam-grl_lambda0.3-speaker_loss_weight0.1`,
    or a hash when long."""
    label = "-".join(f"{short_key(k)}{v if isinstance(v, str) else json.dumps(v)}" for k, v in point.items())
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).replace("..", "_").strip("._-")
    digest = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
    if not label or len(label) > 60:
        label = f"p{digest}"
    return f"{sweep}-{label}"


def point_label(point: Mapping[str, Any]) -> str:
    """For chart axes: `grl_lambda=0.3 speaker_loss_weight=0.1`."""
    return " ".join(f"{short_key(k)}={v}" for k, v in point.items())
