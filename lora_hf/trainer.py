"""The `Trainer` pieces of `lora-hf train`: the Trainer subclass, the pretrain phase's collator and callbacks.

Example:
    >>> trainer = LoraTrainer(model=model, args=LoraTrainingArguments(output_dir="runs/demo"), train_dataset=train)
    >>> trainer.create_optimizer().param_groups  # adapters at --learning_rate, pretrained weights at --pretrained_learning_rate
"""

import contextlib
import hashlib
import math

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import logging

from .metrics import load_metric
from .modeling_lora import LoraPreTrainedModel

logger = logging.get_logger(__name__)

__all__ = ["LoraTrainer", "ContentSeededMLMCollator", "HeadWarmup", "write_errors", "count_params", "add_perplexity"]


class LoraTrainer(Trainer):
    """The `Trainer`, with checkpoint writes that fail as one `OSError` saying what is left, and two learning
    rates: the LoRA rate for adapters and new tensors, the fine-tuning rate for pretrained weights.

    Example:
        >>> args = LoraTrainingArguments(output_dir="out", learning_rate=2e-3, pretrained_learning_rate=5e-5)
        >>> {g["lr"] for g in LoraTrainer(model=model, args=args).create_optimizer().param_groups}
        {0.002, 5e-05}
    """

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 batches evaluation by length when training does (`train_sampling_strategy`), which
        # permutes `predict`'s rows; predict_results.txt must follow the test file. Metrics do not care.
        if eval_dataset is None or self.args.world_size > 1:
            return super()._get_eval_sampler(eval_dataset)
        return torch.utils.data.SequentialSampler(eval_dataset)

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
        with write_errors(f"checkpoint-{self.state.global_step} in {self.args.output_dir!r}"):
            super()._save_checkpoint(model, trial)


@contextlib.contextmanager
def write_errors(what: str):
    """Turn a failed write of `what` into one `OSError` saying that the earlier checkpoints are intact."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError("... unexpected pos ...")
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OSError(
            f"Writing {what} failed ({reason}); the checkpoints written before are intact and `--resume_from_checkpoint "
            "true` continues from the last complete one."
        ) from None


class ContentSeededMLMCollator(DataCollatorForLanguageModeling, TrainerCallback):
    """Masks each text with a generator seeded from the run's seed, the epoch and the text's own token ids.

    The Trainer collates the first batch after `--resume_from_checkpoint` before it restores the RNG
    state, so masking drawn from the global RNG would make a resumed run drift from an uninterrupted
    one. Content-seeded masks do not depend on RNG state. Seeded per text (padding left out), a text is
    masked the same way whatever batch it lands in: two processes with 4 rows a step mask as one process
    with 8 rows does. The epoch (set as a callback) gives each epoch new masks.

    Example:
        >>> collator = ContentSeededMLMCollator(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8)
        >>> collator.mask_seed = 42
        >>> trainer = LoraTrainer(model=model, args=args, data_collator=collator, callbacks=[collator])
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


class HeadWarmup(TrainerCallback):
    """Train only the `head` group for the first `steps` optimizer steps, then every group of the phase.

    The optimizer holds all of the phase's parameters from the start; AdamW skips a parameter whose
    `.grad` is None, so a frozen one keeps its value and gets no moment or weight-decay update.

    Example:
        >>> trainer = LoraTrainer(model=model, args=args, callbacks=[HeadWarmup(model, steps=50)])
    """

    def __init__(self, model: LoraPreTrainedModel, steps: int):
        head = model.group_parameter_names("head")
        self.held = [p for n, p in model.named_parameters() if p.requires_grad and n not in head]
        self.steps = steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step < self.steps:  # a resume past the warm-up trains everything at once
            for p in self.held:
                p.requires_grad_(False)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.steps:  # once; a resume past the warm-up never froze them
            for p in self.held:
                p.requires_grad_(True)


def count_params(model: PreTrainedModel) -> tuple:
    """`(trainable, total)` parameter counts of a lora_hf or plain transformers model."""
    if isinstance(model, LoraPreTrainedModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def add_perplexity(metrics: dict, prefix: str) -> dict:
    """Add `<prefix>_perplexity` from `<prefix>_loss` where the loss is finite and small enough to exponentiate."""
    loss = metrics.get(f"{prefix}_loss")
    if loss is not None and math.isfinite(loss) and loss < 50:
        metrics[f"{prefix}_perplexity"] = load_metric("perplexity").compute(predictions=[loss], references=[1])["perplexity"]
    return metrics
