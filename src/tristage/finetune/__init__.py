"""Your own voice: fine-tune a trained model folder on a small folder of recordings (`tristage finetune`).

    tristage finetune --model models/stage3 --data my_voice/ --speaker me --out models/me [--steps N]

- `config.py`: the fine-tune's params (`<work>/finetune.yaml`, key `finetune`);
- `plan.py`: the work area, a DVC project of its own (finetune.yaml, params.yaml, dvc.yaml);
- `steps.py`: `python -m tristage.finetune.steps <step> --params finetune.yaml`, the pipeline's own steps:
  `data.py` (import, split), `train.py` (the `finetune` preset), `report.py` (before vs after), `track.py`
  (MLflow); the project's `prepare`, `annotate` and `features` stages run between them as they are;
- `run.py`: the command: write the work area, `dvc repro` it, publish the model folder and its report.

docs/finetune.md says what each step does, the preset and the measured times.
"""
