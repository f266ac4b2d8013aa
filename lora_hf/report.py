"""What `lora-hf train` shows: the precision line, each phase's header, the loss picture and the final table.

Example:
    >>> from lora_hf.report import plot_loss_curves
    >>> plot_loss_curves({"finetune": [{"step": 20, "loss": 0.61}, {"step": 40, "eval_loss": 0.55}]}, Path("loss_curve.png"))
"""

import json
import math
from collections import Counter
from pathlib import Path

from transformers import PreTrainedModel, TrainingArguments

from .modeling_lora import CONFIG_NAME, HEAD_CLASSES, LoraPreTrainedModel
from .tasks import TASKS

__all__ = ["announce_precision", "print_phase_header", "plot_loss_curves", "print_table", "usage_lines", "stalled_classifier"]


def announce_precision(args: TrainingArguments) -> dict:
    """Say which precision the run trains in and why (LoraTrainingArguments chose it; a plain TrainingArguments says it)."""
    precision = getattr(args, "precision", None) or ("bf16" if args.bf16 else "fp16" if args.fp16 else "fp32")
    reason = getattr(args, "precision_reason", None) or "as the TrainingArguments given say"
    what = "fp32" if precision == "fp32" else f"{precision} autocast (weights, adapters and optimizer states in fp32)"
    other = "`--bf16 false` trains in fp32" if precision != "fp32" else "`--bf16` trains under bf16 autocast"
    if args.should_log:  # once, not once per DDP process
        print(f"Precision: {what}, because {reason}; {other}.", flush=True)
    return {"precision": precision, "reason": reason}


def print_phase_header(phase: str, objective: str, data: str, model: PreTrainedModel) -> None:
    """What a phase is about to do: its objective and data, the groups it trains and how many parameters that is."""
    print(f"\n==== {phase} phase: {objective} on {data}")
    if isinstance(model, LoraPreTrainedModel):
        print(f"trains: {', '.join(model.config.phase_trainable[phase])}; the rest is frozen")
        model.print_trainable_parameters()
    else:
        print("trains: all (full fine-tuning)")


def plot_loss_curves(histories: dict, path: Path) -> None:
    """One panel per phase: training loss and evaluation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return
    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 3.6), squeeze=False)
    for ax, (phase, history) in zip(axes[0], histories.items()):
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        if train:  # a single point has no line to draw: mark it
            ax.plot(*zip(*train), marker="o" if len(train) == 1 else None, label="train loss")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss")
        ax.set_title(f"{phase} phase")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if train or evals:
            ax.legend()
        else:  # fewer steps than --logging_steps and no evaluation
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stalled_classifier(history: list, train_labels: list) -> str | None:
    """A warning when a classifier's training loss ended where predicting the label frequencies starts, else None.

    A diverged run (seen after a long phase 1 at learning rate 2e-3: every text then gets the same hidden state)
    still saves a model and a table; its accuracy is the majority share. The logged losses of the last third
    of the steps, against the entropy of the training labels, say so before anyone uses the model.

    Example:
        >>> stalled_classifier([{"step": s, "loss": 0.693} for s in (20, 40, 60)], [0, 1] * 50) is not None
        True
    """
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    counts = Counter(map(str, train_labels))
    if not losses or len(counts) < 2:
        return None
    prior = -sum(n / len(train_labels) * math.log(n / len(train_labels)) for n in counts.values())
    last = [loss for step, loss in losses if step > losses[-1][0] * 2 / 3] or [losses[-1][1]]
    ended = sum(last) / len(last)
    if ended < 0.95 * prior:
        return None
    return (f"the finetune phase did not learn: its training loss ended at {ended:.3f}, where predicting the label "
            f"frequencies starts ({prior:.3f}), so its predictions are near chance. Train again with a lower "
            "--learning_rate (docs/phase_one.md: 1e-3 trained where 2e-3 collapsed; a warm-up did not prevent it).")


def print_table(results: dict, out: Path | None = None) -> None:
    """The final table: each phase's evaluation metrics, the task and its columns, the trainable share, how to use the model."""
    rows = []
    for phase in ("pretrain", "finetune"):
        for key, value in sorted((results.get(phase) or {}).items()):
            if key.startswith(("eval_", "test_")) and isinstance(value, float) and not key.endswith(("_runtime", "_per_second")):
                rows.append((phase, key, value))
    if not rows and not results.get("task"):
        return
    width = max([len(k) for _, k, _ in rows] + [20])
    rule = "-" * (width + 24)
    print("\n" + "=" * (width + 24))
    print(f"{'phase':<10}{'metric':<{width + 2}}{'value':>10}")
    print(rule)
    for phase, key, value in rows:
        print(f"{phase:<10}{key:<{width + 2}}{value:>10.4f}")
    warnings = [f"WARNING: {w}" for w in results.get("warnings", [])]
    for section in (_task_lines(results), _parameter_lines(results), warnings, usage_lines(out, results) if out is not None else []):
        if section:
            print(rule)
            print("\n".join(section))
    print("=" * (width + 24))


def _task_lines(results: dict) -> list:
    if not results.get("task"):
        return []
    columns = results.get("columns") or {}
    used = f"text column {columns.get('text')!r}" + (f" + pair {columns['text_pair']!r}" if columns.get("text_pair") else "")
    used += f", label column {columns['label']!r}" if columns.get("label") else ""
    lines = [f"task: {results['task']}; {used}"]
    if results.get("label_names"):
        lines.append(f"labels: {', '.join(results['label_names'])}")
    return lines


def _parameter_lines(results: dict) -> list:
    if "trainable_params" not in results:
        return []
    share = 100 * results["trainable_params"] / results["total_params"]
    return [f"trainable params: {results['trainable_params']:,d} of {results['total_params']:,d} ({share:.3f}%)"]


def usage_lines(out: Path, results: dict) -> list:
    """Where the model is and the one-line ways to use it (the final table's last lines)."""
    config = out / CONFIG_NAME
    arch = (json.loads(config.read_text()).get("architectures") or [""])[0] if config.is_file() else ""
    heads = {cls.__name__: cls for cls in HEAD_CLASSES}
    task = TASKS.get(results.get("task"))
    # --full_finetune saves the plain transformers class: the same Auto class and pipeline serve it.
    head = heads.get(arch) or (task.model_class if task is not None else None)
    lines = [f"saved to: {out}"]
    if head is not None:
        auto = head.backbone_auto_class.__name__
        lines.append(f"load:     import lora_hf; from transformers import {auto}; model = {auto}.from_pretrained({str(out)!r})")
        lines.append(f"pipeline: import lora_hf; from transformers import pipeline; pipe = pipeline({head.pipeline_tag!r}, model={str(out)!r})")
    lines.append(f"card:     lora-hf card {out}")
    lines.append(f"push:     lora-hf push {out} <user>/<repo>")
    return lines
