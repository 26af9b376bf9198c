"""stage2: emotion disentanglement: speaker conditioner frozen, GRL + speaker classifier on the
emotion vector.

    python -m steps.stage2 [--params params.yaml] [--set stage2.steps=100]
    torchrun --nproc_per_node 2 -m steps.stage2      # DDP (gloo on CPU, NCCL on GPU)

What trains is data: tristage/training/presets.py. Writes models/stage2/, metrics/stage2.json, plots/stage2/.
"""
from tristage.stage import main_training


def run(params, tracker):
    from tristage.training.trainer import train_stage

    return train_stage("stage2", params, tracker=tracker)


if __name__ == "__main__":
    main_training("stage2", run, description=__doc__)
