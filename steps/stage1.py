"""stage1: basic TTS training, everything trains (GRL off).

    python -m steps.stage1 [--params params.yaml] [--set stage1.steps=100]
    torchrun --nproc_per_node 2 -m steps.stage1      # DDP (gloo on CPU, NCCL on GPU)

What trains is data: tristage/training/presets.py. Writes models/stage1/, metrics/stage1.json, plots/stage1/.
"""
from tristage.stage import main_training


def run(params, tracker):
    from tristage.training.trainer import train_stage

    return train_stage("stage1", params, tracker=tracker)


if __name__ == "__main__":
    main_training("stage1", run, description=__doc__)
