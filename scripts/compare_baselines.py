#!/usr/bin/env python
"""Two-phase LoRA vs fine-tune-only LoRA vs full fine-tuning on the default task (MiniLM + VADER movies).

    python scripts/compare_baselines.py --output_dir runs/compare [--readme README.md] [-- extra train flags]

Each system is one `lora-hf train` run with the same seed and finetune settings; the table
(test accuracy, trainable share, train time, checkpoint size) is printed and written into the
README between the `baselines` markers.
"""

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch
import transformers

from lora_hf.training import main as train

SYSTEMS = {
    "two-phase LoRA (pretrain + finetune)": [],
    "LoRA, finetune only": ["--skip_pretrain"],
    "full fine-tuning": ["--full_finetune"],
}
START, END = "<!-- baselines:start -->", "<!-- baselines:end -->"


def measure(out: Path, flags: list) -> dict:
    # Runs trained before run_record.json existed kept the record in all_results.json.
    if not (out / "run_record.json").is_file() and not (out / "all_results.json").is_file():
        code = train(["--output_dir", str(out), *flags])
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
        "checkpoint_mb": (out / "model.safetensors").stat().st_size / 1e6,
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
