#!/usr/bin/env python
"""Two-phase LoRA training (pretrain: language modelling; finetune: the task) with the HF Trainer.

    python scripts/run_two_phase.py --output_dir runs/demo            # MiniLM + VADER default
    python scripts/run_two_phase.py --model_name_or_path bert-base-uncased \
        --train_file train.csv --validation_file dev.csv --output_dir runs/mine
    python scripts/run_two_phase.py config.yaml                       # the same flags in a file
    accelerate launch --multi_gpu --num_processes 2 scripts/run_two_phase.py --use_cpu true --ddp_backend gloo --output_dir runs/ddp

`lora-hf train` takes the same arguments.
"""

import sys

from lora_hf.training import main

if __name__ == "__main__":
    sys.exit(main())
