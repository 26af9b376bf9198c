"""stage3: fine-tuning: speaker and emotion conditioners frozen, GRL off, lr x0.5.

    python -m steps.stage3 [--params params.yaml] [--set stage3.steps=100]
    torchrun --nproc_per_node 2 -m steps.stage3      # DDP (gloo on CPU, NCCL on GPU)

What trains is data: tristage/training/presets.py. Writes models/stage3/, metrics/stage3.json, plots/stage3/.
"""
from tristage.stage import main_training

if __name__ == "__main__":
    main_training("stage3", description=__doc__)
