# This file travels: `save_pretrained` copies it next to `config.json` so that
# `trust_remote_code=True` works where lora_hf is not installed. It imports only
# torch, transformers, safetensors and its sibling modules.
"""LoRA models: `PreTrainedModel`s that wrap a `transformers` backbone with LoRA layers."""

import os

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput
from transformers.utils import logging

from .checkpoint_lora import (
    CODE_FILES,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    base_fingerprint,
    collect_tensors,
    write_model_dir,
)
from .configuration_lora import LoraConfig, is_encoder
from .loading_lora import load_base_model, load_pretrained
from .lora_layers import LoraEmbedding, LoraLayer, inject_lora, lora_layers, unload_lora
from .phases_lora import LoraPhasesMixin

logger = logging.get_logger(__name__)

__all__ = [
    "LoraPreTrainedModel",
    "LoraModel",
    "LoraForCausalLM",
    "LoraForMaskedLM",
    "LoraForSequenceClassification",
    "LoraForTokenClassification",
    "LoraForQuestionAnswering",
    "HEAD_CLASSES",
    "head_class",
    "language_model_class",
    "CheckpointMismatchError",
    "CODE_FILES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

class LoraPreTrainedModel(LoraPhasesMixin, PreTrainedModel):
    """Base class: a frozen backbone built by `backbone_auto_class`, LoRA layers injected into it.

    The backbone's Parameters keep their names under `backbone.`; the adapters add
    `<module>.lora_A` / `<module>.lora_B`. Parameters fall into a *fixed* group (frozen) and a
    *trainable* group chosen per phase by `config.phase_trainable` (see `set_phase`).
    """

    config_class = LoraConfig
    # `model.base_model` is the backbone, as it is a transformers head model's body.
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # What a head is, declared once here on each class; the Auto registration, `auto_map`, the model
    # card, PEFT export/import and `lora-hf train`'s task table all read these (see `HEAD_CLASSES`).
    backbone_auto_class = AutoModel  # the transformers Auto class of the backbone and of this class
    pipeline_tag: str | None = None  # the transformers pipeline that serves it
    peft_task_type: str | None = None  # PEFT's `task_type` (None: PEFT's plain `PeftModel`)
    description = "a LoRA-adapted model"  # for the model card
    training_tasks: tuple = ()  # `lora-hf train --task` values this class trains
    # The Trainer passes `num_items_in_batch` to `forward` and scales the loss by the process count (see forward).
    accepts_loss_kwargs = True
    _loss_shifts_labels = False

    def __init__(self, config: LoraConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.backbone_config is None:
            raise ValueError(f"{type(self).__name__} needs `config.backbone_config`, the base model's config; got None.")
        if backbone is None:
            backbone = self.backbone_auto_class.from_config(config.backbone_config)
        self.backbone = backbone
        config.backbone_config = backbone.config
        self.lora_module_names = inject_lora(self.backbone, config)
        self.active_phase = None
        self.newly_initialized_keys = []
        self.post_init()
        self.apply_phase(self._ready_phase())

    @torch.no_grad()
    def initialize_weights(self):
        """transformers' initialisation, which skips what is already initialised (loaded or built off the meta device).

        LoRA layers sit inside the backbone, where transformers dispatches the backbone's own `_init_weights`,
        which does not know them: a LoRA layer built on the meta device is initialised here, its base weight by
        the backbone's initialiser (applied to the layer it wraps) and its adapters by `init_lora_weights`.
        """
        for _, layer in lora_layers(self.backbone):
            if not getattr(layer, "_is_hf_initialized", False):
                self.backbone._init_weights(layer.unload())
                layer.reset_lora_parameters(self.config.init_lora_weights)
                layer._is_hf_initialized = True
        super().initialize_weights()

    def _init_weights(self, module):
        # Everything but this wrapper belongs to the backbone, whose own initialiser transformers dispatches to.
        if module is not self:
            self.backbone._init_weights(module)

    # ----- the backbone ------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings) -> None:
        self.backbone.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True):
        """transformers' `resize_token_embeddings` on the backbone (tied embeddings stay tied).

        The added rows are saved with the adapters (only they: `base_vocab_size` records where the base
        checkpoint's vocabulary ends); the resized tensors stay frozen unless the active phase trains them.
        """
        if any(isinstance(m, LoraLayer) for m in (self.get_input_embeddings(), self.get_output_embeddings())):
            raise ValueError(
                "Cannot resize the token embeddings: a LoRA layer wraps them (`target_modules`). Resize the base model "
                "before wrapping it, or leave the embeddings out of `target_modules`."
            )
        if self.config.base_vocab_size is None and self.config.base_model_name_or_path:
            self.config.base_vocab_size = self.get_input_embeddings().weight.shape[0]
        embeddings = self.backbone.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.vocab_size = self.config.get_text_config().vocab_size  # as transformers' resize sets it
        # Parameters the resize replaced come back trainable: the phase decides.
        self.apply_phase(self.active_phase or self._ready_phase())
        return embeddings

    def _ready_phase(self) -> str:
        # Ready to fine-tune out of the box (adapters + head), as PEFT's task models are.
        return "finetune" if "finetune" in self.config.phase_trainable else next(iter(self.config.phase_trainable))

    def base_prefix(self) -> str:
        """`bert` for a `BertForX` backbone; empty when the backbone is the bare base model."""
        prefix = getattr(self.backbone, "base_model_prefix", "")
        return prefix if prefix and isinstance(getattr(self.backbone, prefix, None), nn.Module) else ""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """Runs the backbone; returns its own `ModelOutput` (with `loss` when labels are given).

        `num_items_in_batch` (passed by the `Trainer`: the label count of the whole step, over every process
        and accumulated micro-batch) turns the backbone's mean loss into this micro-batch's share of the step's
        sum, which is what the Trainer expects from models that take it: it multiplies the loss by the number
        of processes, and DDP averages gradients. Two processes then train exactly as one with the same global
        batch, whatever the backbone's loss does with `num_items_in_batch` (BERT's ignores it).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "labels": labels,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": return_dict,
            **kwargs,
        }
        # Pass only what was given: backbones differ in the arguments they accept (DistilBERT has no token types).
        outputs = self.backbone(**{k: v for k, v in inputs.items() if v is not None})
        return self._step_share(outputs, labels, num_items_in_batch)

    def _step_share(self, outputs, labels, num_items_in_batch):
        if num_items_in_batch is not None and labels is not None and getattr(outputs, "loss", None) is not None:
            # Counted as the Trainer counts: labels other than -100, shifted by one for causal LMs.
            counted = labels[..., 1:] if self._loss_shifts_labels else labels
            outputs.loss = outputs.loss * (counted.ne(-100).sum() / num_items_in_batch)
        return outputs

    # ----- gradient checkpointing --------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        """Checkpoint activations; gradients still reach the adapters of a frozen backbone.

        Non-reentrant checkpointing is the default; with `use_reentrant=True` the input embeddings
        are made to require grad so the recomputed segments see a tensor that needs grad.
        """
        self._activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ----- merge -------------------------------------------------------------------------
    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Fold every adapter into its base weight: inference then costs what the base costs."""
        uses = {}
        for _, param in self.named_parameters(remove_duplicate=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
        tied = [name for name, layer in lora_layers(self.backbone) if isinstance(layer, LoraEmbedding) and uses[id(layer.weight)] > 1]
        if tied:
            # The update belongs to the lookup only; merged, the tied output layer would get it too.
            raise ValueError(
                f"Cannot merge the LoRA embedding {tied}: its weight is tied to another layer (the LM head), which "
                "would receive the update too and change the outputs. Keep the model unmerged, or leave the tied "
                "embedding out of `target_modules`."
            )
        for _, layer in lora_layers(self.backbone):
            layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for _, layer in lora_layers(self.backbone):
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = False) -> PreTrainedModel:
        """Merge the adapters and return the plain `transformers` backbone (e.g. `BertForSequenceClassification`).

        The returned model saves and loads with `transformers` alone. This LoRA model is consumed.
        """
        self.merge_adapter(safe_merge=safe_merge)
        backbone = unload_lora(self.backbone)
        for param in backbone.parameters():
            param.requires_grad_(True)
        backbone.config.name_or_path = self.config.name_or_path
        return backbone

    # ----- loading a state dict ----------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like `nn.Module.load_state_dict`, but an adapter-only dict is complete: base tensors may be absent."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        own = set(self.adapter_state_keys())
        missing = [k for k in result.missing_keys if k in own]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error loading state dict into {type(self).__name__}: missing adapter tensors {missing}, "
                f"unexpected tensors {result.unexpected_keys}."
            )
        return type(result)(missing, result.unexpected_keys)

    # ----- save --------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        save_base: bool = False,
        push_to_hub: bool = False,
        safe_serialization: bool = True,
        **kwargs,
    ) -> None:
        """Write `config.json`, the code files for `trust_remote_code` and `model.safetensors`.

        By default the safetensors file holds only the adapter tensors (`adapter_state_keys`);
        `save_base=True` writes every tensor, so the directory needs no base model. Each file is
        written to a temporary name and renamed, so a crash leaves the previous file intact.

        Example:
            >>> model.save_pretrained("my-lora")          # kilobytes
            >>> AutoModelForSequenceClassification.from_pretrained("my-lora")
        """
        if not safe_serialization:
            raise ValueError("`safe_serialization=False`: lora_hf writes safetensors only.")
        if push_to_hub:  # refused before anything is written
            raise ValueError("`push_to_hub=True` in `save_pretrained`: call `model.push_to_hub(repo_id)` instead.")
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {str(save_directory)!r} is a file; pass a directory.")
        if self.active_phase is not None:
            self._record_trained(self.active_phase)
        if not save_base and not self.config.base_model_name_or_path:
            # Built from a config: there is no base checkpoint to rebuild from, so the directory carries it.
            logger.warning(f"{type(self).__name__} has no `base_model_name_or_path` (built from a config): saving the base weights too (save_base=True).")
            save_base = True
        tensors, full_state, new_rows = collect_tensors(self, state_dict, save_base)  # a collective: on every rank
        if is_main_process:
            write_model_dir(self, save_directory, tensors, full_state, new_rows, save_base)

    @staticmethod
    def auto_map_entries() -> dict:
        """`config.auto_map` of a save: the Auto classes and the travelling modules that serve them."""
        heads = {cls.backbone_auto_class.__name__: f"modeling_lora.{cls.__name__}" for cls in HEAD_CLASSES}
        return {"AutoConfig": "configuration_lora.LoraConfig", **heads}

    def lora_class(self) -> type:
        """This model's lora_hf class: FSDP2's `fully_shard` swaps in a subclass `FSDP<Class>` of `(FSDPModule, Class)`,
        which must not reach `config.architectures` (loading would read it as another head)."""
        return next(c for c in type(self).__mro__ if "FSDPModule" not in {base.__name__ for base in c.__mro__})

    # ----- load --------------------------------------------------------------------------
    @classmethod
    def from_base_model(
        cls,
        base_model_name_or_path: str,
        r: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        target_modules="auto",
        use_rslora: bool = False,
        init_lora_weights: str = "kaiming",
        phase_trainable: dict | None = None,
        **backbone_kwargs,
    ) -> "LoraPreTrainedModel":
        """Load pretrained base weights and inject fresh adapters: at step 0 the outputs equal the base's.

        `backbone_kwargs` go to the base config (e.g. `num_labels=3`) and to its `from_pretrained`
        (e.g. `dtype=torch.bfloat16`).

        Example:
            >>> model = LoraForSequenceClassification.from_base_model("bert-base-uncased", r=8, num_labels=2)
        """
        lora = {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "target_modules": target_modules,
                "use_rslora": use_rslora, "init_lora_weights": init_lora_weights, "phase_trainable": phase_trainable}
        return load_base_model(cls, base_model_name_or_path, lora, backbone_kwargs)

    def set_newly_initialized(self, loading_info: dict) -> None:
        """Record the base tensors a load did not find (transformers' `loading_info["missing_keys"]`)."""
        # Base tensors the checkpoint lacked (a task head, a pooler, an LM head a sentence encoder was
        # saved without) are random: they are saved with the adapters, or every load would differ.
        names = {n for n, _ in self.named_parameters()}
        self.newly_initialized_keys = sorted(n for n in (f"backbone.{k}" for k in loading_info.get("missing_keys", [])) if n in names)

    @classmethod
    def check_target_modules(cls, config: LoraConfig) -> None:
        """Resolve `config.target_modules` on a weightless (meta) copy of the backbone, before any weight is loaded;
        `ValueError` naming the entries that match nothing.

        Example:
            >>> LoraForSequenceClassification.check_target_modules(LoraConfig(backbone_config=bert_config, target_modules=["query"]))
        """
        from .lora_layers import find_target_modules

        with torch.device("meta"):
            # The model class itself, not `from_config`: under DeepSpeed ZeRO-3 that partitions weights with
            # `zero.Init`, which cannot copy meta tensors.
            model_class = cls.backbone_auto_class._model_mapping.get(type(config.backbone_config), None)
            if isinstance(model_class, (list, tuple)):
                model_class = model_class[0]
            if model_class is None:  # a config class registered otherwise (remote code)
                skeleton = cls.backbone_auto_class.from_config(config.backbone_config)
            else:
                skeleton = model_class(config.backbone_config)
        find_target_modules(skeleton, config.target_modules)

    def base_fingerprint(self) -> str | None:
        """Identifies the base weights the adapters modify, whatever dtype or device they are loaded in (see
        `checkpoint_lora.base_fingerprint`); None while the weights are on the meta device."""
        return base_fingerprint(self)


    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config: LoraConfig | str | os.PathLike | None = None,
        base_model_name_or_path: str | None = None,
        ignore_base_mismatch: bool = False,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        state_dict: dict | None = None,
        **kwargs,
    ) -> "LoraPreTrainedModel":
        """Load a model saved by `save_pretrained`; an adapter-only save rebuilds its base first.

        Takes the arguments of `PreTrainedModel.from_pretrained`: `dtype` / `torch_dtype` (a torch dtype, its
        name, or `"auto"`), `device_map`, `attn_implementation`, `output_loading_info`, `ignore_mismatched_sizes`,
        `state_dict`, `generation_config`, the Hub arguments, and config overrides (`num_labels=5`,
        `output_attentions=True`, ...). The base comes from `config.base_model_name_or_path` unless
        `base_model_name_or_path=` points elsewhere (a local copy, say). Loading into another head class (a
        masked-LM save into `LoraForSequenceClassification`) keeps the adapters and trained groups, drops the old
        head and starts a new one, as `transformers` does for a pretrained checkpoint.

        Example:
            >>> model = LoraForSequenceClassification.from_pretrained("runs/demo", dtype=torch.bfloat16)
        """
        if model_args:
            raise ValueError(f"{cls.__name__}.from_pretrained takes no positional arguments after the path, got {model_args!r}.")
        return load_pretrained(cls, pretrained_model_name_or_path, config=config, base_model_name_or_path=base_model_name_or_path,
                               ignore_base_mismatch=ignore_base_mismatch, ignore_mismatched_sizes=ignore_mismatched_sizes,
                               output_loading_info=output_loading_info, state_dict=state_dict, **kwargs)


class LoraModel(LoraPreTrainedModel):
    """LoRA on the bare base model (`AutoModel`): returns hidden states.

    Example:
        >>> model = LoraModel.from_base_model("sentence-transformers/all-MiniLM-L6-v2", r=8)
    """

    backbone_auto_class = AutoModel
    pipeline_tag = "feature-extraction"
    peft_task_type = "FEATURE_EXTRACTION"
    description = "a LoRA-adapted encoder (hidden states)"


class LoraForMaskedLM(LoraPreTrainedModel):
    """LoRA on `AutoModelForMaskedLM` (BERT-style), the pretrain phase of encoders.

    Example:
        >>> model = LoraForMaskedLM.from_base_model("bert-base-uncased", r=8)
    """

    backbone_auto_class = AutoModelForMaskedLM
    pipeline_tag = "fill-mask"
    peft_task_type = None
    description = "a LoRA-adapted masked language model"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """As `LoraPreTrainedModel.forward`; in training mode with labels, the logits cover the masked positions only.

        The head's projection onto the vocabulary (30k words for BERT) is most of a masked-LM training
        step, and the loss reads only the ~15% of positions that were masked: the same loss and
        gradients, from `logits` of shape `(masked positions, vocab)`. `model.eval()` (perplexity,
        fill-mask) returns the full `(batch, length, vocab)` logits as the backbone does.
        """
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "inputs_embeds": inputs_embeds}
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        plain = not self.training or labels is None or output_attentions or output_hidden_states or kwargs
        head = None if plain else self._vocabulary_head()
        if head is None:
            return super().forward(**given, labels=labels, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, return_dict=return_dict,
                                   num_items_in_batch=num_items_in_batch, **kwargs)
        body = getattr(self.backbone, self.backbone.base_model_prefix)
        hidden = body(**{k: v for k, v in given.items() if v is not None})[0]
        masked = labels.ne(-100)
        logits = head(hidden[masked])
        loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels[masked])
        return self._step_share(MaskedLMOutput(loss=loss, logits=logits), labels, num_items_in_batch)

    def _vocabulary_head(self) -> nn.Module | None:
        # BERT's `cls`, RoBERTa's `lm_head`: the one module beside the body. Backbones whose head is
        # several modules (DistilBERT) take the backbone's own full-length path.
        others = [m for name, m in self.backbone.named_children() if name != self.backbone.base_model_prefix]
        others = [m for m in others if any(True for _ in m.parameters())]
        return others[0] if len(others) == 1 else None


class LoraForSequenceClassification(LoraPreTrainedModel):
    """LoRA on `AutoModelForSequenceClassification`: classification or regression (`num_labels=1`).

    Example:
        >>> model = LoraForSequenceClassification.from_base_model("bert-base-uncased", num_labels=2)
    """

    backbone_auto_class = AutoModelForSequenceClassification
    pipeline_tag = "text-classification"
    peft_task_type = "SEQ_CLS"
    description = "a LoRA-adapted text classifier"
    training_tasks = ("classification", "regression")


class LoraForTokenClassification(LoraPreTrainedModel):
    """LoRA on `AutoModelForTokenClassification`.

    Example:
        >>> model = LoraForTokenClassification.from_base_model("bert-base-cased", num_labels=9)
    """

    backbone_auto_class = AutoModelForTokenClassification
    pipeline_tag = "token-classification"
    peft_task_type = "TOKEN_CLS"
    description = "a LoRA-adapted token classifier"
    training_tasks = ("token-classification",)


class LoraForQuestionAnswering(LoraPreTrainedModel):
    """LoRA on `AutoModelForQuestionAnswering` (extractive span prediction).

    Example:
        >>> model = LoraForQuestionAnswering.from_base_model("bert-base-uncased")
    """

    backbone_auto_class = AutoModelForQuestionAnswering
    pipeline_tag = "question-answering"
    peft_task_type = "QUESTION_ANS"
    description = "a LoRA-adapted extractive question-answering model"

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """Runs the backbone; `start_positions` / `end_positions` are the labels (the loss comes with them)."""
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            start_positions=start_positions,
            end_positions=end_positions,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )


class LoraForCausalLM(LoraPreTrainedModel, GenerationMixin):
    """LoRA on `AutoModelForCausalLM` (GPT-2, GPT-NeoX, Llama, ...); `generate()` uses the backbone's KV cache.

    Example:
        >>> model = LoraForCausalLM.from_base_model("gpt2", r=8)
        >>> model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=5)
    """

    backbone_auto_class = AutoModelForCausalLM
    pipeline_tag = "text-generation"
    peft_task_type = "CAUSAL_LM"
    description = "a LoRA-adapted causal language model"
    training_tasks = ("causal-lm",)
    _loss_shifts_labels = True  # token t predicts t + 1: the Trainer counts `labels[..., 1:]`

    @property
    def generation_config(self):
        """The backbone's generation config: its `generate` runs, so setting this sets the backbone's."""
        backbone = self.__dict__.get("_modules", {}).get("backbone")
        return backbone.generation_config if backbone is not None else self.__dict__.get("_generation_config")

    @generation_config.setter
    def generation_config(self, value):
        backbone = self.__dict__.get("_modules", {}).get("backbone")
        if backbone is not None:
            backbone.generation_config = value
        else:  # PreTrainedModel.__init__ sets one before the backbone exists
            self.__dict__["_generation_config"] = value

    def generate(self, *args, **kwargs):
        # The adapters live inside the backbone, so its own generate (and KV cache) runs them.
        return self.backbone.generate(*args, **kwargs)


# ----- helpers -----------------------------------------------------------------------------
# Every head class: the one list the Auto registration, `auto_map`, the model card, PEFT export/import and
# the training task registry are derived from. A new head is a class above with its attributes, added here.
HEAD_CLASSES = (LoraModel, LoraForMaskedLM, LoraForSequenceClassification, LoraForTokenClassification, LoraForQuestionAnswering, LoraForCausalLM)


def language_model_class(backbone_config) -> type:
    """The head of the pretrain phase: masked LM for an encoder (`is_encoder`), causal LM otherwise."""
    return LoraForMaskedLM if is_encoder(backbone_config) else LoraForCausalLM


def head_class(name: str) -> type:
    """The head class called `name` (as `config.architectures` records it).

    Example:
        >>> head_class("LoraForSequenceClassification").pipeline_tag
        'text-classification'
    """
    for cls in HEAD_CLASSES:
        if cls.__name__ == name:
            return cls
    raise ValueError(f"{name!r} is not one of lora_hf's model classes {[c.__name__ for c in HEAD_CLASSES]}.")
