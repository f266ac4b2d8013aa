#!/usr/bin/env python
"""Two-phase LoRA vs finetune-only LoRA vs PEFT LoRA vs full fine-tuning on the default task (MiniLM + VADER movies).

    python scripts/compare_baselines.py --output_dir runs/compare [--readme README.md] [-- extra train flags]

Each system is one `lora-hf train` run with the same seed and finetune settings; the PEFT row is the
same run (same flags, data, Trainer, evaluation) with the finetune model built by `peft.get_peft_model`
(same r, alpha, dropout and target modules) instead of lora_hf. The table (test accuracy, trainable
share, train time, checkpoint size) is printed and written into the README between the `baselines` markers.
"""

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch
import transformers

from lora_hf.training import TwoPhaseRun, parse_args
from lora_hf.training import main as train

PEFT_FLAG = "--peft"  # not a lora-hf flag: this script's marker for the PEFT row
SYSTEMS = {
    "two-phase LoRA (pretrain + finetune)": [],
    "LoRA, finetune only": ["--skip_pretrain"],
    "PEFT LoRA, finetune only": ["--skip_pretrain", PEFT_FLAG],
    "full fine-tuning": ["--full_finetune"],
}


class PeftRun(TwoPhaseRun):
    """`lora-hf train --skip_pretrain` with PEFT's LoRA as the finetune model: everything else is the same run."""

    def _task_model(self, start):
        import peft

        from lora_hf.lora_layers import find_target_modules

        kwargs = self.task.label_kwargs(self.labels, self.tokenizer)
        base = self.task.model_class.backbone_auto_class.from_pretrained(start.base, use_safetensors=True, **kwargs)
        lora = self.lora_kwargs
        targets = find_target_modules(base, lora["target_modules"])  # the modules lora_hf wraps, by full name
        config = peft.LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                 use_rslora=lora["use_rslora"], target_modules=targets, task_type="SEQ_CLS")
        return peft.get_peft_model(base, config)


def train_peft(argv: list) -> int:
    args = parse_args([a for a in argv if a != PEFT_FLAG])
    try:
        PeftRun.prepare(*args).run()
    except OSError:
        # The run's last step renders lora_hf's model card, which needs a lora_hf model directory; the
        # record of the run (all that is measured here) is written before it.
        if not (Path(args[3].output_dir) / "run_record.json").is_file():
            raise
    return 0


def checkpoint_file(out: Path) -> Path:
    # PEFT saves adapter_model.safetensors (adapters + the classifier it keeps whole) in the phase directory.
    return out / "model.safetensors" if (out / "model.safetensors").is_file() else out / "finetune" / "adapter_model.safetensors"
START, END = "<!-- baselines:start -->", "<!-- baselines:end -->"


def measure(out: Path, flags: list) -> dict:
    # Runs trained before run_record.json existed kept the record in all_results.json.
    if not (out / "run_record.json").is_file() and not (out / "all_results.json").is_file():
        code = (train_peft if PEFT_FLAG in flags else train)(["--output_dir", str(out), *flags])
        if code != 0:
            raise SystemExit(f"training into {out} failed with exit code {code}")
    record = out / "run_record.json"
    results = json.loads((record if record.is_file() else out / "all_results.json").read_text())
    seconds = sum(results.get(phase, {}).get("train_wall_seconds", 0.0) for phase in ("pretrain", "finetune"))
    return {
        "test_accuracy": results["finetune"]["test_accuracy"],
        "eval_accuracy": results["finetune"]["eval_accuracy"],
        "trainable_share": results["trainable_params"] / results["total_params"],
        "train_minutes": seconds / 60,
        "command_minutes": results["wall_seconds"] / 60 if "wall_seconds" in results else float("nan"),
        "checkpoint_mb": checkpoint_file(out).stat().st_size / 1e6,
        "precision": (results.get("precision") or {}).get("precision", "fp32"),  # runs before the bf16 default: fp32
    }


def table(rows: dict, command: str) -> str:
    lines = [
        f"Measured with `{command}` on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; seed 42, 3 finetune epochs, "
        f"precision {', '.join(sorted({r['precision'] for r in rows.values()}))} (chosen from the hardware unless a flag says).",
        "",
        "| system | test accuracy | validation accuracy | trainable (finetune) | train time | whole command | checkpoint |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['test_accuracy']:.1f}% | {100 * r['eval_accuracy']:.1f}% | {100 * r['trainable_share']:.2f}% "
            f"| {r['train_minutes']:.1f} min | {r['command_minutes']:.1f} min | {r['checkpoint_mb']:.2f} MB |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/compare")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    parser.add_argument("extra", nargs="*", help="Flags passed to every run (after --).")
    args = parser.parse_args(argv)
    rows = {}
    for i, (name, flags) in enumerate(SYSTEMS.items()):
        rows[name] = measure(Path(args.output_dir) / f"system{i}", [*flags, *args.extra])
        print(f"{name}: {rows[name]}", flush=True)
    text = table(rows, "python scripts/compare_baselines.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    (Path(args.output_dir) / "baselines.json").write_text(json.dumps(rows, indent=2))
    readme = Path(args.readme)
    content = readme.read_text()
    if START in content and END in content:
        content = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", f"{START}\n{text}\n{END}", content, flags=re.S)
        readme.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
