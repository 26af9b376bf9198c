"""The everyday experiment loop (issue 13): overrides checked before DVC writes params.yaml, one
override parser, stage outcomes and logs in the flow, the run form, quiet environment in one place."""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from flows.orchestration import dvc, report
from tristage.config import check_overrides, override_items
from tristage.environment import QUIET_ENV
from tristage.errors import ParamsError, UserError

REPO = Path(__file__).resolve().parents[1]


# -- params.yaml stays in DVC's written form; overrides are checked before it is written ----------------
@pytest.mark.parametrize("override", ["stage2.grl_lambda=0.25", "caption_vectors.encoder=/models/t5",
                                      "prepare.max_duration=12.5", "stage2.steps=7"])
def test_dvc_param_writer_moves_only_the_one_line(tmp_path, override):
    from dvc.utils.hydra import apply_overrides as dvc_writer

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text().splitlines()
    dvc_writer(params, [override])  # what `dvc exp run -S` does to the file
    after = params.read_text().splitlines()
    assert len(after) == len(before)
    moved = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(moved) == 1, moved
    assert moved[0][1].strip().startswith(override.split("=")[0].rsplit(".", 1)[-1] + ":")


def test_dvc_param_writer_moves_only_a_lists_items(tmp_path):
    from dvc.utils.hydra import apply_overrides as dvc_writer

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text().splitlines()
    dvc_writer(params, ["stage2.speaker_acc_band=[0.2,0.5]"])
    after = params.read_text().splitlines()
    moved = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(after) == len(before) and [b.strip() for _, b in moved] == ["- 0.2", "- 0.5"]


def test_misspelt_key_fails_with_one_hint_and_the_file_is_untouched(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = params.read_bytes()
    with pytest.raises(UserError) as e:
        dvc.apply_overrides(params, {"stage2.grl_lambdda": 0.5})
    message = str(e.value)
    assert "did you mean stage2.grl_lambda?" in message
    assert "+" not in message and "\n" not in message  # not DVC's "use +key" beside it
    with pytest.raises(UserError, match=r"stage2\.grl_lambda: .*valid number.*'abc'"):
        dvc.apply_overrides(params, {"stage2.grl_lambda": "abc"})
    with pytest.raises(UserError, match="stage2.grl_lambda"):  # range-checked like params.yaml itself
        dvc.apply_overrides(params, {"stage2.grl_lambda": -1})
    assert params.read_bytes() == original  # a rejected override never reaches the file
    dvc.apply_overrides(params, {"stage2.grl_lambda": 0.5})
    assert params.read_bytes() != original


def test_one_override_parser_for_both_forms():
    items = ["stage2.grl_lambda=2.0", "stage2.speaker_acc_band=[0.2, 0.5]", "stage2.lr=1e-3"]
    assert override_items(items) == {"stage2.grl_lambda": 2.0, "stage2.speaker_acc_band": [0.2, 0.5],
                                     "stage2.lr": 1e-3}
    assert override_items({"stage2.grl_lambda": 2.0}) == {"stage2.grl_lambda": 2.0}
    assert override_items(None) == {}
    with pytest.raises(ParamsError, match="expected key.sub=value"):
        override_items(["stage2.grl_lambda"])
    with pytest.raises(ParamsError, match="bad key"):
        override_items({"stage2.": 1})
    assert check_overrides(REPO / "params.yaml", ["stage2.grl_lambda=0.5"]) == {"stage2.grl_lambda": 0.5}


def test_flow_cli_parses_set_with_the_shared_parser(monkeypatch):
    import flows.pipeline as fp

    seen = {}
    monkeypatch.setattr(fp, "pipeline", lambda **kw: seen.update(kw) or {"summary": ""})
    fp._main(["--set", "stage2.lr=1e-3", "--set", "stage2.speaker_acc_band=[0.2, 0.5]", "--target", "stage2"])
    assert seen["overrides"] == {"stage2.lr": 1e-3, "stage2.speaker_acc_band": [0.2, 0.5]}  # 1e-3 a float
    assert seen["target"] == "stage2"


# -- the flow: outcomes, logs, run form, summary ---------------------------------------------------------
def test_stage_outcome_from_dvc_log():
    assert dvc.stage_outcome("stage2", "Running stage 'stage2':\n> python -m steps.stage2\n") == "ran"
    cached = "Stage 'corpus' is cached - skipping run, checking out outputs\n"
    assert dvc.stage_outcome("corpus", cached) == "restored"
    assert dvc.stage_outcome("corpus", "Stage 'corpus' didn't change, skipping\n") == "unchanged"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_forwarder_throttles_progress_and_flags_warnings(caplog):
    logger = logging.getLogger("test.forwarder")
    clock = _Clock()
    fwd = dvc.LogForwarder(logger, every_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.forwarder"):
        fwd("Running stage 'stage2':\n")
        for step in range(1, 101):  # tqdm lines, one per 0.5 s
            clock.now = step * 0.5
            fwd(f"stage2:  {step}%|###   | {step}/100 [00:{step:02d}<00:10,  2.00it/s]\n")
        fwd("12:00:01 stage2 WARNING speaker_acc below the band\n")
        fwd("\n")
        fwd.close()
    texts = [r.getMessage() for r in caplog.records]
    progress = [t for t in texts if "it/s" in t]
    assert 4 <= len(progress) <= 7  # 50 s of bar at one line per 10 s, plus the last
    assert progress[-1].startswith("stage2:  100%")
    assert texts[0] == "Running stage 'stage2':"
    warn = [r for r in caplog.records if "below the band" in r.getMessage()]
    assert warn and warn[0].levelno == logging.WARNING
    assert "" not in texts


def test_run_form_documents_every_parameter_with_examples():
    from prefect.utilities.callables import parameter_schema

    import flows.pipeline as fp

    props = parameter_schema(fp.pipeline.fn).model_dump()["properties"]
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description in the run form"
    assert {"stage2.grl_lambda": 2.0} in props["overrides"]["examples"]
    target_enum = props["target"]["enum"]  # a plain drop-down: no "None" toggle before it can be filled
    assert target_enum[:2] == ["all", "corpus"] and "stage2" in target_enum and target_enum[-1] == "evaluate"
    assert "advanced" in props["repo"]["description"]
    assert fp.cpu_stage.task_run_name == "{stage}" and fp.gpu_stage.task_run_name.startswith("{stage}")


def test_summary_markdown_names_dvc_mlflow_metrics_and_plots(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "stage2.json").write_text('{"mel_loss": 3.14159, "val": {"speaker_acc": 0.41}}')
    (tmp_path / "plots" / "stage2").mkdir(parents=True)
    (tmp_path / "plots" / "stage2" / "train.tsv").write_text("step\tmel_loss\n")
    md = report.summary_markdown(
        name="lam-2", status="FINISHED", stages=["corpus", "stage2"],
        outcomes={"corpus": "restored", "stage2": "ran"},
        metrics={s: report.stage_metrics(tmp_path, s) for s in ("corpus", "stage2")}, parent_run_id="abc123",
        tracking_uri="sqlite:////x/mlflow.db", plots=report.plot_files(tmp_path, ["stage2"]),
        overrides={"stage2.grl_lambda": 2.0})
    assert "`dvc exp apply lam-2`" in md and "`abc123`" in md
    assert "| corpus | restored |" in md and "| stage2 | ran |" in md
    assert "| mel_loss | 3.142 |" in md and "| val.speaker_acc | 0.41 |" in md
    assert "- `plots/stage2/train.tsv`" in md and '{"stage2.grl_lambda": 2.0}' in md


# -- the quiet/offline environment is defined once ---------------------------------------------------------
def test_quiet_environment_defined_in_one_place():
    assert QUIET_ENV["HF_HUB_OFFLINE"] == "1" and QUIET_ENV["MLFLOW_DISABLE_TELEMETRY"] == "true"
    home = REPO / "src" / "tristage" / "environment.py"
    files = [*REPO.glob("src/**/*.py"), *REPO.glob("flows/**/*.py"), *REPO.glob("steps/*.py"),
             *REPO.glob("tests/*.py"), REPO / "Makefile"]
    names = re.compile("|".join(QUIET_ENV))
    offenders = []
    for path in files:
        if path == home or path == Path(__file__):
            continue
        lines = enumerate(path.read_text().splitlines(), 1)
        offenders += [f"{path.relative_to(REPO)}:{i}" for i, line in lines
                      if names.search(line) and not line.lstrip().startswith("#")]
    assert not offenders, f"set these from tristage.environment.QUIET_ENV instead: {offenders}"


def test_stages_keep_freed_tensor_memory_on_glibc():
    """A stage process tunes glibc's malloc (no page faults re-mapping last step's tensors); the user can
    turn it off. Checked in a child process: mallopt changes the process for good."""
    import platform
    import subprocess
    import sys

    code = "from tristage.environment import tune_malloc; print(tune_malloc())"
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                     text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "TRISTAGE_MALLOC"}
    glibc = platform.libc_ver()[0] == "glibc"
    assert run(env) == str(glibc)
    assert run({**env, "TRISTAGE_MALLOC": "system"}) == "False"


# -- plots render offline -----------------------------------------------------------------------------------
def test_dvc_plots_page_loads_no_script_from_the_internet(tmp_path):
    import subprocess
    import sys

    from conftest import copy_repo, project_env

    repo = copy_repo(tmp_path / "repo")
    for stage in ("stage1", "stage2", "stage3"):
        (repo / "plots" / stage).mkdir(parents=True, exist_ok=True)
        (repo / "plots" / stage / "train.tsv").write_text(
            "step\tmel_loss\tspeaker_acc\tval_speaker_acc\n1\t3.0\t0.5\t0.4\n2\t2.5\t0.45\t0.42\n")
    dvc_bin = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc_bin, "plots", "show", "-o", str(tmp_path / "out")], cwd=repo, env=project_env(),
                   check=True, capture_output=True, text=True)
    page = (tmp_path / "out" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=[\"']https?://", page), "the page loads a script from the internet"
    assert "vegaEmbed" in page and page.count("<script") >= 5  # 3 inlined libraries + one per plot
    assert '"mel_loss"' in page or "mel_loss" in page


def test_stage_cli_misspelt_key_gets_the_same_hint():
    from tristage.config import load_params

    hint = r"stage2\.grl_lambdda: unknown key; did you mean stage2\.grl_lambda\?"
    with pytest.raises(ParamsError, match=hint):
        load_params(REPO / "params.yaml", ["stage2.grl_lambdda=1"])
