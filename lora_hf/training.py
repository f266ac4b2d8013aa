"""Two-phase LoRA training with the Hugging Face `Trainer`.

Phase 1, `pretrain`: language modelling on unlabeled text (masked LM for encoders, causal LM for
decoders), training `config.phase_trainable["pretrain"]`. Phase 2, `finetune`: the task, starting
from phase 1's adapters, training `config.phase_trainable["finetune"]`. Each phase is a plain
`Trainer` run writing `<output_dir>/<phase>/`; the top directory gets the final model,
`all_results.json` (flat, as the HF example scripts write it) and `run_record.json` (both phases, for the card).

The arguments live in `arguments.py`, the tasks in `tasks.py`, the output directory's rules in
`run_dir.py`, the early checks in `preflight.py`, the Trainer pieces in `trainer.py`, what is printed
and plotted in `report.py`; this module holds the run itself (`TwoPhaseRun`).

Example:
    >>> from lora_hf.training import main
    >>> main(["--output_dir", "runs/demo"])  # MiniLM + VADER, the default task
"""

import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, TrainingArguments, set_seed
from transformers.utils import logging

from .arguments import (
    FULL_FINETUNE_LEARNING_RATE,
    LORA_LEARNING_RATE,
    LoraArguments,
    LoraTrainingArguments,
    ModelArguments,
    PhaseArguments,
    default_base_model,
    parse_args,
    phase_training_args,
)
from .checkpoint_lora import atomic_write_text
from .configuration_lora import LoraConfig, is_encoder
from .data import DataArguments, DataError, check_labels, infer_task, label_list, load_pretrain_texts, load_task_data, truncate_samples, vader_task
from .modeling_lora import language_model_class
from .preflight import check_base_model, check_integrations, check_predict, hub_repo_id
from .report import announce_precision, plot_loss_curves, print_phase_header, print_table, stalled_classifier
from .run_dir import (
    LOSS_PICTURE,
    PHASE_ARGUMENTS,
    PHASE_DONE,
    PREDICTIONS_NAME,
    check_reusable,
    check_run_dir,
    clear_previous_run,
    finished_phase,
    flat_results,
    phase_arguments,
    publish_final,
    resume_point,
    write_json,
)
from .tasks import TASKS, Task, encode_task, tokenize_text
from .trainer import ContentSeededMLMCollator, HeadWarmup, LoraTrainer, add_perplexity, count_params, write_errors

logger = logging.get_logger(__name__)

__all__ = ["TwoPhaseRun", "PhaseStart", "run_two_phase", "main", "parse_args", "ModelArguments", "LoraArguments", "PhaseArguments",
           "LoraTrainingArguments", "default_base_model", "plot_loss_curves", "flat_results"]

DEFAULT_PRETRAIN_SAMPLES = 5000


@dataclass(frozen=True)
class PhaseStart:
    """Where phase 2 starts: a base model (`base`: the original, or phase 1 merged into it) or phase 1's adapters (`adapters`).

    Example:
        >>> PhaseStart(adapters="runs/demo/pretrain")
    """

    base: str | None = None
    adapters: str | None = None


@dataclass
class TwoPhaseRun:
    """One `lora-hf train` run: its arguments, what was loaded for it, and its phases as methods.

    `prepare` checks everything that can be wrong (output directory, integrations, base model, target
    modules, data, labels) before the first step and loads the data; `run` trains the phases an earlier
    run did not finish, publishes the final model and returns the record written to `run_record.json`.

    Example:
        >>> run = TwoPhaseRun.prepare(ModelArguments(), LoraArguments(), DataArguments(),
        ...                           LoraTrainingArguments(output_dir="runs/demo"))
        >>> run.task.name, run.runs_pretrain
        ('classification', True)
        >>> results = run.run()
    """

    model_args: ModelArguments
    lora_args: LoraArguments
    data_args: DataArguments
    training_args: TrainingArguments
    phase_args: PhaseArguments
    out: Path
    base: str
    backbone_config: Any  # the base's config, read before anything loads
    lora_kwargs: dict
    precision: dict
    started: float
    tokenizer: Any = None
    pretrain_texts: Any = None  # a Dataset with a `text` column
    task_data: Any = None  # a DatasetDict; None: no finetune phase
    task: Task | None = None
    labels: list | None = None

    # ----- before the first step -----------------------------------------------------------------
    @classmethod
    def prepare(cls, model_args: ModelArguments, lora_args: LoraArguments, data_args: DataArguments,
                training_args: TrainingArguments, phase_args: PhaseArguments | None = None) -> "TwoPhaseRun":
        """Check the arguments, the base model and the data, and load the data and tokenizer."""
        started = time.perf_counter()
        phase_args = phase_args or PhaseArguments()
        if training_args.output_dir is None:
            raise DataError("`--output_dir` is required.")
        out = check_run_dir(training_args.output_dir, model_args.overwrite_output_dir, training_args.resume_from_checkpoint)
        check_integrations(training_args)
        precision = announce_precision(training_args)
        if model_args.skip_pretrain and model_args.skip_finetune:
            raise DataError("`--skip_pretrain` and `--skip_finetune` together leave nothing to run.")
        if model_args.full_finetune and training_args.learning_rate == LORA_LEARNING_RATE:
            training_args = phase_training_args(training_args, out, learning_rate=FULL_FINETUNE_LEARNING_RATE)
        base = model_args.model_name_or_path or default_base_model()
        set_seed(training_args.seed)
        backbone_config = check_base_model(base)
        run = cls(model_args=model_args, lora_args=lora_args, data_args=data_args, training_args=training_args, phase_args=phase_args,
                  out=out, base=base, backbone_config=backbone_config, lora_kwargs=lora_args.lora_config_kwargs(),
                  precision=precision, started=started)
        probe = None if run.full else LoraConfig(backbone_config=backbone_config, **run.lora_kwargs)
        run._check_pretrain(probe)
        run.tokenizer = _load_tokenizer(base)
        run._load_data()
        run._choose_task(probe)
        check_predict(training_args, run.task_data, run.task, data_args)
        return run

    @property
    def full(self) -> bool:
        return self.model_args.full_finetune

    @property
    def runs_pretrain(self) -> bool:
        return not (self.model_args.skip_pretrain or self.full)

    @property
    def runs_finetune(self) -> bool:
        return self.task_data is not None

    @property
    def phases(self) -> tuple:
        """The phases this run has, in order."""
        return tuple(phase for phase, runs in (("pretrain", self.runs_pretrain), ("finetune", self.runs_finetune)) if runs)

    @property
    def encoder(self) -> bool:
        return is_encoder(self.backbone_config)

    @property
    def lm_class(self) -> type:
        """The pretrain phase's model class: masked LM for an encoder, causal LM for a decoder."""
        return language_model_class(self.backbone_config)

    def _check_pretrain(self, probe: LoraConfig | None) -> None:
        if not self.runs_pretrain:
            return
        if self.phase_args.pretrain_head_warmup_steps and self.training_args.world_size > 1:
            # DDP's reducer expects a gradient for every parameter it was built with; a frozen one stalls it.
            raise DataError(f"`--pretrain_head_warmup_steps` runs in a single process; this run has {self.training_args.world_size}.")
        self.lm_class.check_target_modules(probe)

    def _load_data(self) -> None:
        data_args, seed = self.data_args, self.training_args.seed
        with self.training_args.main_process_first(desc="load data"):
            if data_args.uses_default_data:
                pretrain_texts, task_data = vader_task()
                task_data = truncate_samples(task_data, data_args, seed=seed)
                if data_args.pretrain_on_task_text:
                    pretrain_texts = task_data["train"].select_columns(["text"])
                # The MLM head over a 30k vocabulary dominates a pretrain step on CPU: the default run takes
                # a seeded sample of the 21k texts so that both phases fit in 15 minutes on 2 cores.
                limit = data_args.max_pretrain_samples or DEFAULT_PRETRAIN_SAMPLES
                pretrain_texts = pretrain_texts.shuffle(seed=seed).select(range(min(limit, len(pretrain_texts))))
            else:
                has_task_data = bool(data_args.dataset_name or data_args.train_file)
                task_data = load_task_data(data_args) if has_task_data else None
                pretrain_texts = load_pretrain_texts(data_args, task_data) if self.runs_pretrain else None
        self.pretrain_texts = pretrain_texts
        self.task_data = None if self.model_args.skip_finetune else task_data

    def _choose_task(self, probe: LoraConfig | None) -> None:
        if self.task_data is None:
            return
        column = self.data_args.label_column
        task = TASKS[infer_task(self.task_data, self.data_args, is_decoder=not self.encoder)]
        self.labels = label_list(self.task_data, column) if task.named_labels else None
        check_labels(self.task_data, column, task.name, self.labels)
        if task.needs_decoder and self.encoder:
            raise DataError(f"`--task {task.name}` needs a decoder backbone; {self.backbone_config.model_type!r} is an encoder.")
        if probe is not None:  # the task model may have modules the pretrain model lacks (BERT's pooler)
            task.model_class.check_target_modules(probe)
        self.task = task

    # ----- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train the phases an earlier run did not finish, publish the final model; return the run record."""
        results = self._record()
        arguments = self._check_previous_run()
        histories = {}
        if self.runs_pretrain:
            done = self._phase("pretrain", arguments, self.pretrain)
            results["pretrain"], histories["pretrain"] = done["metrics"], done["log_history"]
        if self.runs_finetune:
            done = self._phase("finetune", arguments, lambda: self.finetune(self.phase_two_start()))
            results["finetune"], histories["finetune"] = done["metrics"], done["log_history"]
            results["trainable_params"], results["total_params"] = done["trainable_params"], done["total_params"]
            if self.task.name == "classification":
                warning = stalled_classifier(done["log_history"], self.task_data["train"][self.data_args.label_column])
                if warning:
                    logger.warning(warning)
                    results["warnings"] = [warning]
        results["wall_seconds"] = time.perf_counter() - self.started  # the whole command: data, both phases, evaluation
        if self.training_args.should_save:
            final_dir = self.out / ("finetune" if self.runs_finetune else "pretrain")
            publish_final(final_dir, self.out, self.tokenizer, results, histories)
            if self.training_args.push_to_hub:
                self._push()
        print_table(results, self.out if self.training_args.should_save else None)
        return results

    def _record(self) -> dict:
        """The run record before training: base, task, columns, labels, data and hyperparameters of the phases that run."""
        results = {"base_model": self.base, "task": self.task.name if self.task else None, "full_finetune": self.full, "precision": self.precision}
        if self.task is not None:
            data_args = self.data_args
            results["columns"] = {"text": data_args.text_column, "text_pair": data_args.text_pair_column,
                                  "label": data_args.label_column if self.task.labelled else None}
            results["label_names"] = [str(label) for label in self.labels] if self.labels is not None else None
        results["datasets"] = {phase: text for phase, text in self.data_args.describe().items() if phase in self.phases}
        results["hyperparameters"] = {phase: self.hyperparameters(phase) for phase in self.phases}
        return results

    def hyperparameters(self, phase: str) -> dict:
        """What the model card cannot read back from `trainer_state.json`."""
        args = self.training_args
        values = {"seed": args.seed, "weight decay": args.weight_decay, "warm-up": warmup_text(args.warmup_steps),
                  "max sequence length": self.data_args.max_seq_length}
        if phase == "pretrain":
            held_out = self.phase_args.held_out(len(self.pretrain_texts))
            values["texts (train + held out)"] = f"{len(self.pretrain_texts) - held_out:,d} + {held_out:,d}"
        rate = self.phase_args.phase_learning_rate(phase, args)  # the configured peak
        pretrained_rate = getattr(args, "pretrained_learning_rate", None)  # a plain TrainingArguments has none
        if not self.full and pretrained_rate is not None:
            values["learning rate: adapters, new tensors"] = rate
            values["learning rate: pretrained weights"] = pretrained_rate
        else:
            values["learning rate"] = rate
        if not self.full:
            targets = self.lora_kwargs["target_modules"]
            values.update({"LoRA r": self.lora_kwargs["r"], "LoRA alpha": self.lora_kwargs["lora_alpha"],
                           "LoRA dropout": self.lora_kwargs["lora_dropout"],
                           "target modules": targets if isinstance(targets, str) else ", ".join(targets)})
        return values

    def _check_previous_run(self) -> dict:
        """Each phase's recorded arguments. An earlier run's files are removed (`--overwrite_output_dir`) or must match them."""
        groups = (self.model_args, self.lora_args, self.data_args, self.training_args, self.phase_args)
        arguments = {phase: phase_arguments(phase, self.base, *groups) for phase in self.phases}
        with self.training_args.main_process_first(desc="check output_dir"):
            if self.model_args.overwrite_output_dir and not self.training_args.resume_from_checkpoint:
                if self.training_args.should_save:
                    clear_previous_run(self.out)
            else:
                for phase in arguments:
                    check_reusable(self.out / phase, arguments[phase])
        return arguments

    def _phase(self, phase: str, arguments: dict, train) -> dict:
        """A phase's results: read back where an earlier run finished it, else from `train()`."""
        phase_dir = self.out / phase
        done = finished_phase(phase_dir)
        if done is None:
            if self.training_args.should_save:
                phase_dir.mkdir(parents=True, exist_ok=True)
                write_json(phase_dir / PHASE_ARGUMENTS, arguments[phase])  # before any checkpoint of the phase
            done = train()
        return done

    def _push(self) -> None:
        from .hub import push_to_hub

        repo_id = hub_repo_id(self.training_args)
        info = push_to_hub(self.out, repo_id, private=self.training_args.hub_private_repo, token=self.training_args.hub_token)
        print(f"Pushed {self.out} to {getattr(info, 'commit_url', repo_id)}")

    # ----- the phases ----------------------------------------------------------------------------
    def pretrain(self) -> dict:
        """Phase 1: masked or causal LM on the pretrain texts, from new adapters on the base; returns the phase's results."""
        phase_dir = self.out / "pretrain"
        set_seed(self.training_args.seed)  # each phase from the seed: a phase restarted on resume builds the same model
        model = self.lm_class.from_base_model(self.base, **self.lora_kwargs)
        _train_untrained_head(model, self.base)
        model.set_phase("pretrain")
        texts, warmup = self.pretrain_texts, self.phase_args.pretrain_head_warmup_steps
        split = texts.train_test_split(test_size=self.phase_args.held_out(len(texts)), seed=self.training_args.seed)
        data = self.data_args.describe().get("pretrain", "the given texts")
        objective = "masked LM" if self.encoder else "causal LM"
        if warmup:
            objective += f" (the first {warmup} steps train the head alone)"
        print_phase_header("pretrain", objective, f"{data}: {len(split['train']):,} texts, {len(split['test']):,} held out for perplexity", model)
        train = tokenize_text(split["train"], self.tokenizer, self.data_args, ["text"])
        evals = tokenize_text(split["test"], self.tokenizer, self.data_args, ["text"])
        args = phase_training_args(self.training_args, phase_dir, **self.phase_args.pretrain_overrides(self.training_args))
        collator = ContentSeededMLMCollator(self.tokenizer, mlm=self.encoder, mlm_probability=self.data_args.mlm_probability, pad_to_multiple_of=8)
        collator.mask_seed = args.seed
        callbacks = [collator, HeadWarmup(model, warmup)] if warmup else [collator]
        return self.train_phase(model, args, train, evals, None, collator, phase_dir, callbacks=callbacks)

    def phase_two_start(self) -> PhaseStart:
        """Where phase 2 starts: the base, phase 1's adapters, or phase 1 merged into a new base (written once, by the main process)."""
        pretrain_dir = self.out / "pretrain"
        if self.full or not self.runs_pretrain:
            return PhaseStart(base=self.base)
        if not self.model_args.merge_between_phases:
            return PhaseStart(adapters=str(pretrain_dir))
        merged = pretrain_dir / "merged_base"
        with self.training_args.main_process_first(desc="merge phase 1"):
            if self.training_args.should_save and not (merged / "config.json").is_file():
                lm = self.lm_class.from_pretrained(pretrain_dir, base_model_name_or_path=self.base).merge_and_unload()
                body = getattr(lm, lm.base_model_prefix)
                # The LM body lacks the base's pooler: start from the full base and overwrite what phase 1 changed.
                bare = AutoModel.from_pretrained(self.base, use_safetensors=True)
                missing = bare.load_state_dict(body.state_dict(), strict=False).missing_keys
                logger.info(f"Merged phase-1 adapters into a new base; kept from the original base: {missing}")
                bare.save_pretrained(merged)
                AutoTokenizer.from_pretrained(self.base).save_pretrained(merged)
        return PhaseStart(base=str(merged))

    def finetune(self, start: PhaseStart) -> dict:
        """Phase 2: the task, from `start`; returns the phase's results."""
        phase_dir = self.out / "finetune"
        # Seeded here, not only at the start: when phase 1 is skipped on resume, the new head must start as it did before.
        set_seed(self.training_args.seed)
        model = self._task_model(start)
        encoded = encode_task(self.task, self.task_data, self.tokenizer, self.data_args, self.labels)
        sizes = ", ".join(f"{len(encoded[split]):,} {split}" for split in ("train", "validation", "test") if split in encoded)
        print_phase_header("finetune", self.task.name, f"{self.data_args.describe().get('finetune', 'the given data')}: {sizes}", model)
        best_by_loss = self.task.language_model and self.training_args.metric_for_best_model is None
        args = phase_training_args(self.training_args, phase_dir, **({"metric_for_best_model": "loss", "greater_is_better": False} if best_by_loss else {}))
        compute_metrics = None if self.task.language_model else self.task.metrics(len(self.labels or []))
        return self.train_phase(model, args, encoded["train"], encoded.get("validation"), encoded.get("test"), self.task.collator(self.tokenizer),
                                phase_dir, compute_metrics, predict=getattr(self.training_args, "do_predict", False))

    def _task_model(self, start: PhaseStart):
        label_kwargs = self.task.label_kwargs(self.labels, self.tokenizer)
        model_class = self.task.model_class
        if self.full:
            return model_class.backbone_auto_class.from_pretrained(start.base, use_safetensors=True, **label_kwargs)
        if start.adapters is not None:
            model = model_class.from_pretrained(start.adapters, **{k: v for k, v in label_kwargs.items() if k != "pad_token_id"})
            if "pad_token_id" in label_kwargs:
                model.config.backbone_config.pad_token_id = label_kwargs["pad_token_id"]
        else:
            model = model_class.from_base_model(start.base, **self.lora_kwargs, **label_kwargs)
        model.set_phase("finetune")
        return model

    # ----- one phase -----------------------------------------------------------------------------
    def train_phase(self, model: PreTrainedModel, args: TrainingArguments, train: Dataset, evals: Dataset | None, test: Dataset | None,
                    collator: Callable, phase_dir: Path, compute_metrics: Callable | None = None, predict: bool = False,
                    callbacks: list | None = None) -> dict:
        """Train, evaluate (and predict) one phase, save its model, and write `phase_results.json` last; return what it holds."""
        if isinstance(self.training_args, LoraTrainingArguments) and not self.training_args.do_eval:
            evals = None  # --do_eval false (a plain TrainingArguments' do_eval only mirrors its eval_strategy)
        if evals is None and args.eval_strategy != "no":
            args = phase_training_args(args, phase_dir, eval_strategy="no", load_best_model_at_end=False)
        trainer = LoraTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=evals, data_collator=collator,
            processing_class=self.tokenizer, compute_metrics=compute_metrics, callbacks=callbacks,
        )
        started = time.perf_counter()
        train_result = self._train(trainer, phase_dir)
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in train_result.metrics.items()}
        metrics["train_wall_seconds"] = time.perf_counter() - started
        metrics.update(_evaluate(trainer, evals, test, language_model=compute_metrics is None))
        predictions = self._predict(trainer, test) if predict else None
        trainable, total = count_params(model)
        done = {"metrics": metrics, "log_history": trainer.state.log_history, "trainable_params": trainable, "total_params": total}
        _save_phase(trainer, phase_dir, done, predictions)
        return done

    def _train(self, trainer: LoraTrainer, phase_dir: Path):
        resume = resume_point(self.training_args.resume_from_checkpoint, phase_dir)
        try:
            return trainer.train(resume_from_checkpoint=resume)
        except pickle.UnpicklingError:  # torch.load(weights_only=True) met a pickle that is more than tensors
            raise DataError(
                f"Refusing to resume from {resume}: {_unsafe_pickles(Path(resume))}, which torch's weights_only loader does not "
                "run. Resume only from checkpoints this run wrote."
            ) from None

    def _predict(self, trainer: LoraTrainer, test) -> list:
        # Token classification keeps the labels: they mark the first token of each word, whose prediction is written.
        keep_labels = self.task.predict_needs_labels or "labels" not in test.column_names
        output = trainer.predict(test if keep_labels else test.remove_columns(["labels"]), metric_key_prefix="predict")
        return self.task.predictions(output, self.labels)


def warmup_text(steps: float) -> str:
    """`--warmup_steps` as the card says it: a float below 1 is a share of the steps (transformers 5)."""
    return f"{steps:.0%} of the steps" if 0 < steps < 1 else f"{int(steps)} steps"


def _load_tokenizer(base: str):
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _train_untrained_head(model, base: str) -> None:
    """Add the `head` group to the pretrain phase where the base has no pretrained LM head."""
    groups = model.config.phase_trainable["pretrain"]
    untrained_head = set(model.newly_initialized_keys) & model.group_parameter_names("head")
    if untrained_head and "head" not in groups and "all" not in groups:
        # A base saved without its LM head (sentence-transformers checkpoints such as MiniLM) gets a
        # random head; frozen, it would turn the pretrain objective into noise. Train it too.
        logger.warning(f"{base} has no pretrained LM head ({len(untrained_head)} tensors newly initialised); the pretrain phase trains the `head` group too.")
        model.config.phase_trainable["pretrain"] = groups + ["head"]


def _evaluate(trainer: LoraTrainer, evals, test, language_model: bool) -> dict:
    """Metrics of the splits that can be scored: a language model's by its loss (and perplexity), a task's where it has labels."""
    metrics = {}
    for prefix, ds in (("eval", evals), ("test", test)):
        if ds is not None and (language_model or "labels" in ds.column_names):
            result = trainer.evaluate(ds, metric_key_prefix=prefix)
            metrics.update(add_perplexity(result, prefix) if language_model else result)
    return metrics


def _save_phase(trainer: LoraTrainer, phase_dir: Path, done: dict, predictions: list | None) -> None:
    with write_errors(f"the {phase_dir.name} model to {str(phase_dir)!r}"):
        # On every rank: FSDP and ZeRO-3 gather the sharded weights with collectives; the main process writes.
        trainer.save_model(str(phase_dir))
    if trainer.is_world_process_zero():
        with write_errors(f"the {phase_dir.name} model to {str(phase_dir)!r}"):
            trainer.save_state()
            trainer.save_metrics("all", done["metrics"], combined=False)
            plot_loss_curves({phase_dir.name: trainer.state.log_history}, phase_dir / LOSS_PICTURE)
            if predictions is not None:
                atomic_write_text(phase_dir / PREDICTIONS_NAME, "".join(predictions))
            write_json(phase_dir / PHASE_DONE, done)  # written last: marks the phase complete for --resume_from_checkpoint
    trainer.accelerator.wait_for_everyone()


def run_two_phase(
    model_args: ModelArguments,
    lora_args: LoraArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    phase_args: PhaseArguments | None = None,
) -> dict:
    """Run the pretrain and finetune phases; return the structured record written to `run_record.json`
    (`all_results.json` holds its flat form, `flat_results`)."""
    return TwoPhaseRun.prepare(model_args, lora_args, data_args, training_args, phase_args).run()


def main(argv: list | None = None) -> int:
    """`lora-hf train` and `scripts/run_two_phase.py`."""
    try:
        model_args, lora_args, data_args, training_args, phase_args = parse_args(argv)
        run_two_phase(model_args, lora_args, data_args, training_args, phase_args)
    except (DataError, ValueError, OSError) as err:
        print(f"lora-hf train: error: {err}", file=sys.stderr)
        return 2
    # Torn down here rather than at interpreter exit, where a finished DeepSpeed/gloo rank was once seen to abort
    # ("terminate called without an active exception", SIGABRT) after its run was complete and saved.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _unsafe_pickles(checkpoint: Path) -> str:
    """What the Trainer's pickles in `checkpoint` would call, read by torch without running them."""
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint
    except ImportError:  # torch < 2.5: the file stays unread
        return "a pickle there holds more than tensors"
    found = []
    for path in sorted(checkpoint.glob("*.pt*")):  # optimizer.pt, scheduler.pt, rng_state*.pth
        try:
            found += [f"{path.name} calls {name}" for name in get_unsafe_globals_in_checkpoint(path)]
        except Exception:  # not a torch zip file at all: still refused, without a name
            found.append(f"{path.name} is not a torch checkpoint")
    return "; ".join(found) or "a pickle there holds more than tensors"
