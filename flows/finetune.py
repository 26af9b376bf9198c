"""Your own voice from the Prefect UI: `tristage finetune` as a flow, its report the flow run's artifact.

    python -m flows.finetune --data my_voice --speaker me [--steps 150]    # ad hoc
    make serve      # UI: Deployments -> tristage-finetune/finetune -> Run -> Custom run: data, speaker, ...

One task runs the command line (`python -m tristage.cli finetune ...`: its own DVC pipeline in
`models/.finetune/<speaker>/`, so a second run with the same inputs does no work); the task's Logs tab
carries its output. At the end the report (`<out>/finetune.md`: before vs after on the held-out
utterances) becomes the markdown artifact `tristage-finetune-<speaker>` (Artifacts tab). Bad input (too
few utterances, a folder that is not a model folder, ...) fails the flow with the command's one line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, task

from flows.orchestration import dvc
from flows.pipeline import Text, _example, _or, _task_logger, user_errors_in_one_line

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "finetune"
DESCRIPTION = ("Fine-tune a trained model folder on a folder of one voice's recordings (name.wav + name.txt, "
               "or ljspeech / libritts / librispeech): a new model folder models/<speaker> and its report "
               "(before vs after on held-out utterances) as the run's artifact.")
Format = Annotated[Literal["auto", "ljspeech", "libritts", "librispeech"], _or("auto")]
Preset = Annotated[Literal["finetune"], _or("finetune")]


def command(data: str, speaker: str, model: str, out: str, preset: str, steps: int, format: str,
            heldout: int, register_model: bool) -> list[str]:
    """The `tristage finetune` command line of the flow's parameters."""
    argv = [sys.executable, "-m", "tristage.cli", "finetune", "--model", model, "--data", data, "--speaker",
            speaker, "--out", out or str(Path("models") / speaker), "--preset", preset, "--format", format,
            "--heldout", str(heldout)]
    if steps:
        argv += ["--steps", str(steps)]
    return argv + (["--register"] if register_model else [])


@task(name="finetune")
@user_errors_in_one_line
def run_finetune(argv: list[str], repo: Path) -> dict:
    """The command, its output forwarded to the task's log -> the summary it prints (JSON)."""
    forward = dvc.LogForwarder(_task_logger())
    out = dvc.run(argv, repo, env={"PYTHONUNBUFFERED": "1"}, on_line=forward)
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def attach_report(summary: dict, speaker: str) -> str | None:
    """The report as the flow run's markdown artifact; its id (None outside a flow run)."""
    from prefect.artifacts import create_markdown_artifact

    report = Path(summary["out"]) / "finetune.md"
    key = "tristage-finetune-" + (re.sub(r"[^a-z0-9-]+", "-", speaker.lower()).strip("-") or "voice")
    artifact_id = create_markdown_artifact(key=key, markdown=report.read_text(encoding="utf-8"),
                                           description=f"Fine-tune of {speaker}: before vs after")
    return str(artifact_id) if artifact_id else None


@flow(name="tristage-finetune", log_prints=True)
@user_errors_in_one_line
def finetune(
    data: str = _example("", "/path/to/my_voice"),
    speaker: str = _example("", "me"),
    model: Text = _example("models/stage3", "models/stage3"),
    out: Text = _example("", "models/me"),
    preset: Preset = "finetune",
    steps: int = 0,
    format: Format = "auto",
    heldout: int = 3,
    register_model: bool = False,
    repo: Text = "",
) -> dict:
    """Fine-tune a trained model folder on one voice's recordings; the report is the run's artifact.

    Args:
        data: the folder of recordings: name.wav + name.txt pairs (any audio soundfile reads), or an
            ljspeech / libritts / librispeech folder (see `format`). At least 8 + `heldout` utterances.
        speaker: the voice's name: the stored reference in the new folder and the MLflow model name.
        model: the trained model folder to start from (relative to the repo).
        out: the new model folder; empty: models/<speaker>.
        preset: what trains (src/tristage/training/presets.py): finetune = the decoder, stage 3's lr.
        steps: training steps; 0: the preset's (150).
        format: the layout of `data`; auto tells it from the folder.
        heldout: utterances kept out of training and judged in the report (before vs after).
        register_model: register the model in MLflow under `speaker`.
        repo: the project checkout; empty: the one this flow file lives in.
    """
    repo_dir = Path(repo or os.environ.get("TRISTAGE_REPO") or REPO).resolve()
    argv = command(data, speaker, model, out, preset, steps, format, heldout, register_model)
    summary = run_finetune(argv, repo_dir)
    summary["artifact"] = attach_report(summary, speaker)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--speaker", required=True)
    p.add_argument("--model", default="models/stage3")
    p.add_argument("--out", default="")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--heldout", type=int, default=3)
    p.add_argument("--register", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(finetune(data=a.data, speaker=a.speaker, model=a.model, out=a.out, steps=a.steps,
                              heldout=a.heldout, register_model=a.register), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
