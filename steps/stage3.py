"""stage3: fine-tuning: speaker and emotion conditioners frozen, GRL off, lr x0.5.

    python -m steps.stage3 [--params params.yaml] [--set stage3.steps=100]
    torchrun --nproc_per_node 2 -m steps.stage3      # DDP (gloo on CPU, NCCL on GPU)

What trains is data: tristage/training/presets.py. Writes models/stage3/, metrics/stage3.json, plots/stage3/.
"""
from tristage.stage import main_training


def run(params, tracker):
    from tristage.training.trainer import train_stage

    return train_stage("stage3", params, tracker=tracker)


if __name__ == "__main__":
    main_training("stage3", run, description=__doc__)
