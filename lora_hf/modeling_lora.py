# This file travels: `save_pretrained` copies it next to `config.json` so that
# `trust_remote_code=True` works where lora_hf is not installed. It imports only
# torch, transformers, safetensors and its sibling modules.
"""LoRA models: `PreTrainedModel`s that wrap a `transformers` backbone with LoRA layers."""

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
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

from .checkpoint_lora import atomic_write_all
from .configuration_lora import GROUPS, PHASES, LoraConfig, check_group
from .lora_layers import LoraEmbedding, _LoraLayer, attention_projections, inject_lora, lora_layers, unload_lora, weight_shape

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
    "WEIGHTS_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# The modules saved beside config.json for `trust_remote_code`.
CODE_FILES = ("configuration_lora.py", "lora_layers.py", "checkpoint_lora.py", "modeling_lora.py")
GENERATION_CONFIG_NAME = "generation_config.json"
_CONFIG_OVERRIDES = ("num_labels", "id2label", "label2id", "problem_type")
# from_pretrained's arguments, as PreTrainedModel.from_pretrained documents them: what goes to the base's load,
# to the Hub, what does not apply to safetensors-only LoRA checkpoints, and what cannot apply here (and why).
_BACKBONE_LOAD_KWARGS = ("attn_implementation", "experts_implementation", "low_cpu_mem_usage", "max_memory", "offload_folder",
                         "offload_buffers", "disable_mmap")
# from_base_model passes these to the base's from_pretrained.
_BASE_LOAD_KWARGS = _BACKBONE_LOAD_KWARGS + ("dtype", "torch_dtype", "device_map", "ignore_mismatched_sizes")
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_IGNORED_LOAD_KWARGS = ("trust_remote_code", "_from_auto", "_from_pipeline", "code_revision", "weights_only", "tqdm_class",
                        "adapter_name", "adapter_kwargs", "_commit_hash")
_UNSUPPORTED_LOAD_KWARGS = {
    "quantization_config": "LoRA layers here wrap nn.Linear/Conv1D weights; quantized bases are not supported.",
    "gguf_file": "lora_hf reads safetensors only.",
    "variant": "lora_hf writes one model.safetensors, without variants.",
    "distributed_config": "load the model, then shard it with accelerate / the Trainer (FSDP, DeepSpeed).",
    "tp_plan": "tensor parallelism is not supported for LoRA layers.",
    "tp_size": "tensor parallelism is not supported for LoRA layers.",
    "device_mesh": "tensor parallelism is not supported for LoRA layers.",
    "use_kernels": "hub kernels would replace the layers LoRA wraps.",
    "kernel_config": "hub kernels would replace the layers LoRA wraps.",
    "key_mapping": "lora_hf checkpoints use the model's own keys.",
    "fusion_config": "fused layers would replace the layers LoRA wraps.",
}
# Loading reports go to the logger transformers' own load reports use, so the same log settings apply to them.
_LOAD_REPORT = logging.get_logger("transformers.modeling_utils")


class CheckpointMismatchError(ValueError, RuntimeError):
    """Saved tensors do not fit the model (transformers raises RuntimeError for size mismatches; lora_hf always raised ValueError)."""


class LoraPreTrainedModel(PreTrainedModel):
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
        # Ready to fine-tune out of the box (adapters + head), as PEFT's task models are.
        self._apply_phase("finetune" if "finetune" in config.phase_trainable else next(iter(config.phase_trainable)))

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
        if any(isinstance(m, _LoraLayer) for m in (self.get_input_embeddings(), self.get_output_embeddings())):
            raise ValueError(
                "Cannot resize the token embeddings: a LoRA layer wraps them (`target_modules`). Resize the base model "
                "before wrapping it, or leave the embeddings out of `target_modules`."
            )
        if self.config.base_vocab_size is None and self.config.base_model_name_or_path:
            self.config.base_vocab_size = self.get_input_embeddings().weight.shape[0]
        embeddings = self.backbone.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.vocab_size = self.config.get_text_config().vocab_size  # as transformers' resize sets it
        # Parameters the resize replaced come back trainable: the phase decides.
        self._apply_phase(self.active_phase or ("finetune" if "finetune" in self.config.phase_trainable else next(iter(self.config.phase_trainable))))
        return embeddings

    def vocab_row_keys(self) -> list:
        """Names of the tensors with one row per token: the input and output embeddings (tied ones once) and the output bias."""
        modules = [m for m in (self.get_input_embeddings(), self.get_output_embeddings()) if m is not None]
        ids = {id(p) for m in modules for p in m.parameters(recurse=False) if p is not None}
        return sorted(n for n, p in self.named_parameters() if id(p) in ids)

    def new_token_rows(self) -> dict:
        """`{key: rows}`: the vocabulary tensors an adapter-only save holds only the added rows of (see `resize_token_embeddings`)."""
        base_vocab = self.config.base_vocab_size
        if base_vocab is None:
            return {}
        full = set(self.adapter_state_keys())
        params = dict(self.named_parameters())
        return {k: params[k].shape[0] - base_vocab for k in self.vocab_row_keys() if k not in full and params[k].shape[0] > base_vocab}

    def _base_prefix(self) -> str:
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

    # ----- parameter groups and phases ---------------------------------------------------
    def group_parameter_names(self, group: str) -> set:
        """Names of the parameters in `group` (one of `GROUPS`, or `re:<regex>` on parameter names), adapters excluded
        except for group `lora`.

        Example:
            >>> sorted(model.group_parameter_names("head"))
            ['backbone.classifier.bias', 'backbone.classifier.weight']
        """
        names = [_unwrapped_name(name) for name, _ in self.named_parameters()]
        if group == "all":
            return set(names)
        if group.startswith("re:"):
            pattern = re.compile(group[3:])
            return {n for n in names if pattern.search(n)}
        if group == "lora":
            return {n for n in names if n.endswith((".lora_A", ".lora_B"))}
        if group == "bias":
            return {n for n in names if n.endswith(".bias")}
        if group == "head":
            prefix = self._base_prefix()
            if not prefix:
                return set()
            body = f"backbone.{prefix}."
            return {n for n in names if not n.startswith(body) and not n.endswith((".lora_A", ".lora_B"))}
        if group == "attention":  # the projections target_modules="auto" wraps: one rule for both
            modules = set(attention_projections(self))
        elif group == "embeddings":
            modules = {n for n, m in self.named_modules() if isinstance(m, (nn.Embedding, LoraEmbedding))}
        elif group == "norm":
            modules = {n for n, m in self.named_modules() if "norm" in type(m).__name__.lower()}
        else:
            raise ValueError(f"Unknown group {group!r}; allowed are {list(GROUPS)} or 're:<regex>'.")
        members = set()
        for module_name, module in self.named_modules():
            if module_name in modules:
                members.update(_unwrapped_name(f"{module_name}.{p}") for p, _ in module.named_parameters(recurse=group == "norm"))
        return {n for n in members if n in set(names) and not n.endswith((".lora_A", ".lora_B"))}

    def phase_parameter_names(self, phase: str) -> set:
        """Names of the parameters `phase` trains, from `config.phase_trainable[phase]`."""
        if phase not in self.config.phase_trainable:
            raise ValueError(
                f"Unknown phase {phase!r}; `config.phase_trainable` defines {list(self.config.phase_trainable)} "
                f"(phases allowed: {list(PHASES)})."
            )
        names = set()
        for group in self.config.phase_trainable[phase]:
            check_group(group, f"phase_trainable[{phase!r}]")
            names |= self.group_parameter_names(group)
        return names

    def set_phase(self, phase: str) -> None:
        """Train exactly the groups `config.phase_trainable[phase]` names; freeze everything else.

        Example:
            >>> model.set_phase("pretrain")  # LoRA + embeddings by default
            >>> model.print_trainable_parameters()
        """
        self._apply_phase(phase)
        self._record_trained(phase)

    def _record_trained(self, phase: str) -> None:
        # The groups a phase trained are saved with the adapters and required when loading them.
        for group in self.config.phase_trainable[phase]:
            if group not in self.config.trained_groups:
                self.config.trained_groups.append(group)

    def _apply_phase(self, phase: str) -> None:
        trainable = self.phase_parameter_names(phase)
        if not trainable:
            raise ValueError(
                f"`phase_trainable[{phase!r}]` = {self.config.phase_trainable[phase]} selects no parameter of "
                f"{type(self).__name__}; name groups from {list(GROUPS)} that this model has."
            )
        for name, param in self.named_parameters():
            param.requires_grad_(_unwrapped_name(name) in trainable)
        self.active_phase = phase

    def parameter_groups(self) -> dict:
        """`{"trainable": [names], "fixed": [names]}` as `requires_grad` stands now (tied weights once)."""
        groups = {"trainable": [], "fixed": []}
        for name, param in self.named_parameters():
            groups["trainable" if param.requires_grad else "fixed"].append(name)
        return groups

    def get_nb_trainable_parameters(self) -> tuple:
        """`(trainable, all)` parameter counts; tied weights are counted once."""
        trainable = total = 0
        for param in self.parameters():
            numel = getattr(param, "ds_numel", param.numel())  # ZeRO-3 keeps a slice of each weight per rank
            total += numel
            if param.requires_grad:
                trainable += numel
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

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

    # ----- which tensors are ours --------------------------------------------------------
    def new_parameter_names(self) -> set:
        """Parameters the base checkpoint did not provide: the adapters and tensors it lacked (a new head)."""
        return self.group_parameter_names("lora") | set(self.newly_initialized_keys)

    def adapter_state_keys(self) -> list:
        """State-dict keys saved in an adapter-only checkpoint: LoRA, the groups trained so far and in the
        active phase, and anything else that requires grad now. Tied weights appear once."""
        names = self.new_parameter_names()
        for group in self.config.trained_groups + list(self.config.phase_trainable.get(self.active_phase, [])):
            names |= self.group_parameter_names(group)
        names |= {_unwrapped_name(n) for n, p in self.named_parameters() if p.requires_grad}
        return sorted(names)

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
        if self.active_phase is not None:
            self._record_trained(self.active_phase)
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {str(save_directory)!r} is a file; pass a directory.")
        if not save_base and not self.config.base_model_name_or_path:
            # Built from a config: there is no base checkpoint to rebuild from, so the directory carries it.
            logger.warning(f"{type(self).__name__} has no `base_model_name_or_path` (built from a config): saving the base weights too (save_base=True).")
            save_base = True
        full_state = state_dict if state_dict is not None else self.state_dict()
        new_rows = {}
        if save_base:
            # named_parameters() lists a tied weight once: save it once, re-tied on load.
            keep = {_unwrapped_name(n) for n, _ in self.named_parameters()} | {n for n, _ in self.named_buffers() if n in full_state}
        else:
            keep = set(self.adapter_state_keys())
            new_rows = {k: rows for k, rows in self.new_token_rows().items() if k in full_state}
        # Sharded tensors (FSDP2's DTensors) are gathered here, on every rank in the same order: the
        # collective needs them all, so call save_pretrained on every rank and let `is_main_process` pick the writer.
        tensors = {k: _full_tensor(v).detach().contiguous() for k, v in sorted(full_state.items()) if k in keep}
        for key, rows in new_rows.items():  # tokens added to the base's vocabulary: their rows only
            tensors[key] = tensors.get(key, _full_tensor(full_state[key]).detach())[-rows:].contiguous()
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        for name, layer in lora_layers(self):
            # A merged layer's weight holds W + scale * B @ A, and lora_A / lora_B are saved too: save W,
            # or the loaded (unmerged) model would add the update twice.
            key = f"{_unwrapped_name(name)}.weight"
            if layer.merged and key in tensors and full_state[key].data_ptr() == layer.weight.data_ptr():
                tensors[key] = (layer.weight.float() - layer._delta_fp32()).to(layer.weight.dtype).detach()
        tensors = _to_checkpoint_keys(self, tensors)
        metadata = {"format": "pt", "lora_hf_format": "full" if save_base else "adapter", "base_prefix": self._base_prefix(),
                    "architecture": self._model_class().__name__}
        if new_rows:
            metadata["lora_hf_new_rows"] = json.dumps(new_rows, sort_keys=True)
        files = [(WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))]
        here = Path(__file__).parent
        files += [(name, lambda tmp, src=here / name: shutil.copyfile(src, tmp)) for name in CODE_FILES]
        if self.can_generate() and self.generation_config is not None:
            files.append((GENERATION_CONFIG_NAME, lambda tmp: self.generation_config.to_json_file(tmp, use_diff=True)))
        self.config.architectures = [self._model_class().__name__]
        self.config.auto_map = _auto_map()
        if isinstance(self.dtype, torch.dtype):
            self.config.dtype = self.dtype  # as transformers records it: `dtype="auto"` loads it back
        files.append((CONFIG_NAME, lambda tmp: self.config.to_json_file(tmp, use_diff=True)))
        atomic_write_all(Path(save_directory), files)  # weights first, config last
        if push_to_hub:
            raise ValueError("`push_to_hub=True` in `save_pretrained`: call `model.push_to_hub(repo_id)` instead.")

    def _model_class(self) -> type:
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
        from transformers import AutoConfig

        hub_kwargs = {k: backbone_kwargs.pop(k) for k in _HUB_KWARGS if k in backbone_kwargs}
        load_kwargs = {k: backbone_kwargs.pop(k) for k in _BASE_LOAD_KWARGS if k in backbone_kwargs}
        backbone_config, unused = AutoConfig.from_pretrained(
            base_model_name_or_path, return_unused_kwargs=True, **hub_kwargs, **backbone_kwargs
        )
        if unused:
            raise ValueError(f"`from_base_model` got arguments that are neither LoRA, loading nor config fields: {sorted(unused)}.")
        config = LoraConfig(
            backbone_config=backbone_config,
            base_model_name_or_path=str(base_model_name_or_path),
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            use_rslora=use_rslora,
            init_lora_weights=init_lora_weights,
            phase_trainable=phase_trainable,
            id2label=backbone_config.id2label,
            label2id=backbone_config.label2id,
            problem_type=backbone_config.problem_type,
        )
        cls.check_target_modules(config)
        check_base_weights(base_model_name_or_path, hub_kwargs.get("subfolder") or "")
        # transformers' load report (a table of MISSING keys, "this checkpoint seem corrupted") reads as an
        # error for what is a plain fact here: the base lacks a head, which is created below. One line says so.
        with _transformers_quiet():
            backbone, info = cls.backbone_auto_class.from_pretrained(
                base_model_name_or_path, config=backbone_config, output_loading_info=True, use_safetensors=True, **hub_kwargs, **load_kwargs
            )
        model = cls(config, backbone=backbone)
        model._set_newly_initialized(info)
        if model.newly_initialized_keys:
            logger.warning(
                f"{base_model_name_or_path} has no weights for {', '.join(_module_roots(model.newly_initialized_keys))}: "
                f"{cls.__name__} starts them fresh (random, {sum(model.get_parameter(k).numel() for k in model.newly_initialized_keys):,} "
                "parameters) and saves them with the adapters; a phase must train them (group `head`) before they mean anything."
            )
        with _zero3_gathered([layer.weight for _, layer in lora_layers(model.backbone)]):
            config.base_fingerprint = model.base_fingerprint()
        return model

    def _set_newly_initialized(self, loading_info: dict) -> None:
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

    def _fingerprint_samples(self):
        """`(names digest, samples)`: the wrapped layers' names and shapes, and a strided sample of their base weights."""
        digest = hashlib.sha256()
        prefix = self._base_prefix()
        layers = sorted(lora_layers(self.backbone))
        per_layer = max(4, 256 // max(1, len(layers)))
        samples = []
        for name, layer in layers:
            weight = layer.weight.detach()
            if weight.device.type == "meta":
                return None, None
            if layer.merged:
                weight = weight.float() - layer._delta_fp32()
            flat = weight.reshape(-1)
            samples.append(flat[:: max(1, flat.numel() // per_layer)][:per_layer].float().cpu())
            if prefix and name.startswith(prefix + "."):
                name = name[len(prefix) + 1 :]
            digest.update(f"{name}:{tuple(weight.shape)};".encode())
        return digest.hexdigest()[:16], torch.cat(samples) if samples else torch.zeros(0)

    def base_fingerprint(self) -> str | None:
        """Identifies the base weights the adapters modify, whatever dtype or device they are loaded in.

        `v2:<digest of the wrapped layers' names and shapes>:<a strided sample of their weights, as bfloat16>`;
        `_same_base` compares the samples to within bfloat16 rounding, so fp32, fp16 and bf16 loads of one base
        match and another base (or a fine-tuned one) does not.
        """
        digest, samples = self._fingerprint_samples()
        if digest is None:
            return None
        data = base64.b64encode(samples.to(torch.bfloat16).view(torch.int16).numpy().tobytes()).decode()
        return f"v2:{digest}:{data}"

    def _same_base(self, expected: str) -> bool:
        """Whether the loaded base is the one `expected` (a saved `base_fingerprint`) was taken from."""
        digest, samples = self._fingerprint_samples()
        if digest is None:  # offloaded weights: nothing to compare
            return True
        if not expected.startswith("v2:"):
            return self._fingerprint_v1() == expected  # saved by lora_hf 0.1.0: exact, fp32 only
        try:
            _, saved_digest, data = expected.split(":", 2)
            raw = base64.b64decode(data.encode(), validate=True)
            saved = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16).float()
        except (ValueError, RuntimeError):
            raise ValueError(f"`base_fingerprint` in config.json is malformed: {_short_fingerprint(expected)!r}.") from None
        if saved_digest != digest or saved.shape != samples.shape:
            return False
        # bfloat16 keeps 8 significant bits: a value rounded once (bf16) or twice (fp16, then bf16 here) is within 2**-8.
        return bool(torch.all((samples - saved).abs() <= 2**-6 * saved.abs() + 1e-6))

    def _fingerprint_v1(self) -> str:
        """The fingerprint lora_hf 0.1.0 saved: a hash of rounded fp32 samples (changes with the load dtype)."""
        digest = hashlib.sha256()
        prefix = self._base_prefix()
        for name, layer in sorted(lora_layers(self.backbone)):
            weight = layer.weight.detach()
            if layer.merged:
                weight = weight - layer.delta_weight()
            flat = weight.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
            if prefix and name.startswith(prefix + "."):
                name = name[len(prefix) + 1 :]
            digest.update(f"{name}:{tuple(weight.shape)}:".encode())
            digest.update(sample.numpy().round(5).tobytes())
        return digest.hexdigest()[:16]

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
        from transformers.integrations.accelerate import check_and_set_device_map

        if model_args:
            raise ValueError(f"{cls.__name__}.from_pretrained takes no positional arguments after the path, got {model_args!r}.")
        if kwargs.pop("use_safetensors", None) is False:
            raise ValueError("`use_safetensors=False`: lora_hf reads safetensors only.")
        for name, why in _UNSUPPORTED_LOAD_KWARGS.items():
            if kwargs.pop(name, None) not in (None, False, {}, ""):
                raise ValueError(f"{cls.__name__}.from_pretrained does not support `{name}`: {why}")
        for ignored in _IGNORED_LOAD_KWARGS:
            kwargs.pop(ignored, None)
        # Refuses a meta-device context as transformers does, and turns a device context into a device map.
        device_map = check_and_set_device_map(kwargs.pop("device_map", None))
        dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        load_kwargs = {k: kwargs.pop(k) for k in _BACKBONE_LOAD_KWARGS if k in kwargs}
        generation_config = kwargs.pop("generation_config", None)
        config = cls._config_for_loading(pretrained_model_name_or_path, config, hub_kwargs)
        for key, value in kwargs.items():  # config overrides, as transformers passes leftover kwargs to the config
            if key not in _CONFIG_OVERRIDES and not hasattr(config, key):
                raise ValueError(
                    f"{cls.__name__}.from_pretrained got unknown arguments: {sorted(kwargs)} (neither loading arguments "
                    "nor fields of the config or its backbone_config)."
                )
            setattr(config, key, value)
        if load_kwargs.get("attn_implementation") is not None:
            config._attn_implementation = load_kwargs["attn_implementation"]
        if load_kwargs.get("experts_implementation") is not None:
            config._experts_implementation = load_kwargs["experts_implementation"]
        if pretrained_model_name_or_path is not None:
            config._name_or_path = str(pretrained_model_name_or_path)  # model.name_or_path, as transformers sets it

        if state_dict is not None:  # the model's own state dict, in place of the file's tensors
            state, metadata = dict(state_dict), {"lora_hf_format": "full", "base_prefix": _prefix_of(cls, config), "architecture": cls.__name__}
            if pretrained_model_name_or_path is not None:
                metadata = _read_safetensors(_resolve_file(pretrained_model_name_or_path, WEIGHTS_NAME, hub_kwargs))[1] or metadata
        elif pretrained_model_name_or_path is None:
            raise ValueError(f"{cls.__name__}.from_pretrained needs a directory or Hub id, or `config=` with `state_dict=`.")
        else:
            weights_path = _resolve_file(pretrained_model_name_or_path, WEIGHTS_NAME, hub_kwargs)
            state, metadata = _read_safetensors(weights_path)
        fmt = metadata.get("lora_hf_format")
        loose = fmt is None  # not written by lora_hf: load what fits and report the rest, as transformers does
        if loose:
            fmt = "adapter" if (base_model_name_or_path or config.base_model_name_or_path) else "full"
            metadata = {**metadata, "base_prefix": _prefix_of(cls, config), "architecture": cls.__name__}
        if fmt not in ("adapter", "full"):
            raise ValueError(
                f"The weights of {str(pretrained_model_name_or_path)!r} have `lora_hf_format` {fmt!r} in their metadata; "
                "lora_hf writes 'adapter' or 'full'."
            )
        if fmt == "full":
            model = cls(config)
            if dtype not in (None, "auto"):
                model.to(dtype)
            elif dtype == "auto":
                model.to(_saved_dtype(state, config))
        else:
            model = cls._build_on_base(
                pretrained_model_name_or_path, config, base_model_name_or_path, ignore_base_mismatch, ignore_mismatched_sizes,
                dtype, device_map, load_kwargs, hub_kwargs,
            )
        info = model._load_saved_tensors(
            state, metadata, strict_full=fmt == "full", ignore_mismatched_sizes=ignore_mismatched_sizes, loose=loose
        )
        if fmt == "full":
            _place(model, device_map, load_kwargs.get("max_memory"))
        model._load_generation_config(pretrained_model_name_or_path, generation_config, hub_kwargs)
        model.eval()
        return (model, info) if output_loading_info else model

    @classmethod
    def _config_for_loading(cls, path, config, hub_kwargs: dict) -> LoraConfig:
        if config is None or isinstance(config, (str, os.PathLike)):
            source = config if config is not None else path
            if source is None:
                raise ValueError(f"{cls.__name__}.from_pretrained needs a directory or Hub id, or `config=`.")
            _check_local_path(source)
            return LoraConfig.from_pretrained(source, **hub_kwargs)
        if getattr(config, "model_type", None) != LoraConfig.model_type:
            raise ValueError(f"`config` must be a LoraConfig (model_type 'lora'), got {type(config).__name__} (model_type {config.model_type!r}).")
        if not isinstance(config, LoraConfig):
            # The same class loaded from another copy of this file (remote code loads each module on its own).
            return LoraConfig.from_dict(config.to_dict())
        return copy.deepcopy(config)  # never mutate the caller's config

    @classmethod
    def _build_on_base(cls, path, config, base_model_name_or_path, ignore_base_mismatch, ignore_mismatched_sizes,
                       dtype, device_map, load_kwargs, hub_kwargs) -> "LoraPreTrainedModel":
        """Load the base an adapter-only save names, in the dtype and on the devices asked for, and wrap it."""
        base = base_model_name_or_path or config.base_model_name_or_path
        if not base:
            raise ValueError(
                f"{path!r} holds adapters only and its config names no base model; pass "
                "`base_model_name_or_path=` with the base model's Hub id or local directory."
            )
        base_config = config.backbone_config
        vocab_size = base_config.get_text_config().vocab_size
        resized = config.base_vocab_size is not None and config.base_vocab_size != base_config.get_text_config().vocab_size
        if resized:  # the base checkpoint has its own vocabulary size; the added rows come from our file
            base_config = copy.deepcopy(base_config)
            base_config.get_text_config().vocab_size = config.base_vocab_size
        extra = {k: v for k, v in load_kwargs.items() if k not in ("experts_implementation",) and v is not None}
        if dtype is not None:
            extra["dtype"] = dtype
        if device_map is not None:
            extra["device_map"] = device_map
        # The head and other tensors the base lacks come from our file: the base's load report
        # ("newly initialized") would be wrong, so keep it quiet.
        with _transformers_quiet():
            try:
                check_base_weights(base)
                backbone, info = cls.backbone_auto_class.from_pretrained(
                    base, config=base_config, output_loading_info=True, ignore_mismatched_sizes=ignore_mismatched_sizes,
                    use_safetensors=True, **extra, **_base_hub_kwargs(hub_kwargs),
                )
            except OSError as err:
                raise OSError(
                    f"Could not load the base model {base!r} that the adapters in {str(path)!r} "
                    f"were trained on ({err}). Point to a local copy with `base_model_name_or_path=\"/path/to/base\"`."
                ) from None
            except RuntimeError as err:  # transformers refuses base tensors whose shapes differ from the saved backbone config
                raise ValueError(
                    f"The base model {base!r} does not fit the adapters in {str(path)!r}: its tensor "
                    f"shapes differ from those of the base they were trained on{_size_differences(base, base_config, hub_kwargs)} "
                    f"({str(err).splitlines()[0]}). Load the base they were trained on; `ignore_base_mismatch` cannot bridge shapes."
                ) from None
        model = cls(config, backbone=backbone)
        model._set_newly_initialized(info)
        if base_model_name_or_path:
            config.base_model_name_or_path = str(base_model_name_or_path)
        expected = config.base_fingerprint
        if expected and not ignore_base_mismatch:
            with _zero3_gathered([layer.weight for _, layer in lora_layers(model.backbone)]):
                same = model._same_base(expected)
                found = None if same else model.base_fingerprint()
            if not same:
                raise ValueError(
                    f"The base model {base!r} is not the one these adapters were trained on (fingerprint "
                    f"{_short_fingerprint(found)} != saved {_short_fingerprint(expected)}). Load the right "
                    "base, or pass `ignore_base_mismatch=True` to load anyway."
                )
        if resized:
            model.resize_token_embeddings(vocab_size, mean_resizing=False)
        return model

    def _load_generation_config(self, path, generation_config, hub_kwargs: dict) -> None:
        """The saved generation settings (`generation_config.json`), or the `generation_config` argument."""
        if not self.can_generate():
            return
        if generation_config is None and path is not None:
            from transformers import GenerationConfig

            try:
                generation_config = GenerationConfig.from_pretrained(path, **hub_kwargs)
            except OSError:  # saved before lora_hf wrote one, or by a model that cannot generate
                return
        if generation_config is not None:
            self.generation_config = generation_config

    def _load_saved_tensors(self, state: dict, metadata: dict, strict_full: bool, ignore_mismatched_sizes: bool = False,
                            loose: bool = False) -> dict:
        """Load saved tensors, mapping keys between head classes; refuse anything missing or left over.

        `loose` (a file lora_hf did not write) loads what fits and reports the rest instead, as transformers does.

        Returns transformers' loading info: `missing_keys` (initialised here, not loaded), `unexpected_keys`,
        `mismatched_keys` (re-initialised under `ignore_mismatched_sizes`) and `error_msgs`.
        """
        own_prefix = self._base_prefix()
        # A file rewritten by another tool loses its metadata: read its keys as this class's own.
        saved_prefix = metadata.get("base_prefix", own_prefix)
        own = self.state_dict(keep_vars=True)
        state = _from_checkpoint_keys(self, state, own)
        own_class = self._model_class().__name__
        saved_class = metadata.get("architecture") or (self.config.architectures or [own_class])[0]
        head_switch = saved_class != own_class
        new_rows = _new_rows(metadata)

        def split(key, prefix):
            rest = key[len("backbone.") :] if key.startswith("backbone.") else key
            if not prefix:
                return "body", rest
            if rest.startswith(prefix + "."):
                return "body", rest[len(prefix) + 1 :]
            return "head", rest

        own_by_canonical = {split(k, own_prefix): k for k in own}
        loaded, dropped, unexpected, mismatched, non_finite, reinit = set(), [], [], [], [], []
        for key, tensor in state.items():
            canonical = split(key, saved_prefix)
            target = own_by_canonical.get(canonical)
            if target is None or (canonical[0] == "head" and head_switch):
                (dropped if canonical[0] == "head" and head_switch else unexpected).append(key)
                continue
            shape = tuple(weight_shape(own[target]))
            if key in new_rows:  # the rows past the base's vocabulary only
                shape = (min(new_rows[key], shape[0]),) + shape[1:]
            if shape != tuple(tensor.shape) or own[target].is_floating_point() != tensor.is_floating_point():
                if ignore_mismatched_sizes and own[target].is_floating_point() == tensor.is_floating_point():
                    reinit.append((key, target, tuple(tensor.shape), shape))
                    continue
                what = f"saved {tuple(tensor.shape)}, model {shape}" if shape != tuple(tensor.shape) else f"saved dtype {tensor.dtype}, model {own[target].dtype}"
                mismatched.append(f"{key}: {what}")
                continue
            if isinstance(own[target], nn.Parameter) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                non_finite.append(key)
            loaded.add(target)
        if loose and unexpected:
            _LOAD_REPORT.warning(f"Some weights of the checkpoint were not used when initializing {type(self).__name__}: {unexpected[:8]}")
        if (unexpected and not loose) or mismatched:
            raise CheckpointMismatchError(
                f"The checkpoint does not fit {type(self).__name__}: "
                + (f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; " if unexpected else "")
                + (f"shape/dtype mismatches {mismatched[:8]}{' ...' if len(mismatched) > 8 else ''}; " if mismatched else "")
                + "the tensors must match config.json (r, target_modules, num_labels) and the base model's shapes"
                + ("; pass `ignore_mismatched_sizes=True` to re-initialise the tensors whose shapes differ." if mismatched else ".")
            )
        if non_finite:
            raise ValueError(
                f"The checkpoint holds NaN/Inf values in {non_finite[:8]}{' ...' if len(non_finite) > 8 else ''}: the run "
                "that saved it diverged. Load an earlier checkpoint."
            )
        if strict_full:
            required = set(own)
        else:
            required = self.new_parameter_names()
            for group in self.config.trained_groups:
                required |= self.group_parameter_names(group)
        reinit_targets = {target for _, target, _, _ in reinit}
        required -= reinit_targets
        fresh = []
        if head_switch:
            # A new head (and base tensors the old class never had, such as BERT's pooler) start fresh. A full
            # save holds every base tensor its class had: there, only adapters and trained groups must be found.
            kept = self.group_parameter_names("lora")
            for group in self.config.trained_groups:
                kept |= self.group_parameter_names(group)
            fresh = sorted(
                k for k in required - loaded
                if split(k, own_prefix)[0] == "head" or k in self.newly_initialized_keys or (strict_full and k not in kept)
            )
            required -= set(fresh)
        params = {n for n, _ in self.named_parameters()}
        # Saved with the adapters from now on, or every load of an adapter save would draw them anew.
        self.newly_initialized_keys = sorted(set(self.newly_initialized_keys) | {k for k in set(fresh) | reinit_targets if k in params})
        missing = sorted(k for k in required - loaded if not _is_tied_copy(self, k, loaded))
        if missing and loose:
            _LOAD_REPORT.warning(f"Some weights of {type(self).__name__} were not initialized from the checkpoint and are newly initialized: {missing[:8]}")
            self.newly_initialized_keys = sorted(set(self.newly_initialized_keys) | (set(missing) & params))
            missing = []
        if missing:
            raise ValueError(
                f"The checkpoint lacks tensors {type(self).__name__} needs: {missing[:8]}{' ...' if len(missing) > 8 else ''}. "
                "It was saved from another configuration (r, target_modules or trained groups differ)."
            )
        skip = set(dropped) | set(unexpected) | {r[0] for r in reinit}
        targets = {key: own[own_by_canonical[split(key, saved_prefix)]] for key in state if key not in skip}
        with torch.no_grad(), _zero3_gathered(list(targets.values()), modified=True):
            for key, target in targets.items():
                if key in new_rows:  # the rows past the base's vocabulary only
                    target[target.shape[0] - new_rows[key]:].copy_(state[key])
                else:
                    target.copy_(state[key])
        if reinit:
            self._reinitialize(sorted(reinit_targets))
            _LOAD_REPORT.warning(
                f"Some weights of {type(self).__name__} were not initialized from the checkpoint and are newly initialized "
                "because the shapes did not match:\n"
                + "\n".join(f"- {key}: found shape {saved} in the checkpoint and {shape} in the model instantiated" for key, _, saved, shape in reinit)
                + "\nReinit due to size mismatch: you should probably TRAIN this model on a down-stream task."
            )
        if dropped or fresh:
            logger.warning(
                f"Dropped the saved {saved_class} head ({len(dropped)} tensors); newly initialised "
                f"in {type(self).__name__}, to be trained: {fresh}."
            )
        self.config.architectures = [own_class]
        # Re-apply the phase: loading replaced no Parameter, but keep requires_grad explicit.
        self._apply_phase(self.active_phase)
        missing_keys = set(self.newly_initialized_keys) | (set(own) - loaded - reinit_targets if strict_full else set())
        missing_keys = {k for k in missing_keys if not _is_tied_copy(self, k, loaded)}
        return {
            "missing_keys": missing_keys,
            "unexpected_keys": set(dropped) | set(unexpected),
            "mismatched_keys": {(key, saved, shape) for key, _, saved, shape in reinit},
            "error_msgs": [],
        }

    def _reinitialize(self, keys: list) -> None:
        """Draw the tensors `keys` anew with the backbone's initialiser (a head whose size changed)."""
        modules = {k.rsplit(".", 1)[0] for k in keys}
        with torch.no_grad():
            for name in sorted(modules):
                module = self.get_submodule(name)
                for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
                    if hasattr(tensor, "_is_hf_initialized"):
                        del tensor._is_hf_initialized
                module._is_hf_initialized = False
                if isinstance(module, _LoraLayer):
                    module.reset_lora_parameters(self.config.init_lora_weights)
                else:
                    self.backbone._init_weights(module)
                module._is_hf_initialized = True

    # ----- Hub and PEFT: thin doors into lora_hf.hub / lora_hf.peft_interop ----------------------
    @staticmethod
    def _lora_hf_module(name: str):
        # Imported by name when called: those modules do not travel with the model, and transformers
        # tries to fetch every `from .x import` of a travelling file when it loads remote code.
        import importlib

        try:
            return importlib.import_module(f"lora_hf.{name}")
        except ImportError:
            raise ImportError(f"This needs the lora_hf package (`pip install lora_hf`); `lora_hf.{name}` cannot be imported here.") from None

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str | None = None, **kwargs):
        """Upload config, weights, the modelling code and a model card to `repo_id` in one commit (see `lora_hf.hub.push_to_hub`).

        Example:
            >>> model.push_to_hub("me/minilm-vader-lora", private=True)
        """
        hub = self._lora_hf_module("hub")
        return hub.push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message, **kwargs)

    def save_peft_adapter(self, save_directory, base_model_name_or_path: str | None = None):
        """Write the adapters in PEFT's format: `peft.PeftModel.from_pretrained(base, save_directory)` gives the same outputs.

        Example:
            >>> model.save_peft_adapter("peft-adapter")
        """
        return self._lora_hf_module("peft_interop").save_peft_adapter(self, save_directory, base_model_name_or_path)

    @classmethod
    def from_peft_adapter(cls, peft_dir, base_model_name_or_path: str | None = None, **kwargs) -> "LoraPreTrainedModel":
        """Build this class from a PEFT LoRA adapter directory on its base model (`kwargs` go to `from_base_model`).

        Example:
            >>> model = LoraForSequenceClassification.from_peft_adapter("peft-adapter")
        """
        return cls._lora_hf_module("peft_interop").load_peft_adapter(cls, peft_dir, base_model_name_or_path, **kwargs)


class LoraModel(LoraPreTrainedModel):
    """LoRA on the bare base model (`AutoModel`): returns hidden states.

    Example:
        >>> model = LoraModel.from_base_model("sentence-transformers/all-MiniLM-L6-v2", r=8)
    """

    backbone_auto_class = AutoModel
    pipeline_tag = "feature-extraction"
    peft_task_type = 'FEATURE_EXTRACTION'
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
        head = self._vocabulary_head()
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if not (self.training and labels is not None and head is not None and not output_attentions and not output_hidden_states and not kwargs):
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
    peft_task_type = 'SEQ_CLS'
    description = "a LoRA-adapted text classifier"
    training_tasks = ('classification', 'regression')


class LoraForTokenClassification(LoraPreTrainedModel):
    """LoRA on `AutoModelForTokenClassification`.

    Example:
        >>> model = LoraForTokenClassification.from_base_model("bert-base-cased", num_labels=9)
    """

    backbone_auto_class = AutoModelForTokenClassification
    pipeline_tag = "token-classification"
    peft_task_type = 'TOKEN_CLS'
    description = "a LoRA-adapted token classifier"
    training_tasks = ('token-classification',)


class LoraForQuestionAnswering(LoraPreTrainedModel):
    """LoRA on `AutoModelForQuestionAnswering` (extractive span prediction).

    Example:
        >>> model = LoraForQuestionAnswering.from_base_model("bert-base-uncased")
    """

    backbone_auto_class = AutoModelForQuestionAnswering
    pipeline_tag = "question-answering"
    peft_task_type = 'QUESTION_ANS'
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
    peft_task_type = 'CAUSAL_LM'
    description = "a LoRA-adapted causal language model"
    training_tasks = ('causal-lm',)
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
# Every head class: the one list the Auto registration, `auto_map` and the tables in hub, peft_interop
# and training are derived from. A new head is a class above with its attributes, added here.
HEAD_CLASSES = (LoraModel, LoraForMaskedLM, LoraForSequenceClassification, LoraForTokenClassification, LoraForQuestionAnswering, LoraForCausalLM)


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


# Wrappers that put themselves into parameter names (FSDP1 units, activation checkpointing). Their state
# dicts leave them out, and so do the names lora_hf groups, saves and loads.
_WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' logging at ERROR for the block, restored after (errors still show)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _key_conversions(model: nn.Module, keys) -> dict:
    """`{live key: checkpoint key}` for the `keys` transformers renames when it saves the backbone (GPT-NeoX's `lm_head`
    is `embed_out` in its checkpoints); saves use the checkpoint names, as `PreTrainedModel.save_pretrained` does.
    Reads module classes only, never the state dict: under FSDP that is a collective, and saves write on one rank."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without key conversions: the live names are the checkpoint names
        return {}
    live = {k: torch.empty(0) for k in keys}  # one distinct object per key, to follow each through the renaming
    by_object = {id(t): k for k, t in live.items()}
    try:
        saved = revert_weight_conversion(model, dict(live))
    except (RuntimeError, ValueError):  # a conversion that splits or merges tensors (experts) needs their values
        return {}
    return {by_object[id(t)]: k for k, t in saved.items() if id(t) in by_object and by_object[id(t)] != k}


def _to_checkpoint_keys(model: nn.Module, tensors: dict) -> dict:
    renames = _key_conversions(model, tensors)
    return {renames.get(k, k): v for k, v in tensors.items()}


def _from_checkpoint_keys(model: nn.Module, state: dict, own_keys) -> dict:
    """Saved keys to live ones; files saved with the live names (lora_hf 0.1.0) load unchanged."""
    back = {saved: live for live, saved in _key_conversions(model, own_keys).items()}
    return {back.get(k, k): v for k, v in state.items()}


def _module_roots(keys: list) -> list:
    """The fewest module paths covering `keys`: `backbone.cls.predictions.transform.dense.weight` and
    `backbone.cls.predictions.bias` give `cls.predictions`."""
    modules = sorted({k.removeprefix("backbone.").rsplit(".", 1)[0] for k in keys})
    return [m for m in modules if not any(m.startswith(other + ".") for other in modules)]


def _unwrapped_name(name: str) -> str:
    for wrapper in _WRAPPER_NAMES:
        name = name.replace(wrapper, "")
    return name


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard, a collective every rank calls: a DTensor (FSDP2) on every rank, an FSDP1
    `ShardedTensor` on rank 0 (the others get an empty tensor: they do not write). Other tensors as they are."""
    if hasattr(tensor, "full_tensor") and hasattr(tensor, "device_mesh"):
        return tensor.full_tensor()
    if type(tensor).__name__ == "ShardedTensor":
        shards = tensor.local_shards()
        device = shards[0].tensor.device if shards else torch.device("cpu")
        on_zero = torch.distributed.get_rank() == 0
        full = torch.empty(tensor.size(), dtype=tensor.dtype, device=device) if on_zero else None
        tensor.gather(dst=0, out=full)
        return full if on_zero else torch.empty(0)
    return tensor


@contextlib.contextmanager
def _zero3_gathered(tensors: list, modified: bool = False):
    """Whole weights inside the block under DeepSpeed ZeRO-3 (which keeps a slice of each per rank), partitioned
    again after it, from the values written in it when `modified`. A collective: every rank runs it, and every rank
    writes the same values. Without ZeRO-3, nothing happens."""
    partitioned = [t for t in dict.fromkeys(tensors) if hasattr(t, "ds_id")]
    if partitioned:
        partitioned[0].all_gather(param_list=partitioned)
    try:
        yield
    finally:
        if partitioned:
            partitioned[0].partition(param_list=partitioned, has_been_updated=modified)


def _auto_map() -> dict:
    heads = {cls.backbone_auto_class.__name__: f"modeling_lora.{cls.__name__}" for cls in HEAD_CLASSES}
    return {"AutoConfig": "configuration_lora.LoraConfig", **heads}


def _resolve_file(name_or_path, filename: str, hub_kwargs: dict) -> str:
    subfolder = hub_kwargs.get("subfolder") or ""
    local = Path(name_or_path) / subfolder / filename
    if Path(name_or_path).is_dir():
        if not local.is_file():
            raise OSError(f"{str(name_or_path)!r} has no {filename}; is it a directory written by `save_pretrained`?")
        return str(local)
    from huggingface_hub import hf_hub_download  # a dependency of transformers

    return hf_hub_download(str(name_or_path), filename, **hub_kwargs)


def check_base_weights(name_or_path, subfolder: str = "") -> None:
    """Refuse a local base directory whose weights are not safetensors, naming its files: nothing is unpickled."""
    directory = Path(name_or_path) / subfolder
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl"))
    found = f"holds its weights as {others}" if others else "holds no weights file"
    raise OSError(
        f"The base model directory {str(directory)!r} {found}, and lora_hf reads safetensors only (no pickle is loaded, "
        "not even with weights_only): save the base with `save_pretrained(..., safe_serialization=True)` from a copy you "
        "trust, or pass its Hub id."
    )


def _check_local_path(name_or_path) -> None:
    text = str(name_or_path)
    looks_local = isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local and not os.path.exists(text):
        raise OSError(f"{text!r} does not exist; pass a directory written by `save_pretrained` or a Hub repo id ('user/name').")


def _size_differences(base, saved_config, hub_kwargs: dict) -> str:
    """`" (hidden_size 64, trained on 32)"`: the integer config fields where `base` differs from the saved backbone."""
    from transformers import AutoConfig

    try:
        own = AutoConfig.from_pretrained(base, **_base_hub_kwargs(hub_kwargs)).to_dict()
    except (OSError, ValueError):
        return ""
    saved = saved_config.to_dict()
    diffs = [
        f"{k} {v}, trained on {saved[k]}"
        for k, v in sorted(own.items())
        if isinstance(v, int) and not isinstance(v, bool) and isinstance(saved.get(k), int) and saved[k] != v
    ]
    return f" ({'; '.join(diffs[:6])})" if diffs else ""


def _base_hub_kwargs(hub_kwargs: dict) -> dict:
    # The subfolder and revision belong to the adapter repo, not to the base model's.
    return {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "force_download", "local_files_only", "token")}


def _read_safetensors(path: str) -> tuple:
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise OSError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    return state, metadata


def _resolve_dtype(dtype, torch_dtype):
    """`dtype` (or the older `torch_dtype`) as a torch dtype, `"auto"`, or None, as transformers reads it."""
    value = dtype if dtype is not None else torch_dtype
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise ValueError(f"`dtype` must be a torch dtype, the name of one ('bfloat16') or 'auto', got {value!r}.")


def _saved_dtype(state: dict, config) -> torch.dtype:
    """`dtype="auto"`: the config's dtype, else that of the first floating tensor saved, as transformers does."""
    if isinstance(getattr(config, "dtype", None), torch.dtype):
        return config.dtype
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.get_default_dtype())


def _place(model: nn.Module, device_map, max_memory) -> None:
    """Put a model built here (the full layout) where `device_map` says: one device, or dispatched by accelerate."""
    if device_map is None:
        return
    if isinstance(device_map, dict) and len({str(d) for d in device_map.values()}) == 1:
        model.to(next(iter(device_map.values())))
        return
    from transformers.integrations.accelerate import accelerate_dispatch, infer_auto_device_map  # accelerate underneath

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=set(model._no_split_modules))
    if "disk" in set(map(str, device_map.values())):
        raise ValueError("`device_map` offloads to disk: save the adapter-only layout, whose base loads with any device_map.")
    accelerate_dispatch(model, None, device_map, None, None, False)


def _new_rows(metadata: dict) -> dict:
    """`{key: rows}`: tensors saved as only their last `rows` rows (tokens added to the base's vocabulary)."""
    try:
        rows = json.loads(metadata.get("lora_hf_new_rows", "{}"))
    except ValueError:
        rows = None
    if not isinstance(rows, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in rows.values()):
        raise ValueError(f"The weights' metadata `lora_hf_new_rows` must map tensor names to row counts, got {metadata.get('lora_hf_new_rows')!r}.")
    return rows


def _prefix_of(cls, config) -> str:
    """The attribute a `cls` backbone keeps its base model under (`bert`), as `_base_prefix` reads it off a model."""
    with torch.device("meta"):
        skeleton = cls.backbone_auto_class.from_config(copy.deepcopy(config.backbone_config))
    prefix = getattr(skeleton, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(skeleton, prefix, None), nn.Module) else ""


def _short_fingerprint(fingerprint: str | None) -> str:
    return str(fingerprint).rsplit(":", 1)[0] if fingerprint else str(fingerprint)


def _is_tied_copy(model: nn.Module, key: str, loaded: set) -> bool:
    """True for a tied alias (GPT-2 `lm_head.weight`) whose source tensor was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(params[other] is params[key] for other in loaded if other in params)
