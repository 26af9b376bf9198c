"""What a person sees of a flow run (fast, no Prefect server): the stage logs forwarded to the task's Logs
tab, one-line user errors, the run form's parameter types, the summary artifact's order, and the run
workspace's start (the working tree's inputs, never its stale DVC outputs)."""
from __future__ import annotations

import json
import logging
import subprocess

import pytest

from flows.orchestration import dvc, report, workspace
from tristage.errors import UserError


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _forward(chunks, every_s=15.0, advance=1.0):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("test.flow_report.forwarder")
    logger.propagate, logger.level = False, logging.DEBUG
    handler = Keep()
    logger.addHandler(handler)
    clock = _Clock()
    fwd = dvc.LogForwarder(logger, every_s=every_s, clock=clock)
    try:
        for chunk in chunks:
            clock.now += advance
            fwd(chunk)
        fwd.close()
    finally:
        logger.removeHandler(handler)
    return [(r.levelno, r.getMessage()) for r in records]


# -- stage logs in the Prefect task's Logs tab -------------------------------------------------------------
def test_a_warning_glued_to_a_tqdm_bar_reaches_the_log_as_a_warning():
    """tqdm redraws its bar with `\\r` and never ends the line: a warning logged meanwhile is glued onto
    the bar's text. It must still come out as a WARNING record of its own, while the bar stays throttled."""
    bar = "stage2:  {0}%|####      | {0}/100 [00:0{1}<00:10,  2.00it/s]"
    stream = "".join("\r" + bar.format(i, i % 10) for i in range(40, 45))
    stream += "12:00:01 stage2 WARNING stage2 step 44: speaker_acc 0.120 below the band [0.30, 0.60]\n"
    out = _forward([stream, "\r" + bar.format(100, 9) + "\n"])
    warnings = [(lvl, msg) for lvl, msg in out if "below the band" in msg]
    assert warnings == [(logging.WARNING, "12:00:01 stage2 WARNING stage2 step 44: speaker_acc 0.120 "
                                          "below the band [0.30, 0.60]")]
    bars = [msg for _, msg in out if "it/s" in msg]
    assert bars[0] == bar.format(40, 0) and bars[-1] == bar.format(100, 9)
    assert len(bars) == 2, bars  # 40% at once, then nothing for 15 s but the last line at the end
    assert all(lvl == logging.INFO for lvl, msg in out if "it/s" in msg)


def test_a_warning_after_a_bar_without_its_tail_and_errors_as_errors():
    out = _forward(["\r 10%|#  | 1/10 [00:01WARNING: lock busy\n",
                    "stage2: error: stage2.manifest: not found\n",
                    "Traceback (most recent call last):\n",
                    "ValueError: bad shape\n",
                    "/x/y.py:3: UserWarning: slow path\n",
                    "12:00:02 stage2 INFO band_warnings 4 (counted)\n"])
    levels = dict((msg, lvl) for lvl, msg in out)
    assert levels["WARNING: lock busy"] == logging.WARNING
    assert levels["stage2: error: stage2.manifest: not found"] == logging.ERROR
    assert levels["Traceback (most recent call last):"] == logging.ERROR
    assert levels["ValueError: bad shape"] == logging.ERROR
    assert levels["/x/y.py:3: UserWarning: slow path"] == logging.WARNING
    assert levels["12:00:02 stage2 INFO band_warnings 4 (counted)"] == logging.INFO


def test_dvc_advice_that_a_run_workspace_does_not_follow_is_left_out():
    dvc_tail = ("Updating lock file 'dvc.lock'\n\nTo track the changes with git, run:\n\n"
                "\tgit add dvc.lock metrics/stage2.json\n\nTo enable auto staging, run:\n\n"
                "\tdvc config core.autostage true\nUse `dvc push` to send your updates to remote storage.\n")
    kept = [msg for _, msg in _forward(dvc_tail.splitlines(keepends=True))]
    assert kept == ["Updating lock file 'dvc.lock'"]


# -- user errors: one line -------------------------------------------------------------------------------
def test_failure_line_is_the_stage_error_line_or_the_message():
    failed = dvc.CommandFailed("dvc repro --single-item prepare failed with exit code 2 in /ws:\n"
                               "Running stage 'prepare':\n> python -m steps.prepare\n"
                               "prepare: error: prepare.manifest: data/x.jsonl not found\n", 2)
    assert dvc.is_user_error(failed) and not dvc.is_user_error(dvc.CommandFailed("crash", 1))
    assert dvc.failure_line(failed) == "prepare: error: prepare.manifest: data/x.jsonl not found"
    assert dvc.failure_line(UserError("overrides: a.b: no such key;\n did you mean a.c?")) == \
        "overrides: a.b: no such key; did you mean a.c?"
    assert dvc.is_user_error(UserError("x")) and not dvc.is_user_error(ValueError("x"))


def test_a_user_error_becomes_a_failed_state_with_its_one_line_message():
    from flows.pipeline import user_errors_in_one_line

    def bad():
        raise UserError("overrides: stage2.grl_lambdda: no such key in params.yaml; did you mean "
                        "stage2.grl_lambda?")

    state = user_errors_in_one_line(bad)()
    assert state.is_failed() and "\n" not in state.message
    assert "did you mean stage2.grl_lambda?" in state.message
    with pytest.raises(UserError):  # the caller of the flow still gets the exception
        state.result()
    with pytest.raises(ZeroDivisionError):  # a bug is raised as it is (its traceback in the log)
        user_errors_in_one_line(lambda: 1 / 0)()


# -- the run form -----------------------------------------------------------------------------------------
def test_run_form_fields_are_fillable_without_toggles_and_target_is_a_drop_down():
    """Every parameter of both deployments has one plain type and a default (no `anyOf` with null, which
    the Prefect form shows as a None/value toggle); `target` is an enum; None from an older caller still
    means "not given"."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline
    from flows.sweep import sweep

    for flow_ in (pipeline, sweep):
        props = parameter_schema(flow_.fn).model_dump()["properties"]
        for name, prop in props.items():
            assert "anyOf" not in prop and prop.get("type") in ("object", "string", "boolean", "integer"), \
                (flow_.name, name, prop)
            assert "default" in prop and prop.get("description"), (flow_.name, name)
        assert "stage2" in props["target"]["enum"]
    props = parameter_schema(pipeline.fn).model_dump()["properties"]
    assert props["target"]["enum"][0] == "all" and props["target"]["default"] == "all"
    assert props["target"]["enum"][-1] == "evaluate"
    assert props["overrides"]["default"] == {}
    assert {"stage2.grl_lambda": 2.0} in props["overrides"]["examples"]
    assert props["exp_name"]["type"] == "string" and props["exp_name"]["default"] == ""
    given = pipeline.validate_parameters({"overrides": None, "target": None, "exp_name": None, "repo": None})
    assert given == {"overrides": {}, "target": "all", "exp_name": "", "include_local_changes": True,
                     "keep_workspace": False, "repo": ""}
    with pytest.raises(Exception, match="target"):
        pipeline.validate_parameters({"target": "stage9"})
    given = sweep.validate_parameters({"grid": None, "ranges": None, "overrides": None, "name": None,
                                       "cpu_slots": None, "repo": None})
    assert (given["grid"], given["ranges"], given["name"], given["cpu_slots"]) == ({}, {}, "", 0)


# -- the summary artifact: what ran and what changed first --------------------------------------------------
def _workspace_with_history(tmp_path):
    """A git repo whose HEAD has metrics/stage2.json; the run then rewrote it."""
    ws = tmp_path / "ws"
    (ws / "metrics").mkdir(parents=True)
    head = {"mel_loss": 2.5, "speaker_acc": 0.2, "speaker_acc_band": "below", "steps": 300}
    (ws / "metrics" / "stage2.json").write_text(json.dumps(head))
    (ws / "metrics" / "corpus.json").write_text(json.dumps({f"k{i}": i for i in range(60)}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "head"]):
        subprocess.run(git + cmd, cwd=ws, check=True, capture_output=True)
    (ws / "metrics" / "stage2.json").write_text(json.dumps({**head, "mel_loss": 2.25, "speaker_acc": 0.45,
                                                            "speaker_acc_band": "in"}))
    return ws


def test_summary_starts_with_what_ran_and_what_changed(tmp_path):
    ws = _workspace_with_history(tmp_path)
    stages = ["corpus", "stage1", "stage2"]
    outcomes = {"corpus": "unchanged", "stage1": "restored", "stage2": "ran"}
    md = report.summary_markdown(
        name="lam-half", status="FINISHED", stages=stages, outcomes=outcomes,
        metrics={s: report.stage_metrics(ws, s) for s in stages}, parent_run_id="p1",
        tracking_uri="sqlite:////x/mlflow.db", plots=[], overrides={"stage2.grl_lambda": 0.5},
        baseline={s: report.baseline_metrics(ws, s) for s in ("stage1", "stage2")},
        changes={"copied": ["params.yaml"], "deleted": [],
                 "not_copied": ["dvc.lock", "metrics/evaluate.json"]},
        git_rev="abcdef0123", advice="lower stage2.grl_lambda", mlflow_url="http://127.0.0.1:5000/#/x")
    lines = md.splitlines()
    assert lines[0] == "# tristage run `lam-half`: FINISHED"
    assert lines[2] == "- **Ran:** stage2"
    assert "Restored" in lines[3] and "stage1" in lines[3]
    assert "Unchanged" in lines[4] and "corpus" in lines[4]
    started = next(ln for ln in lines if ln.startswith("- **Started from:**"))
    assert "`abcdef0`" in started and "`params.yaml`" in started and "`metrics/evaluate.json`" in started
    changed = lines.index("## What changed against HEAD `abcdef0` (`dvc metrics diff HEAD lam-half`)")
    assert changed < 15 and lines.index("## Stages") > changed
    assert "| stage2.mel_loss | 2.5 | 2.25 | -0.25 |" in md
    assert "| stage2.speaker_acc_band | below | in |  |" in md
    assert "stage2.steps" not in md.split("## Stages")[0]  # unchanged figures are not "changes"
    assert "> **Band advice (stage2):** lower stage2.grl_lambda" in md
    assert "k59" not in md  # an unchanged stage's metrics: HEAD's, not listed again
    assert "http://127.0.0.1:5000/#/x" in md and "| corpus | unchanged |" in md


# -- the run workspace: the working tree's inputs, never its DVC outputs ------------------------------------
def test_workspace_takes_changed_inputs_but_not_stale_dvc_outputs(tmp_path):
    from conftest import project_env

    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: python -c pass\n    deps: [params.yaml]\n"
                                   "    outs: [data/prepared]\n    metrics:\n    - metrics/prepare.json:\n"
                                   "        cache: false\n")
    (repo / "params.yaml").write_text("prepare:\n  min_duration: 0.5\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "metrics" / "prepare.json").write_text('{"rows_in": 10}')
    env = project_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=env)
    (repo / "params.yaml").write_text("prepare:\n  min_duration: 0.7\n")  # an input: goes with the run
    (repo / "metrics" / "prepare.json").write_text('{"rows_in": 99}')  # a stale output: stays behind
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {prepare: {}}\n")
    (repo / "notes.txt").write_text("new")
    changes: dict = {}
    ws = workspace.create_workspace(repo, "r1", include_local_changes=True, changes=changes)
    assert (ws / "params.yaml").read_text() == "prepare:\n  min_duration: 0.7\n"
    assert json.loads((ws / "metrics" / "prepare.json").read_text()) == {"rows_in": 10}  # HEAD's
    assert (ws / "dvc.lock").read_text() == "schema: '2.0'\nstages: {}\n"
    assert sorted(changes["copied"]) == ["notes.txt", "params.yaml"]
    assert sorted(changes["not_copied"]) == ["dvc.lock", "metrics/prepare.json"]
    assert workspace.is_output("data/prepared/x.parquet", workspace.dvc_outputs(ws))
