"""Invalid params, fuzzed over keys and types: always a one-line ParamsError naming the key,
never a traceback from deep inside."""
from __future__ import annotations

import random

import pytest
import yaml

from tristage.config import dump_defaults, load_params
from tristage.errors import ParamsError

BAD_VALUES = ["not-a-number", -7, 10**12, [1, 2, 3], {"nested": 1}, None, "", 3.5, True]


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


LEAVES = list(_leaves(dump_defaults()))


@pytest.mark.parametrize("seed", range(60))
def test_fuzzed_value_is_accepted_or_names_its_key(tmp_path, seed):
    rng = random.Random(seed)
    data = dump_defaults()
    path, _ = rng.choice(LEAVES)
    value = rng.choice(BAD_VALUES)
    _set(data, path, value)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    try:
        load_params(f)  # some values are valid for some keys (e.g. 3.5 for a float)
    except ParamsError as exc:
        msg = str(exc)
        assert ".".join(path) in msg or (path[0] in msg and path[-1] in msg), msg
        assert "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("seed", range(20))
def test_fuzzed_unknown_key_names_it(tmp_path, seed):
    rng = random.Random(seed)
    data = dump_defaults()
    path, _ = rng.choice(LEAVES)
    bogus = path[:-1] + (path[-1] + "_typo",)
    node = data
    for k in bogus[:-1]:
        node = node[k]
    node[bogus[-1]] = 1
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    assert ".".join(bogus) in str(exc.value)


@pytest.mark.parametrize("seed", range(20))
def test_fuzzed_override_names_its_key(tmp_path, seed):
    rng = random.Random(seed)
    path, _ = rng.choice(LEAVES)
    f = tmp_path / "params.yaml"
    f.write_text("{}")
    key = ".".join(path)
    try:
        load_params(f, [f"{key}={rng.choice(['abc', '-1', '[1, 2]', '{a: 1}', 'null'])}"])
    except ParamsError as exc:
        msg = str(exc)
        assert key in msg or (path[0] in msg and path[-1] in msg), msg
        assert "\n" not in msg
