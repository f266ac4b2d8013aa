#!/usr/bin/env python
"""GPU check of the Trainer's FSDP path, which CPU cannot run (accelerate refuses FSDP on CPU; a `--fsdp`
flag there silently trains with DDP). Needs 2+ CUDA devices:

    python scripts/check_fsdp_trainer.py --output_dir runs/fsdp-check                 # MiniLM, default data
    python scripts/check_fsdp_trainer.py --output_dir runs/fsdp-check --fsdp_version 1

Trains both phases a few steps with `accelerate launch --use_fsdp` and, with the same global batch, with
DDP; then checks, for each phase, what tests/test_distributed.py checks on CPU for torch FSDP and DeepSpeed:
config.json names the lora_hf class (not `FSDPLora...`), the weights hold every LoRA tensor under its plain
name (no `_fsdp_wrapped_module`), B moved off zero, the directory loads with `AutoModelFor*`, and the adapters
equal the DDP run's within `--atol`. Exit status 0 when all hold.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def launch(kind: str, out: Path, args) -> None:
    common = ["--num_processes", str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if kind == "fsdp":
        engine = ["--use_fsdp", "--fsdp_version", str(args.fsdp_version), "--fsdp_sharding_strategy", "FULL_SHARD",
                  "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_use_orig_params", "true",
                  "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_sync_module_states", "true"]
    else:
        engine = ["--multi_gpu"]
    script = [str(REPO / "scripts" / "run_two_phase.py"), "--output_dir", str(out), "--max_steps", "5", "--pretrain_max_steps", "5",
              "--per_device_train_batch_size", "8", "--save_strategy", "no", "--eval_strategy", "no", "--max_train_samples", "512",
              "--max_pretrain_samples", "512", "--max_eval_samples", "64", "--seed", "7", "--overwrite_output_dir"]
    if args.model_name_or_path:
        script += ["--model_name_or_path", args.model_name_or_path]
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *engine, *common, *script], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model_name_or_path", default=None, help="Base model (default: MiniLM from the [demo] extra).")
    parser.add_argument("--fsdp_version", type=int, choices=[1, 2], default=2)
    parser.add_argument("--num_processes", type=int, default=torch.cuda.device_count())
    parser.add_argument("--atol", type=float, default=1e-4, help="FSDP against DDP (GPU kernels may use TF32).")
    args = parser.parse_args()
    if args.num_processes < 2:
        parser.error(f"`--num_processes` is {args.num_processes}; the check needs 2 or more CUDA devices.")
    import lora_hf  # noqa: F401  registers the Auto classes
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    root = Path(args.output_dir)
    launch("fsdp", root / "fsdp", args)
    launch("ddp", root / "ddp", args)
    failures = []
    for phase, auto in (("pretrain", AutoModelForMaskedLM), ("finetune", AutoModelForSequenceClassification)):
        fsdp, ddp = root / "fsdp" / phase, root / "ddp" / phase
        architectures = json.loads((fsdp / "config.json").read_text())["architectures"]
        saved, reference = load_file(fsdp / "model.safetensors"), load_file(ddp / "model.safetensors")
        loaded = auto.from_pretrained(fsdp)
        checks = {
            "architectures is the lora_hf class": architectures == [type(loaded).__name__] and not architectures[0].startswith("FSDP"),
            "no wrapper names": not any("_wrapped_module" in k for k in saved),
            "every tensor DDP saved": saved.keys() == reference.keys(),
            "B trained": all(v.abs().max() > 0 for k, v in saved.items() if k.endswith("lora_B")),
            f"equal to DDP within {args.atol}": saved.keys() == reference.keys()
            and max((saved[k] - reference[k]).abs().max().item() for k in saved) <= args.atol,
        }
        for what, ok in checks.items():
            print(f"{phase}: {what}: {'ok' if ok else 'FAILED'}")
            failures += [] if ok else [f"{phase}: {what}"]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
