# This file travels: `save_pretrained` copies it next to `config.json` so that
# `trust_remote_code=True` works where lora_hf is not installed. It imports only
# torch, transformers and its sibling modules.
"""`LoraConfig`: a LoRA model's configuration, nesting the base model's own config."""

import math
import re
from typing import Any

import torch
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["LoraConfig", "PHASES", "GROUPS", "is_encoder"]

PHASES = ("pretrain", "finetune")
GROUPS = ("lora", "embeddings", "head", "attention", "norm", "bias", "all")
INIT_CHOICES = ("kaiming", "gaussian")
# Phase 1 trains the adapters only (and the LM head when the base has none): training the embeddings too cost
# 48 MB in every later save and no accuracy (docs/phase_one.md).
DEFAULT_PHASE_TRAINABLE = {"pretrain": ["lora"], "finetune": ["lora", "head"]}
# Fields every config has that the backbone reads from its own config: set on a LoraConfig, they are set on the
# backbone's config too, so the two never disagree (`config.output_hidden_states = True` reaches the model).
_LABEL_FIELDS = ("id2label", "label2id", "problem_type")
_FLAG_DEFAULTS = {"output_hidden_states": False, "output_attentions": False, "return_dict": True, "chunk_size_feed_forward": 0}
SHARED_FIELDS = _LABEL_FIELDS + tuple(_FLAG_DEFAULTS)


class LoraConfig(PretrainedConfig):
    r"""
    Configuration of a lora_hf model: the base model's config (`backbone_config`) plus the LoRA
    hyper-parameters and which parameter groups each training phase trains.

    Args:
        backbone_config (`PretrainedConfig` or `dict`): config of the wrapped base model (any `AutoConfig`).
        base_model_name_or_path (`str`): Hub id or local directory the base weights are loaded from.
        r (`int`, defaults to 8): rank of the update `B @ A`.
        lora_alpha (`float`, defaults to 16): the update is scaled by `lora_alpha / r`.
        lora_dropout (`float`, defaults to 0.0): dropout on the LoRA branch input, in [0, 1).
        target_modules (`"auto"` or `list[str]`): module-name suffixes or `re:` regexes; `"auto"` wraps every
            attention projection: query, key, value and the output projection (or a fused QKV and the output).
        use_rslora (`bool`, defaults to False): scale by `lora_alpha / sqrt(r)` instead.
        init_lora_weights (`str`, defaults to `"kaiming"`): `"kaiming"` (A Kaiming-uniform) or `"gaussian"` (A normal,
            std 1/r); B is zero. Embedding layers start with A at zero and B normal under either (as PEFT's do).
        phase_trainable (`dict[str, list[str]]`): phase (`pretrain`, `finetune`) -> groups it trains, from
            `lora`, `embeddings`, `head`, `attention`, `norm`, `bias`, `all` or `re:<regex on parameter names>`.

    The backbone's text-config attributes read through: `config.hidden_size`, `config.vocab_size`,
    `config.num_attention_heads`, ... are the backbone config's (and setting one sets it there). Label fields
    (`num_labels`, `id2label`, `label2id`, `problem_type`) and the output flags (`output_hidden_states`,
    `output_attentions`, `return_dict`, `chunk_size_feed_forward`) given to `LoraConfig` are set on the
    backbone config too; when none is given, they are the backbone's.

    Example:
        >>> from transformers import BertConfig
        >>> config = LoraConfig(backbone_config=BertConfig(), r=16, target_modules=["query", "value"], num_labels=3)
        >>> config.scaling, config.hidden_size, config.backbone_config.num_labels
        (1.0, 768, 3)
    """

    model_type = "lora"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True)}

    backbone_config: dict | PretrainedConfig | None = None
    base_model_name_or_path: str | None = None
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "auto"
    use_rslora: bool = False
    init_lora_weights: str = "kaiming"
    phase_trainable: dict[str, list[str]] | None = None
    # Set by the library: groups any phase has trained (saved with the adapters) and a
    # fingerprint of the base weights the adapters were trained on.
    trained_groups: list[str] | None = None
    base_fingerprint: str | None = None
    # Set by `resize_token_embeddings`: the base checkpoint's vocabulary size (adapter saves hold the rows past it).
    base_vocab_size: int | None = None

    def __post_init__(self, **kwargs):
        # config.json is untrusted input: every malformed value becomes a ValueError that names the
        # field, never a TypeError/KeyError/AttributeError from deep inside transformers.
        self.backbone_config = _backbone_from_dict(self.backbone_config)
        _check_labels(self.id2label, kwargs.get("num_labels"))
        labels_given = self.id2label is not None or kwargs.get("num_labels") is not None or self.problem_type is not None
        flags_given = {name for name in _FLAG_DEFAULTS if name in kwargs or self.__dict__.get(name, _FLAG_DEFAULTS[name]) != _FLAG_DEFAULTS[name]}
        try:
            super().__post_init__(**kwargs)
        except ValueError:
            raise
        except Exception as err:  # transformers' generic field handling (id2label, num_labels, rope, ...)
            raise ValueError(f"Invalid LoraConfig field value: {type(err).__name__}: {_short(err)}") from None
        if self.phase_trainable is None:
            self.phase_trainable = {phase: list(groups) for phase, groups in DEFAULT_PHASE_TRAINABLE.items()}
        if isinstance(self.target_modules, str) and self.target_modules != "auto":
            self.target_modules = [self.target_modules]
        elif isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.trained_groups is None:
            self.trained_groups = []
        self.validate_lora()
        if isinstance(self.backbone_config, PretrainedConfig):
            backbone = self.backbone_config
            for name in SHARED_FIELDS:
                push = labels_given if name in _LABEL_FIELDS else name in flags_given
                if push:
                    setattr(backbone, name, getattr(self, name))
                else:
                    object.__setattr__(self, name if name != "output_attentions" else "_output_attentions", getattr(backbone, name))
        object.__setattr__(self, "_lora_ready", True)

    # ----- the backbone's attributes, read and written through --------------------------------
    def __getattr__(self, name: str):
        # Called only for names a LoraConfig does not have itself: `hidden_size`, `vocab_size`, ...
        state = self.__dict__
        backbone = state.get("backbone_config")
        if name.startswith("_") or not state.get("_lora_ready") or not isinstance(backbone, PretrainedConfig):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        for owner in (backbone.get_text_config(), backbone):
            try:
                return getattr(owner, name)
            except AttributeError:
                continue
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r} (nor has its backbone_config)")

    def __setattr__(self, key, value):
        state = self.__dict__
        backbone = state.get("backbone_config")
        if not state.get("_lora_ready") or key.startswith("_") or not isinstance(backbone, PretrainedConfig):
            return super().__setattr__(key, value)
        if key in SHARED_FIELDS:
            super().__setattr__(key, value)
            setattr(backbone, key, value)
            return
        own = key in self.__dataclass_fields__ or hasattr(type(self), key) or key in state
        if not own:
            text = backbone.get_text_config()
            for owner in (text, backbone):
                if hasattr(owner, key):
                    setattr(owner, key, value)
                    return
        super().__setattr__(key, value)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def validate_lora(self) -> None:
        """Raise `ValueError` naming the field, the value and what is allowed."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"`r` must be a positive integer, got {self.r!r}.")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not 0 < self.lora_alpha < math.inf:
            raise ValueError(f"`lora_alpha` must be a positive finite number, got {self.lora_alpha!r}.")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` must be a number in [0, 1), got {self.lora_dropout!r}.")
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"`use_rslora` must be True or False, got {self.use_rslora!r}.")
        if self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(f"`init_lora_weights` must be one of {list(INIT_CHOICES)}, got {self.init_lora_weights!r}.")
        self._validate_target_modules()
        self._validate_phase_trainable()
        if not isinstance(self.trained_groups, list):
            raise ValueError(f"`trained_groups` must be a list of groups from {list(GROUPS)} or 're:<regex>', got {self.trained_groups!r}.")
        for group in self.trained_groups:
            check_group(group, "trained_groups")
        for owner, name in ((self, "dtype"), (self.backbone_config, "backbone_config.dtype")):
            dtype = getattr(owner, "dtype", None)
            if dtype is not None and not isinstance(dtype, (torch.dtype, dict)):  # a str was already turned into torch.<name>
                raise ValueError(f"`{name}` must be a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}.")
        architectures = self.architectures
        if architectures is not None and not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
            raise ValueError(f"`architectures` must be a list of model class names, got {_short(architectures)}.")
        vocab = self.base_vocab_size
        if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1):
            raise ValueError(f"`base_vocab_size` must be a positive integer or null, got {vocab!r}.")
        for name in ("base_model_name_or_path", "base_fingerprint"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be a string or null, got {getattr(self, name)!r}.")
        if self.backbone_config is not None and not isinstance(self.backbone_config, PretrainedConfig):
            raise ValueError(f"`backbone_config` must be a config or a dict with `model_type`, got {type(self.backbone_config).__name__}.")
        if self.backbone_config is not None and self.backbone_config.model_type == self.model_type:
            raise ValueError("`backbone_config` must be the base model's config, got another `lora` config.")

    def _validate_target_modules(self) -> None:
        targets = self.target_modules
        if targets == "auto":
            return
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"`target_modules` must be 'auto' or a non-empty list of module-name suffixes or 're:' regexes, got {targets!r}."
            )
        for target in targets:
            if target.startswith("re:"):
                _compile(target[3:], "target_modules", target)

    def _validate_phase_trainable(self) -> None:
        phases = self.phase_trainable
        if not isinstance(phases, dict) or not phases:
            raise ValueError(f"`phase_trainable` must be a dict from phase {list(PHASES)} to groups, got {phases!r}.")
        for phase, groups in phases.items():
            if phase not in PHASES:
                raise ValueError(f"`phase_trainable` has unknown phase {phase!r}; allowed phases are {list(PHASES)}.")
            if isinstance(groups, str) or not isinstance(groups, (list, tuple)) or not groups:
                raise ValueError(
                    f"`phase_trainable[{phase!r}]` must be a non-empty list of groups from {list(GROUPS)} or 're:<regex>', "
                    f"got {groups!r}."
                )
            for group in groups:
                check_group(group, f"phase_trainable[{phase!r}]")

    @classmethod
    def from_dict(cls, config_dict, **kwargs) -> "LoraConfig":
        if not isinstance(config_dict, dict):
            raise ValueError(f"A LoraConfig is built from a JSON object of fields, got {type(config_dict).__name__} {_short(config_dict)}.")
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"The config has `model_type` {_short(model_type)}, not 'lora': it belongs to a base model, not a lora_hf "
                "model. Wrap the base with `LoraFor<Task>.from_base_model(...)`."
            )
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file) -> dict:
        config_dict = super()._dict_from_json_file(json_file)
        if not isinstance(config_dict, dict):
            raise OSError(f"{json_file} holds a JSON {type(config_dict).__name__}, not an object of config fields.")
        return config_dict

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        # Generation, pipelines and DeepSpeed's "auto" sizes read the text model's config.
        if self.backbone_config is None:
            return self
        return self.backbone_config.get_text_config(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("scaling", None)
        return output




def _backbone_from_dict(backbone: Any) -> Any:
    """Build the base model's config from its dict (as saved in config.json), refusing what cannot be one."""
    if backbone is None or isinstance(backbone, PretrainedConfig):
        return backbone
    if not isinstance(backbone, dict):
        raise ValueError(f"`backbone_config` must be a config or a dict with `model_type`, got {type(backbone).__name__} {_short(backbone)}.")
    model_type = backbone.get("model_type")
    if model_type == LoraConfig.model_type:
        raise ValueError("`backbone_config` must be the base model's config, got another `lora` config.")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(f"`backbone_config.model_type` must name a transformers model type (bert, gpt2, ...), got {_short(model_type)}.")
    try:
        return CONFIG_MAPPING[model_type].from_dict(backbone)
    except Exception as err:  # strict-dataclass validation, TypeError, ... from the base's config class
        raise ValueError(f"`backbone_config` is not a valid {model_type!r} config: {type(err).__name__}: {_short(err)}") from None


def _check_labels(id2label: Any, num_labels: Any) -> None:
    if id2label is not None and not (isinstance(id2label, dict) and all(re.fullmatch(r"-?\d+", str(k)) for k in id2label)):
        raise ValueError(f"`id2label` must map label ids (integers) to names, got {_short(id2label)}.")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"`num_labels` must be a positive integer, got {_short(num_labels)}.")


def _short(value: Any, limit: int = 200) -> str:
    text = " ".join(str(value).split()) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_group(group: Any, field: str) -> None:
    if not isinstance(group, str):
        raise ValueError(f"`{field}` has group {group!r}; groups are strings from {list(GROUPS)} or 're:<regex>'.")
    if group.startswith("re:"):
        _compile(group[3:], field, group)
    elif group not in GROUPS:
        raise ValueError(f"`{field}` has unknown group {group!r}; allowed are {list(GROUPS)} or 're:<regex>'.")


def _compile(pattern: str, field: str, value: str):
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"`{field}` item {value!r} is not a valid regex: {err}.") from None


def is_encoder(backbone_config) -> bool:
    """Whether the backbone is a bidirectional encoder with a masked-LM head (BERT, RoBERTa): its pretrain phase is
    masked LM; otherwise causal LM. The one test for it, read by training and the model card."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return backbone_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(backbone_config, "is_decoder", False)
