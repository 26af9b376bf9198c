"""Sweeps: points, stage split, the plan, failure reasons, the table, the recommendation, charts, the flow."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tristage.errors import UserError
from tristage.runs import sweep_charts
from tristage.runs import sweep_points as pts
from tristage.runs import sweep_results as res
from tristage.runs.sweep_plan import StageGraph, SweepPlan, SweepRequest, validate_point

REPO = Path(__file__).resolve().parents[1]


# -- points (fast) ---------------------------------------------------------------------------
def test_grid_is_the_product_of_the_axes_with_yaml_values():
    axes = pts.parse_grid(["stage2.grl_lambda=0.3,1,3", "stage2.speaker_loss_weight=0.1,0.3",
                          "stage2.speaker_acc_band=[0.2, 0.5],[0.3,0.6]", "stage2.band_control=warn,auto"])
    assert axes["stage2.grl_lambda"] == [0.3, 1, 3]
    assert axes["stage2.speaker_acc_band"] == [[0.2, 0.5], [0.3, 0.6]]  # commas inside brackets don't split
    assert axes["stage2.band_control"] == ["warn", "auto"]
    points = pts.grid_points(axes)
    assert len(points) == 3 * 2 * 2 * 2
    assert points[0] == {"stage2.grl_lambda": 0.3, "stage2.speaker_loss_weight": 0.1,
                         "stage2.speaker_acc_band": [0.2, 0.5], "stage2.band_control": "warn"}
    assert pts.parse_grid(["a.b=1,1,2"]) == {"a.b": [1, 2]}  # duplicates dropped


@pytest.mark.parametrize("item", ["stage2.grl_lambda", "=1,2", "stage2.=1", "stage2.grl_lambda=1,,2"])
def test_bad_grid_items_name_the_flag(item):
    with pytest.raises(UserError, match="--grid"):
        pts.parse_grid([item])


def test_random_points_respect_ranges_and_seed():
    ranges = pts.parse_ranges(["stage2.grl_lambda=0.1:3:log", "stage2.steps=10:20",
                              "stage2.speaker_loss_weight=0.05:0.5"])
    assert ranges["stage2.steps"].integer and ranges["stage2.grl_lambda"].log
    a = pts.random_points(ranges, 20, seed=3)
    assert a == pts.random_points(ranges, 20, seed=3) and a != pts.random_points(ranges, 20, seed=4)
    for p in a:
        assert 0.1 <= p["stage2.grl_lambda"] <= 3 and isinstance(p["stage2.steps"], int)
        assert 10 <= p["stage2.steps"] <= 20 and 0.05 <= p["stage2.speaker_loss_weight"] <= 0.5
    lam = sorted(p["stage2.grl_lambda"] for p in pts.random_points(ranges, 400, seed=0))
    assert lam[200] < 1.0  # log-uniform: the median sits near sqrt(0.1 * 3) = 0.55, not 1.55
    assert pts.parse_ranges({"stage2.grl_lambda": [0.1, 3, "log"]})["stage2.grl_lambda"].log  # the UI's form
    with pytest.raises(UserError, match="--range"):
        pts.parse_ranges(["stage2.grl_lambda=0:3:log"])
    with pytest.raises(UserError, match="--range"):
        pts.random_points({}, 2)


def test_point_names_are_valid_experiment_names_and_stable():
    p = {"stage2.grl_lambda": 0.3, "stage2.speaker_loss_weight": 0.1}
    assert pts.point_name("s", p) == "s-grl_lambda0.3-speaker_loss_weight0.1"
    long = {f"stage2.key_number_{i}": [0.1, 0.2] for i in range(5)}
    name = pts.point_name("s", long)
    assert name == pts.point_name("s", dict(reversed(list(long.items())))) and len(name) < 20
    with pytest.raises(UserError, match="sweep name"):
        pts.check_sweep_name("bad name")


# -- stages and failure reasons (fast; reads this repo's dvc.yaml) ----------------------------
def test_shared_stages_are_those_no_swept_key_reaches():
    from flows.orchestration.dvc import stage_graph

    graph = stage_graph(REPO, "evaluate")
    shared, per_point = graph.split(["stage2.grl_lambda"])
    assert shared[-1] == "stage1" and "features" in shared
    assert per_point == ["stage2", "stage3", "evaluate"]
    shared, per_point = stage_graph(REPO, "stage2").split(["stage1.lr"])
    assert "stage1" in per_point and "stage2" in per_point and "stage3" not in per_point
    shared, per_point = graph.split(["caption_vectors.lexicon.gender"])  # a subkey of a section it reads
    assert "caption_vectors" in per_point and "annotate" in per_point and "prepare" in shared


def test_stage_graph_split_follows_params_and_upstream():
    graph = StageGraph(["a", "b", "c", "d"], {"b": ["a"], "c": ["a"], "d": ["b", "c"]},
                       {"a": ["a"], "b": ["b", "x.y"], "c": ["c"], "d": ["d"]})
    assert graph.split(["c.lr"]) == (["a", "b"], ["c", "d"])  # c reads section c; d runs after c
    assert graph.split(["x"]) == (["a", "c"], ["b", "d"])  # b reads x.y, a key inside the swept one
    assert graph.split(["x.y.z"]) == (["a", "c"], ["b", "d"])
    assert graph.split(["x.w"]) == (["a", "b", "c", "d"], [])


def test_failure_reason_is_the_stages_own_line():
    from flows.orchestration.dvc import CommandFailed
    from flows.orchestration.sweeps import failure_reason

    tail = ("dvc repro --single-item stage2 failed with exit code 2 in /x:\nRunning stage 'stage2':\n"
            "stage2: error: step 3: mel_loss is nan (non-finite loss); lower stage2.lr\n"
            "ERROR: failed to reproduce 'stage2': failed to run: python -m steps.stage2, exited with 2\n")
    assert failure_reason(CommandFailed(tail, 2)) == \
        "exit code 2: stage2: error: step 3: mel_loss is nan (non-finite loss); lower stage2.lr"
    assert failure_reason(UserError("stage2.grl_lambda: bad\nmore")) == "stage2.grl_lambda: bad"


def test_a_bad_value_is_caught_before_work_naming_the_key():
    knobs = validate_point(REPO / "params.yaml", {"stage2.grl_lambda": 2.5})
    assert knobs == {"stage2.grl_lambda": 2.5, "stage2.speaker_loss_weight": 0.1}
    with pytest.raises(UserError, match="stage2.grl_lambda"):
        validate_point(REPO / "params.yaml", {"stage2.grl_lambda": -1})
    with pytest.raises(UserError, match="stage2.grl_lambdda"):
        validate_point(REPO / "params.yaml", {"stage2.grl_lambdda": 1})


# -- the plan (fast; this repo's params.yaml, a small DAG) -----------------------------------
GRAPH = StageGraph(["stage1", "stage2", "stage3"], {"stage2": ["stage1"], "stage3": ["stage2"]},
                   {"stage1": ["stage1"], "stage2": ["stage2"], "stage3": ["stage3"]})


def _plan(tmp_path, **request) -> SweepPlan:
    request = {"grid": {"stage2.grl_lambda": [0.5, 2.0, -1.0]}, **request}
    return SweepPlan.make(SweepRequest("t", **request), REPO / "params.yaml", GRAPH, tmp_path / "sweeps")


def test_plan_names_and_checks_every_point_before_any_work(tmp_path):
    plan = _plan(tmp_path, overrides={"stage2.steps": 5}, random=1, ranges={"stage2.grl_lambda": "0.1:3:log"})
    assert [p.name for p in plan.points][:3] == ["t-grl_lambda0.5", "t-grl_lambda2.0", "t-grl_lambda-1.0"]
    assert len(plan.points) == 4 and plan.out_dir == tmp_path / "sweeps" / "t" and plan.base_name == "t-base"
    good, bad = plan.points[0], plan.points[2]
    assert good.overrides == {"stage2.steps": 5, "stage2.grl_lambda": 0.5}
    assert good.values == {"stage2.grl_lambda": 0.5}
    assert good.knobs == {"stage2.grl_lambda": 0.5, "stage2.speaker_loss_weight": 0.1}
    assert good.invalid is None
    assert bad.knobs is None and "stage2.grl_lambda" in bad.invalid and "params.yaml" in bad.invalid
    assert (plan.shared, plan.per_point) == (["stage1"], ["stage2", "stage3"])
    assert plan.band == (0.3, 0.6) and plan.adversary == "project"
    assert plan.describe() == "sweep t: 4 point(s); shared stages (once): stage1; per point: stage2, stage3"


@pytest.mark.parametrize("request_, message", [
    ({"grid": {}}, "no points"),
    ({"overrides": {"stage2.grl_lambda": 1.0}}, "also swept"),
    ({"grid": {"stage2.grl_lambda": [-1.0, -2.0]}}, "every point is invalid"),
    ({"grid": {"stage2.grl_lambdda": [1.0]}}, "every point is invalid.*stage2.grl_lambdda"),
    ({"overrides": {"stage2.steps": -1}}, "stage2.steps"),
    ({"grid": {"evaluate.threads": [1, 2]}}, "no stage up to 'evaluate' reads evaluate.threads"),
])
def test_plan_fails_before_any_work_when_nothing_can_run(tmp_path, request_, message):
    with pytest.raises(UserError, match=message):
        _plan(tmp_path, **request_)


def test_plan_slots_share_the_cores_among_the_points_at_once(tmp_path):
    plan = _plan(tmp_path)
    assert plan.slots("cpu", 2, [], cpus=8, lock_dir=tmp_path).threads == 4
    assert plan.slots("cpu", 8, [], cpus=8, lock_dir=tmp_path).threads == 8 // 3  # 3 points: 3 run at once
    slots = plan.slots("gpu", 2, ["0", "1"], cpus=1, lock_dir=tmp_path)
    assert slots.threads == 1
    assert slots.describe() == "2 gpu slot(s) on devices 0,1, 1 torch thread(s) per point"


def test_plan_pending_skips_finished_points_and_records_invalid_ones(tmp_path):
    plan = _plan(tmp_path)
    a, b, bad = (p.name for p in plan.points)
    plan.write_record(a, {"status": "finished", "metrics": {}})
    plan.write_record(b, {"status": "finished", "metrics": {}})
    records, todo = plan.pending({a})  # b finished, but its DVC experiment is gone: run again
    assert [p.name for p in todo] == [b]
    assert records[a]["skipped"] and records[bad]["status"] == "failed"
    assert "grl_lambda" in records[bad]["reason"] and plan.read_record(bad) == records[bad]  # written
    records[b] = {"status": "failed", "reason": "exit code 2: nan", "metrics": {}}
    results = plan.finish(records, {"mlflow_parent_run_id": "r1"})
    assert [r["status"] for r in results.rows] == ["finished", "failed", "failed"]
    assert results.status == "FINISHED"
    assert not plan.all_valid_done(results)  # b can be retried; the invalid point never counts
    assert json.loads(results.paths["json"].read_text())["mlflow_parent_run_id"] == "r1"
    summary = plan.summary(records, results, "r1")
    assert summary["points"] == {a: "finished", b: "failed", bad: "failed"}
    assert summary["shared_stages"] == ["stage1"] and summary["point_stages"] == ["stage2", "stage3"]
    records[b] = {"status": "finished", "metrics": {}}
    assert plan.all_valid_done(plan.finish(records))


# -- results, recommendation, charts (fast) --------------------------------------------------
BAND = (0.3, 0.6)


def _row(name, acc, mel, probe, lam=1.0, wgt=0.1, status="finished", reason=""):
    metrics = (
        {}
        if status != "finished"
        else {
            "val_mel_loss": mel,
            "speaker_acc": acc,
            "speaker_probe_acc": probe,
            "s1_speaker_probe_acc": 0.78,
            "emotion_probe_acc": 0.5,
        }
    )
    record = {"status": status, "reason": reason, "metrics": metrics,
              "knobs": {"stage2.grl_lambda": lam, "stage2.speaker_loss_weight": wgt}}
    return res.result_row(name, {"stage2.grl_lambda": lam, "stage2.speaker_loss_weight": wgt}, record, BAND)


def test_recommend_in_band_lowest_mel_loss():
    rows = [
        _row("a", 0.2, 1.9, 0.5),
        _row("b", 0.4, 2.1, 0.4),
        _row("c", 0.5, 2.0, 0.45),
        _row("d", 0.7, 1.8, 0.3),
        _row("e", None, None, None, status="failed", reason="exit code 2: nan"),
    ]
    rec = res.recommend(rows, BAND)
    assert rec.point == "c" and rec.in_band and [r["point"] for r in rows if r["recommended"]] == ["c"]
    assert [r["band"] for r in rows] == ["below", "in", "in", "above", None]


def test_recommend_out_of_band_gives_the_band_remedy_as_a_next_grid():
    rows = [_row("a", 0.10, 2.0, 0.4, lam=1.0, wgt=0.1), _row("b", 0.25, 2.1, 0.5, lam=0.3, wgt=0.3)]
    rec = res.recommend(rows, BAND)  # the project's adversary: one remedy below the band, a weaker reversal
    assert rec.point == "b" and not rec.in_band and "below the band" in rec.text
    assert "lower stage2.grl_lambda" in rec.text and rec.next_grid == ["stage2.grl_lambda=0.15,0.075"]
    rec = res.recommend(rows, BAND, adversary="seed")  # the seed's: raise the speaker loss weight
    assert "raise stage2.speaker_loss_weight" in rec.text
    assert rec.next_grid == ["stage2.speaker_loss_weight=0.6"]
    rec = res.recommend([_row("a", 0.9, 2.0, 0.8, lam=1.0), _row("b", 0.8, 2.0, 0.7, lam=2.0)], BAND)
    assert (
        rec.point == "b"
        and "raise stage2.grl_lambda" in rec.text
        and rec.next_grid == ["stage2.grl_lambda=4,6"]
    )
    rec = res.recommend([_row("a", 0.1, 2.0, 0.8, lam=4.0), _row("b", 0.8, 2.0, 0.7, lam=1.0)], BAND)
    assert "between a (below) and b (above)" in rec.text and rec.next_grid[0] == "stage2.grl_lambda=1,2,4"
    rec = res.recommend([_row("a", None, None, None, status="failed", reason="x")], BAND)
    assert rec.point is None and "1 failed" in rec.text


def test_pareto_front():
    points = [(2.0, 0.5), (1.9, 0.6), (2.1, 0.4), (2.2, 0.45), (1.8, 0.7)]
    assert sweep_charts.pareto_front(points) == [4, 1, 0, 2]


def test_results_files_and_table(tmp_path, capsys):
    rows = [_row("sw-a", 0.2, 1.9, 0.5), _row("sw-b", 0.4, 2.1, 0.4),
            _row("sw-c", None, None, None, status="failed", reason="exit code 2: stage2: error: nan")]
    rec = res.recommend(rows, BAND)
    out = tmp_path / "sweeps" / "sw"
    paths = res.write_results(out, rows, rec, BAND, {"sweep": "sw"})
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["point"] for r in table] == ["sw-a", "sw-b", "sw-c"]
    assert table[1]["band"] == "in" and table[1]["recommended"] == "True" and table[2]["status"] == "failed"
    assert {"stage2.grl_lambda", "val_mel_loss", "speaker_acc", "speaker_probe_acc", "emotion_probe_acc",
            "reason"} <= set(table[0])
    for key in ("band_png", "front_png"):
        assert paths[key].stat().st_size > 10_000 and paths[key].read_bytes()[:4] == b"\x89PNG"
    doc = res.print_sweep(tmp_path, "sw")
    printed = capsys.readouterr().out
    assert doc["recommendation"]["point"] == "sw-b"
    assert "*sw-b" in printed and "failed sw-c: exit code 2" in printed and "recommended: sw-b" in printed
    with pytest.raises(UserError, match="sweeps here: sw"):
        res.print_sweep(tmp_path, "nope")


def test_point_metrics_read_from_a_workspace(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "stage2.json").write_text(json.dumps({"val_mel_loss": 2.1, "val_speaker_acc": 0.2,
                                                                  "codec": "random-init dac"}))
    m = res.point_metrics(tmp_path)  # target stage2: no evaluate
    assert m["val_mel_loss"] == 2.1 and m["speaker_acc"] == 0.2 and m["speaker_probe_acc"] is None
    (tmp_path / "metrics" / "evaluate.json").write_text(
        json.dumps(
            {
                "mel_loss": 2.0,
                "speaker_probe_acc": 0.4,
                "emotion_probe_acc": 0.55,
                "wer": 0.9,
                "codec": "random-init dac",
                "stage1": {"speaker_probe_acc": 0.78},
                "stage2": {"mel_loss": 2.05, "speaker_acc": 0.14},
            }
        )
    )
    m = res.point_metrics(tmp_path)
    assert (
        m["val_mel_loss"],
        m["s2_val_mel_loss"],
        m["speaker_acc"],
        m["s1_speaker_probe_acc"],
        m["wer"],
    ) == (2.0, 2.05, 0.14, 0.78, 0.9)
    assert m["random_init"]


# -- the real flow on the shrunk DAG (slow) --------------------------------------------------
@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
@pytest.mark.long
def test_two_point_sweep_runs_concurrently_with_stage1_once(prefect_api, reproduced_template, tmp_path,
                                                            monkeypatch):
    """On the reproduced shrunk DAG (shared by the test run) with a stage1 change for every point: stage1
    reruns once, in the base workspace; the points run concurrently from it."""
    from conftest import clone_reproduced

    from flows.sweep import sweep

    repo_copy = clone_reproduced(reproduced_template[0], tmp_path / "repo")
    shared = {"stage1.steps": 3}  # upstream of stage1 comes out of the DVC cache

    db = repo_copy / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU slots
    monkeypatch.delenv("TRISTAGE_TRACKING", raising=False)
    grid = {"stage2.grl_lambda": [0.5, 2.0, -1.0]}  # -1: a bad value, recorded as failed, costs no work
    result = sweep(grid=grid, overrides=shared, name="t", cpu_slots=2, repo=str(repo_copy))

    assert result["shared_stages"][-1] == "stage1" and result["point_stages"] == [
        "stage2",
        "stage3",
        "evaluate",
    ]
    assert result["points"] == {"t-grl_lambda0.5": "finished", "t-grl_lambda2.0": "finished",
                                "t-grl_lambda-1.0": "failed"}
    out = repo_copy / "sweeps" / "t"
    records = {p: json.loads((out / "points" / f"{p}.json").read_text()) for p in result["points"]}
    assert "stage2.grl_lambda" in records["t-grl_lambda-1.0"]["reason"]
    a, b = records["t-grl_lambda0.5"], records["t-grl_lambda2.0"]
    assert a["started"] < b["finished"] and b["started"] < a["finished"], "the two points did not overlap"

    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["point"] for r in table] == list(result["points"])
    for r in table[:2]:
        assert (
            r["status"] == "finished"
            and float(r["val_mel_loss"]) > 0
            and r["band"] in ("below", "in", "above")
        )
        assert 0 <= float(r["speaker_acc"]) <= 1 and 0 <= float(r["speaker_probe_acc"]) <= 1
        assert 0 <= float(r["emotion_probe_acc"]) <= 1
    assert [r["stage2.grl_lambda"] for r in table[:2]] == ["0.5", "2.0"]
    assert sum(r["recommended"] == "True" for r in table) == 1
    assert (out / "speaker_acc_band.png").stat().st_size > 10_000
    assert (out / "mel_loss_vs_speaker_probe.png").stat().st_size > 10_000
    assert sorted(p.name for p in (repo_copy / ".tristage" / "runs").iterdir()) == []  # workspaces cleaned up

    dvc = str(Path(sys.executable).with_name("dvc"))
    shown = subprocess.run([dvc, "exp", "list", "--name-only"], cwd=repo_copy, capture_output=True, text=True,
                           check=True).stdout.split()
    assert sorted(shown) == ["t-grl_lambda0.5", "t-grl_lambda2.0"]
    exp_show = json.loads(subprocess.run([dvc, "exp", "show", "--json"], cwd=repo_copy, capture_output=True,
                                         text=True, check=True).stdout)
    assert '"t-grl_lambda0.5"' in json.dumps(exp_show) and '"t-grl_lambda2.0"' in json.dumps(exp_show)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("tristage").experiment_id], max_results=500)
    assert sum(r.data.tags.get("stage") == "stage1" for r in runs) == 1  # stage1 ran once
    assert sum(r.data.tags.get("stage") == "stage2" for r in runs) == 2
    parents = [r for r in runs if r.data.tags.get("tristage.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                and r.data.tags.get("tristage.role") == "flow"]
    assert sorted(r.info.run_name for r in children) == ["t-grl_lambda0.5", "t-grl_lambda2.0"]
    assert parents[0].data.tags["recommended_point"] in ("t-grl_lambda0.5", "t-grl_lambda2.0")
    arts = {f.path for f in client.list_artifacts(parents[0].info.run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/speaker_acc_band.png", "sweep/mel_loss_vs_speaker_probe.png"} <= arts

    # rerun: the finished points are skipped, nothing trains again
    t0 = time.monotonic()
    again = sweep(grid=grid, overrides=shared, name="t", cpu_slots=2, repo=str(repo_copy))
    assert again["points"] == result["points"] and again["recommended"] == result["recommended"]
    runs2 = client.search_runs([client.get_experiment_by_name("tristage").experiment_id], max_results=500)
    assert sum(r.data.tags.get("stage") is not None for r in runs2) == sum(
        r.data.tags.get("stage") is not None for r in runs
    )
    assert time.monotonic() - t0 < 60

    from tristage.cli import main

    monkeypatch.chdir(repo_copy)
    assert main(["compare", "--sweep", "t"]) == 0


@pytest.mark.slow
@pytest.mark.long  # make test-all (CI under 20 min): test_flow's one-slot test covers the lock
def test_points_on_fake_gpus_hold_distinct_devices(prefect_api, repo_copy, monkeypatch):
    """Two fake GPUs: points run two at once, each with its own CUDA_VISIBLE_DEVICES (dvc faked); a point
    whose stage2 fails (NaN) is recorded with the reason while the others finish; a rerun retries only it."""
    import itertools
    import os
    import threading

    import flows.sweep as fs
    from flows.orchestration.dvc import CommandFailed

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("TRISTAGE_TRACKING", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo_copy / 'mlflow.db'}")
    calls, saved, lock = [], [], threading.Lock()
    broken = {"g-grl_lambda4.0"}

    def fake_run(cmd, cwd, env=None, log_to=None, on_line=None):
        if "repro" in cmd:
            t0 = time.monotonic()
            fails = Path(cwd).name in broken and cmd[-1] == "stage2"
            # every stage takes a while, the failing one too: two points hold their slots at the same
            # time whichever two start first (a point failing at once left the overlap to Prefect's
            # poll for the freed slot, which can come after the other point has finished)
            time.sleep(0.5)
            with lock:
                calls.append((Path(cwd).name, cmd[-1], (env or {}).get("CUDA_VISIBLE_DEVICES"),
                              (env or {}).get("OMP_NUM_THREADS"), t0, time.monotonic()))
            if fails:
                raise CommandFailed(f"{' '.join(cmd)} failed with exit code 2 in {cwd}:\n"
                                    "stage2: error: step 3: mel_loss is nan (non-finite loss)\n", 2)
        if cmd[1:3] == ["exp", "save"]:
            saved.append(cmd[cmd.index("-n") + 1])
        return "\n".join(saved) if cmd[1:3] == ["exp", "list"] else ""

    monkeypatch.setattr(fs.dvc, "run", fake_run)
    grid = {"stage2.grl_lambda": [0.5, 2.0, 4.0]}
    result = fs.sweep(grid=grid, name="g", repo=str(repo_copy))
    assert result["points"] == {"g-grl_lambda0.5": "finished", "g-grl_lambda2.0": "finished",
                                "g-grl_lambda4.0": "failed"}
    record = json.loads((repo_copy / "sweeps" / "g" / "points" / "g-grl_lambda4.0.json").read_text())
    assert record["reason"] == "exit code 2: stage2: error: step 3: mel_loss is nan (non-finite loss)"
    assert (repo_copy / ".tristage" / "runs" / "g-grl_lambda4.0").is_dir()  # kept for a look
    assert not (repo_copy / ".tristage" / "runs" / "g-grl_lambda0.5").exists()
    by_point = {}
    for ws, stage, device, threads, t0, t1 in calls:
        if ws.startswith("g-grl"):
            if stage in result["point_stages"]:
                by_point.setdefault(ws, []).append((device, t0, t1))
        else:  # the shared stages: GPU stages hold a slot, the others see no GPU
            assert device in (("0", "1") if stage in fs.dvc.GPU_STAGES else ("",)), (stage, device)
    assert sorted(by_point) == ["g-grl_lambda0.5", "g-grl_lambda2.0", "g-grl_lambda4.0"]
    devices = {p: {d for d, *_ in v} for p, v in by_point.items()}
    assert all(len(d) == 1 for d in devices.values())  # a point keeps its device for all its stages
    spans = {p: (min(t for _, t, _ in v), max(t for *_, t in v)) for p, v in by_point.items()}
    together = [(p, q) for p, q in itertools.combinations(sorted(spans), 2)
                if spans[p][0] <= spans[q][1] and spans[q][0] <= spans[p][1]]
    assert together, f"no two points ran at the same time: {spans}"
    for p, q in together:  # points that run at the same time hold different devices
        assert devices[p].isdisjoint(devices[q]), (p, q, devices)
    assert {t for *_, t, _, _ in calls} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}

    broken.clear()  # fixed: the rerun retries the failed point only (the base workspace is reused)
    calls.clear()
    again = fs.sweep(grid=grid, name="g", repo=str(repo_copy))
    assert set(again["points"].values()) == {"finished"}
    assert {ws for ws, *_ in calls} == {"g-grl_lambda4.0"}
    assert not (repo_copy / ".tristage" / "runs" / "g-base").exists()  # all done: the base is removed
