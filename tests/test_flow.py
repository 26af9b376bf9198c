"""The Prefect flow: GPU slots, dvc command building, retries, and the real DAG in a copy of the repo."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.orchestration import dvc, gpu
from tristage.errors import UserError


# -- dvc commands and overrides (fast) ------------------------------------------------------
@pytest.mark.parametrize("key,value,expected", [
    ("stage2.grl_lambda", 2.0, "stage2.grl_lambda=2.0"),
    ("stage2.steps", 10, "stage2.steps=10"),
    ("stage2.speaker_acc_band", [0.2, 0.5], "stage2.speaker_acc_band=[0.2, 0.5]"),
    ("caption_vectors.encoder", None, "caption_vectors.encoder=null"),
    ("prepare.check_audio", False, "prepare.check_audio=false"),
    ("features.device", "cpu", "features.device=cpu"),
    ("corpus.out_dir", "data/my raw", "corpus.out_dir='data/my raw'"),
    ("corpus.out_dir", "1e3", "corpus.out_dir='1e3'"),  # a string that looks numeric stays a string
])
def test_format_override(key, value, expected):
    assert dvc.format_override(key, value) == expected


@pytest.mark.parametrize("key", ["", "stage2.", ".x", "a=b"])
def test_format_override_rejects_bad_keys(key):
    with pytest.raises(UserError, match="overrides"):
        dvc.format_override(key, 1)


def test_apply_overrides_edits_params_like_dvc_exp_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# a comment\nstage2:\n  grl_lambda: 1.0\n  speaker_acc_band:\n  - 0.3\n  - 0.6\n"
                      "corpus:\n  out_dir: data/raw\n")
    dvc.apply_overrides(params, {"stage2.grl_lambda": 2.5, "stage2.speaker_acc_band": [0.1, 0.4],
                                 "corpus.out_dir": "data/my raw"})
    import yaml

    data = yaml.safe_load(params.read_text())
    assert data["stage2"] == {"grl_lambda": 2.5, "speaker_acc_band": [0.1, 0.4]}
    assert data["corpus"]["out_dir"] == "data/my raw"
    assert params.read_text().startswith("# a comment")  # formatting kept, as `dvc exp run -S` does
    with pytest.raises(UserError, match="stage2.grl_lambdda"):  # a misspelt key is an error, not a new key
        dvc.apply_overrides(params, {"stage2.grl_lambdda": 3.0})


def test_exp_save_cmd_limits_to_the_stages_run():
    cmd = dvc.exp_save_cmd("run1", ["corpus", "prepare"], ["metrics/prepare.json"], "msg")
    assert cmd[1:] == [
        "exp",
        "save",
        "-n",
        "run1",
        "-I",
        "metrics/prepare.json",
        "-m",
        "msg",
        "corpus",
        "prepare",
    ]


def test_subprocess_env_carries_tracking_and_device(tmp_path):
    env = dvc.subprocess_env(
        tmp_path,
        tracking_uri="sqlite:////x/mlflow.db",
        parent_run_id="p1",
        flow_run_id="f1",
        exp_name="e1",
        git_rev="abc",
        device="1",
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["TRISTAGE_PARENT_RUN_ID"] == "p1"
    assert env["TRISTAGE_PREFECT_FLOW_RUN_ID"] == "f1" and env["DVC_EXP_NAME"] == "e1"
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////x/mlflow.db"
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / "src")  # the workspace's own code first
    assert dvc.subprocess_env(tmp_path, tracking_uri="u", parent_run_id=None, flow_run_id=None, exp_name="e",
                              git_rev=None, device=None)["CUDA_VISIBLE_DEVICES"] == ""


def test_command_failed_exit_2_is_not_transient(tmp_path):
    with pytest.raises(dvc.CommandFailed) as e:
        dvc.run(
            [sys.executable, "-c", "import sys; print('bad key'); sys.exit(2)"],
            tmp_path,
            log_to=open("/dev/null", "w"),
        )
    assert e.value.returncode == 2 and not e.value.transient and "bad key" in str(e.value)
    with pytest.raises(dvc.CommandFailed) as e:
        dvc.run([sys.executable, "-c", "import sys; sys.exit(1)"], tmp_path, log_to=open("/dev/null", "w"))
    assert e.value.transient


# -- GPU slots -> CUDA_VISIBLE_DEVICES (fast) -----------------------------------------------
def test_visible_gpus_from_env(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu.visible_gpus() == ["2", "3"]
    assert gpu.n_slots(gpu.visible_gpus()) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.visible_gpus() == [] and gpu.n_slots([]) == 1  # a CPU machine still gets one slot


def test_each_holder_gets_its_own_device(tmp_path):
    with gpu.claim_device(["0", "1"], tmp_path) as a:
        with gpu.claim_device(["0", "1"], tmp_path) as b:
            assert {a, b} == {"0", "1"}
            with pytest.raises(TimeoutError):  # both taken: a third waits instead of sharing
                with gpu.claim_device(["0", "1"], tmp_path, poll_s=0.05, timeout_s=0.2):
                    pass
    with gpu.claim_device(["0", "1"], tmp_path) as c:  # released on exit
        assert c == "0"


def test_device_lock_holds_across_processes(tmp_path):
    code = ("import sys,time; from pathlib import Path; from flows.orchestration.gpu import claim_device\n"
            "with claim_device(['7'], Path(sys.argv[1])) as d:\n print(d, flush=True); time.sleep(3)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "7"
        with pytest.raises(TimeoutError):
            with gpu.claim_device(["7"], tmp_path, poll_s=0.05, timeout_s=0.3):
                pass
    finally:
        proc.wait(timeout=10)
    with gpu.claim_device(["7"], tmp_path, timeout_s=1) as d:
        assert d == "7"


# -- with a Prefect API (slow: the test server takes ~10 s to start) ---------------------------
@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_training_tasks_on_one_slot_run_one_after_the_other(prefect_api, tmp_path):
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    assert gpu.ensure_gpu_limit(1) == 1
    assert gpu.ensure_gpu_limit(4) == 1  # an existing limit is left as it is

    @task
    def train(i: int) -> tuple[float, float, str]:
        with gpu.gpu_slot(tmp_path / "locks", devices=["0"]) as device:
            t0 = time.monotonic()
            time.sleep(1.5)
            return t0, time.monotonic(), device

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def two_trainings():
        futures = [train.submit(i) for i in range(2)]
        return [f.result() for f in futures]

    (s1, e1, d1), (s2, e2, d2) = sorted(two_trainings())
    assert e1 <= s2, f"overlap: first ran {s1:.2f}-{e1:.2f}, second started {s2:.2f}"
    assert d1 == d2 == "0"


@pytest.mark.slow
def test_transient_stage_failure_is_retried_bad_input_is_not(prefect_api, monkeypatch, tmp_path):
    from prefect import flow

    import flows.pipeline as fp

    calls = []

    def flaky(cmd, cwd, env=None, log_to=None, on_line=None):
        calls.append(cmd)
        if len(calls) == 1:
            raise dvc.CommandFailed("dvc repro failed: lock busy", 1)
        return ""

    monkeypatch.setattr(fp.dvc, "run", flaky)

    @flow
    def one_stage(stage: str):  # as the pipeline calls a stage task: its state, then what DVC did
        state = fp.cpu_stage.with_options(retry_delay_seconds=0)(stage, tmp_path, {}, return_state=True)
        return state.result()

    assert one_stage("prepare") == "unchanged"
    assert len(calls) == 2 and calls[0][-1] == "prepare"

    calls.clear()
    monkeypatch.setattr(fp.dvc, "run", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        dvc.CommandFailed("prepare: error: prepare.manifest: not found", 2)))
    with pytest.raises(dvc.CommandFailed):
        one_stage("prepare")
    assert len(calls) == 1  # exit code 2 = bad input: no retry


def _dag_stages(repo: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


@pytest.mark.slow
@pytest.mark.long
def test_flow_runs_the_dag_as_a_dvc_experiment_with_mlflow_runs(prefect_api, repo_copy, monkeypatch):
    from flows.pipeline import pipeline

    db = repo_copy / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("TRISTAGE_TRACKING", raising=False)
    stages = _dag_stages(repo_copy)
    assert stages[-1] == "evaluate"
    result = pipeline(overrides={"corpus.utts_per_speaker": 6, "speaker_mapping.min_samples": 3,
                                 "stage2.grl_lambda": 2.0},
                      target=None, exp_name="flowtest", repo=str(repo_copy))

    assert result["stages"] == stages  # the whole DAG
    assert result["metrics"]["prepare.rows_in"] == 4 * 6  # the override reached the stage
    assert result["metrics"]["stage2.grl_lambda"] == 2.0
    assert not (repo_copy / ".tristage" / "runs" / "flowtest").exists()  # workspace removed after success
    assert not (repo_copy / "data").exists()  # the main workspace's outputs untouched

    # the run is a DVC experiment of the copy's HEAD, with its params and metrics
    out = subprocess.run([str(Path(sys.executable).with_name("dvc")), "exp", "show", "--json"], cwd=repo_copy,
                         capture_output=True, text=True, check=True).stdout
    shown = json.dumps(json.loads(out))
    assert '"flowtest"' in shown

    # MLflow: one parent run, one child per stage, with the contract's metric keys and tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("tristage")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tristage.role") == "flow"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {
        r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(result["stages"])
    for r in children.values():
        assert r.data.tags["dvc_experiment"] == "flowtest"
        assert r.data.tags["prefect_flow_run_id"] == parent.data.tags["prefect_flow_run_id"]
        assert len(r.data.tags["git_revision"]) == 40
    assert {"rows_in", "rows_kept", "rows_rejected"} <= set(children["prepare"].data.metrics)
    assert {
        "total_samples",
        "total_speakers",
        "speakers_with_min_samples",
        "selected_speakers",
        "selected_samples",
        "selected_fraction",
    } <= set(children["speaker_mapping"].data.metrics)
    assert {"mel_loss", "mel_top1", "trainable_params", "total_params", "trainable_fraction"} <= \
        set(children["stage1"].data.metrics)
    assert {"speaker_loss", "speaker_acc", "grl_lambda", "speaker_loss_weight"} <= set(
        children["stage2"].data.metrics
    )
    assert {
        f"{s}.{k}"
        for s in ("stage1", "stage2", "stage3")
        for k in ("mel_loss", "mel_top1", "speaker_probe_acc", "emotion_probe_acc")
    } <= set(children["evaluate"].data.metrics)
    assert children["prepare"].data.params["prepare.min_duration"]  # the stage's params are logged
    assert parent.data.metrics["prepare/rows_in"] == 24
    assert parent.data.params["overrides.corpus.utts_per_speaker"] == "6"

    from tristage.runs.compare import compare

    rows = compare(f"sqlite:///{db}", fmt="json", out=open("/dev/null", "w"))
    assert [r["run"] for r in rows] == ["flowtest"] and rows[0]["stages"] == len(result["stages"])

    # a bad override fails before any work, naming the key, and leaves no workspace behind
    with pytest.raises(UserError, match="stage2.grl_lambda"):
        pipeline(overrides={"stage2.grl_lambda": "not-a-number"}, target="corpus", exp_name="bad",
                 repo=str(repo_copy))
    assert not (repo_copy / ".tristage" / "runs" / "bad").exists()


def _cache_objects(repo: Path) -> set[str]:
    md5 = repo / ".dvc" / "cache" / "files" / "md5"
    return {str(p.relative_to(md5)) for p in md5.rglob("*") if p.is_file()} if md5.is_dir() else set()


@pytest.mark.slow
def test_flow_reuses_the_cache_of_dvc_repro_and_names_its_task_runs(prefect_api, reproduced_template,
                                                                     tmp_path, monkeypatch):
    """After `dvc repro` (the shrunk DAG, reproduced once for the test run), a flow run with a changed
    stage2 param runs only stage2 (the stages before come out of the shared DVC cache, adding nothing to
    it); its task runs carry the stage names and the stages' log lines, and a summary artifact names the
    experiment and the MLflow parent run."""
    import yaml
    from conftest import clone_reproduced
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterTaskRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from flows.pipeline import pipeline

    repo_copy = clone_reproduced(reproduced_template[0], tmp_path / "repo")
    # committed, as a user commits what `dvc repro` wrote: a flow run starts from HEAD's dvc.lock (the
    # working tree's may be stale), so the shrunk params' lock must be HEAD's for its stages to be reused
    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=repo_copy,
                                    check=True, capture_output=True)
    git("add", "-A")
    git("commit", "-qm", "dvc repro of the shrunk params")
    monkeypatch.setenv("TRISTAGE_TRACKING", "0")  # the stages' own MLflow runs are not under test here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo_copy / 'mlflow.db'}")
    before = _cache_objects(repo_copy)
    assert before

    result = pipeline(overrides={"stage2.grl_lambda": 0.5}, target="stage2", exp_name="lam-half",
                      repo=str(repo_copy), keep_workspace=True)
    stages = result["stages"]
    assert stages[-1] == "stage2"
    assert result["outcomes"]["stage2"] == "ran"
    assert {result["outcomes"][s] for s in stages[:-1]} <= {"restored", "unchanged"}, result["outcomes"]
    cache = repo_copy / ".dvc" / "cache" / "files" / "md5"
    assert not (cache / "files").exists(), "a second DVC cache nested inside the first"
    lock = yaml.safe_load((Path(result["workspace"]) / "dvc.lock").read_text())["stages"]

    def cached_outs(stage: str) -> set[str]:  # the cache objects of the stage's `outs` (not metrics/plots)
        paths = {next(iter(o)) if isinstance(o, dict) else o for o in dag[stage].get("outs", [])}
        return {f"{o['md5'][:2]}/{o['md5'][2:]}" for o in lock[stage]["outs"] if o["path"] in paths}

    dag = yaml.safe_load((repo_copy / "dvc.yaml").read_text())["stages"]
    for stage in stages[:-1]:  # every output of an unchanged stage was in the cache before the run
        assert cached_outs(stage) and cached_outs(stage) <= before, stage
    added = _cache_objects(repo_copy) - before
    assert cached_outs("stage2") <= added  # what the run added is stage2's new model

    with get_client(sync_client=True) as client:
        flow_run_id = result["flow_run_id"]
        task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
        by_name = {t.name: t for t in task_runs}
        assert "stage2 (gpu slot)" in by_name and "corpus" in by_name, sorted(by_name)
        stage2_task = by_name["stage2 (gpu slot)"].id
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[stage2_task])))
        text = "\n".join(entry.message for entry in logs)
        assert "Running stage 'stage2'" in text  # the stage's own output, in the task's log
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(artifacts) == 1 and artifacts[0].key == "tristage-run-summary"
    assert "lam-half" in artifacts[0].data and str(result["mlflow_parent_run_id"]) in artifacts[0].data
    assert "| stage2 | ran |" in artifacts[0].data


@pytest.mark.slow
def test_serve_creates_the_gpu_limit_before_the_first_run(prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    import flows.serve as serve

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name("gpu")
        except ObjectNotFound:
            pass
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert serve.create_gpu_limit() == 2
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu").limit == 2


def _git_dvc_repo(path: Path) -> Path:
    from conftest import project_env

    path.mkdir()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True, env=project_env())
    return path


def test_workspaces_created_at_once_and_a_failed_git_add_retried_once(tmp_path, monkeypatch, caplog):
    """Sweep points create their worktrees at the same moment: each gets one. A `git worktree add` that
    fails is cleaned up and tried once more (logged); failing twice raises with git's exit code."""
    import threading

    from flows.orchestration import workspace as ws

    repo = _git_dvc_repo(tmp_path / "repo")
    made, errors = [], []

    def create(name):
        try:
            made.append(ws.create_workspace(repo, name))
        except Exception as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=create, args=(f"p{i}",)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and sorted(p.name for p in made) == ["p0", "p1", "p2", "p3"]
    assert all((p / ".dvc" / "config.local").is_file() for p in made)

    real, adds = ws._git, []

    def flaky(args, cwd, check=True):
        if args[:2] == ["worktree", "add"]:
            adds.append(args)
            if len(adds) <= fail_first:
                return real(["worktree", "add", "--no-such-flag"], cwd, check)  # git exits 129
        return real(args, cwd, check)

    monkeypatch.setattr(ws, "_git", flaky)
    fail_first = 1
    with caplog.at_level("WARNING"):
        path = ws.create_workspace(repo, "retried")
    assert path.is_dir() and len(adds) == 2 and "trying once more" in caplog.text
    adds.clear()
    fail_first = 2
    with pytest.raises(RuntimeError, match=r"git worktree add --no-such-flag failed in .* \(exit code 129\)"):
        ws.create_workspace(repo, "twice")
    assert not (repo / ".tristage" / "runs" / "twice").exists()


# -- what a person sees of a flow run: task states, run graph, logs, artifact, one-line errors ---------------
_FAKE_DAG = """stages:
  corpus:
    cmd: python -c pass
    outs: [data/raw]
  prepare:
    cmd: python -c pass
    deps: [data/raw]
    params: [prepare.min_duration]
    outs: [data/prepared]
    metrics:
    - metrics/prepare.json:
        cache: false
  annotate:
    cmd: python -c pass
    deps: [data/prepared]
    outs: [data/annotated]
  features:
    cmd: python -c pass
    deps: [data/prepared]
    outs: [data/features]
"""
# what `dvc repro --single-item <stage>` prints, per stage (a glued warning and DVC's advice in prepare's)
_FAKE_LOGS = {
    "corpus": "Stage 'corpus' didn't change, skipping\n",
    "prepare": ("Running stage 'prepare':\n> python -c pass\n\r 50%|#####     | 1/2 [00:01<00:01,  1.00it/s]"
                "12:00:01 prepare WARNING speaker_acc below the band\n\rdone\n"
                "\nTo track the changes with git, run:\n\n\tgit add dvc.lock metrics/prepare.json\n"
                "Use `dvc push` to send your updates to remote storage.\n"),
    "annotate": "Stage 'annotate' is cached - skipping run, checking out outputs\n",
    "features": "Running stage 'features':\n> python -c pass\n",
}


def _fake_dag_repo(path: Path) -> Path:
    from conftest import project_env

    (path / "metrics").mkdir(parents=True)
    (path / "dvc.yaml").write_text(_FAKE_DAG)
    (path / "params.yaml").write_text("prepare:\n  min_duration: 0.5\n")
    (path / "metrics" / "prepare.json").write_text('{"rows_in": 20, "rows_kept": 20}')
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True, env=project_env())
    return path


def _read_logs(client, log_filter, until: str, timeout_s: float = 20.0) -> list:
    """The logs that match `log_filter` once one of them holds `until` (logs reach the API in batches)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = client.read_logs(log_filter=log_filter)
        if any(until in e.message for e in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _fake_dvc(fail: dict[str, str] | None = None):
    """`dvc.run` that runs nothing: a stage's log comes from _FAKE_LOGS; `fail` = {stage: its error line}
    makes that stage exit with code 2, as a stage's UserError does."""
    def run(cmd, cwd, env=None, log_to=None, on_line=None):
        text = ""
        if cmd[1] == "repro":
            stage = cmd[-1]
            text = _FAKE_LOGS[stage]
            if stage == "prepare":
                (Path(cwd) / "metrics" / "prepare.json").write_text('{"rows_in": 24, "rows_kept": 20}')
        for line in text.splitlines(keepends=True):
            on_line(line)
        if on_line is not None and hasattr(on_line, "close"):
            on_line.close()
        if cmd[1] == "repro" and cmd[-1] in (fail or {}):
            on_line(fail[cmd[-1]] + "\n")
            message = f"{' '.join(cmd)} failed with exit code 2 in {cwd}:\n{fail[cmd[-1]]}\n"
            raise dvc.CommandFailed(message, 2)
        return text
    return run


@pytest.mark.slow
def test_flow_run_as_seen_in_the_ui_states_graph_logs_artifact(prefect_api, tmp_path, monkeypatch):
    """A skipped stage ends in a Completed state named after what DVC did; each stage task waits on the
    stages it reads from (the run graph is the DAG, not a star around the workspace task); a warning
    glued to a progress bar is a WARNING record and DVC's git/push advice is dropped; the artifact starts
    with what ran; MLflow has every stage under the flow's parent run, tagged with its outcome."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterTaskRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    import flows.pipeline as fp

    repo = _fake_dag_repo(tmp_path / "repo")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(fp.dvc, "run", _fake_dvc())
    result = fp.pipeline(exp_name="fake", repo=str(repo))
    assert result["outcomes"] == {"corpus": "unchanged", "prepare": "ran", "annotate": "restored",
                                  "features": "ran"}

    with get_client(sync_client=True) as client:
        runs_ = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[result["flow_run_id"]])))
        by_name = {re.sub(r"-[0-9a-f]{3}$", "", t.name): t for t in runs_}  # `workspace-de7`: workspace
        by_id = {str(t.id): n for n, t in by_name.items()}
        states = {n: (t.state.type.value, t.state.name) for n, t in by_name.items()}
        assert states["corpus"] == ("COMPLETED", "Unchanged")
        assert states["annotate"] == ("COMPLETED", "Restored")
        assert states["prepare"] == ("COMPLETED", "Completed")

        def upstream(name):
            return {by_id[str(i.id)] for inputs in by_name[name].task_inputs.values() for i in inputs
                    if getattr(i, "id", None) is not None}

        assert upstream("corpus") == {"workspace"}
        assert upstream("prepare") == {"corpus"}
        assert upstream("annotate") == upstream("features (gpu slot)") == {"prepare"}
        assert upstream("exp-save") == {"annotate", "features (gpu slot)"}

        logs = _read_logs(client, LogFilter(task_run_id=LogFilterTaskRunId(any_=[by_name["prepare"].id])),
                          "below the band")
        warned = [e for e in logs if "below the band" in e.message]
        assert [e.level for e in warned] == [logging.WARNING], [(e.level, e.message) for e in logs]
        assert not any("git add" in e.message or "dvc push" in e.message for e in logs)
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]])))[0].data
    lines = artifact.splitlines()
    assert lines[0] == "# tristage run `fake`: FINISHED" and lines[2] == "- **Ran:** prepare, features"
    assert "| prepare.rows_in | 20 | 24 | +4 |" in artifact

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tristage")
    parent = result["mlflow_parent_run_id"]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {(r.data.tags["stage"], r.data.tags["dvc_outcome"], r.info.status) for r in children} == {
        ("corpus", "unchanged", "FINISHED"), ("prepare", "ran", "FINISHED"),
        ("annotate", "restored", "FINISHED"), ("features", "ran", "FINISHED")}
    assert {r.info.run_name for r in children} >= {"corpus (unchanged)", "annotate (restored)"}
    assert next(r for r in children if r.data.tags["stage"] == "prepare").data.metrics["rows_in"] == 24


@pytest.mark.slow
def test_user_errors_fail_a_flow_in_one_line_without_traceback(prefect_api, tmp_path, monkeypatch):
    """A misspelt override key, and a stage that exits with code 2 (a GPU stage, which is not retried): the
    flow run ends Failed with the one-line message, no traceback anywhere in its logs; a Python caller
    still gets the exception."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    import flows.pipeline as fp

    repo = _fake_dag_repo(tmp_path / "repo")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    error = "features: error: features.manifest: x.jsonl not found"
    monkeypatch.setattr(fp.dvc, "run", _fake_dvc({"features": error}))

    def logs_of(state):
        flow_run_id = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            runs_ = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            assert runs_[0].state.is_failed()
            logs = _read_logs(client, LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                              "Finished in state Failed")
            return "\n".join(e.message for e in logs)

    misspelt = fp.pipeline(overrides={"prepare.min_duratoin": 1.0}, exp_name="bad-key", repo=str(repo),
                           return_state=True)
    assert misspelt.is_failed() and "\n" not in misspelt.message
    assert "did you mean prepare.min_duration?" in misspelt.message
    text = logs_of(misspelt)
    assert "Traceback" not in text and "did you mean prepare.min_duration?" in text
    with pytest.raises(UserError, match="did you mean prepare.min_duration"):
        fp.pipeline(overrides={"prepare.min_duratoin": 1.0}, exp_name="bad-key2", repo=str(repo))

    stage_failed = fp.pipeline(exp_name="bad-input", repo=str(repo), return_state=True)
    assert stage_failed.message == error
    text = logs_of(stage_failed)
    assert "Traceback" not in text and "NoneType: None" not in text  # (Prefect's empty traceback)
