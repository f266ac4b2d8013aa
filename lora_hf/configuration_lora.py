# This file travels: `save_pretrained` copies it next to `config.json` so that
# `trust_remote_code=True` works where lora_hf is not installed. It imports only
# torch, transformers and its sibling modules.
"""`LoraConfig`: a LoRA model's configuration, nesting the base model's own config."""

import math
import re
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["LoraConfig", "PHASES", "GROUPS"]

PHASES = ("pretrain", "finetune")
GROUPS = ("lora", "embeddings", "head", "attention", "norm", "bias", "all")
INIT_CHOICES = ("kaiming", "gaussian")
DEFAULT_PHASE_TRAINABLE = {"pretrain": ["lora", "embeddings"], "finetune": ["lora", "head"]}


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
        target_modules (`"auto"` or `list[str]`): module-name suffixes or `re:` regexes; `"auto"` picks the
            attention projections (fused QKV, else query and value).
        use_rslora (`bool`, defaults to False): scale by `lora_alpha / sqrt(r)` instead.
        init_lora_weights (`str`, defaults to `"kaiming"`): `"kaiming"` (A Kaiming-uniform) or `"gaussian"`; B is zero.
        phase_trainable (`dict[str, list[str]]`): phase (`pretrain`, `finetune`) -> groups it trains, from
            `lora`, `embeddings`, `head`, `attention`, `norm`, `bias`, `all` or `re:<regex on parameter names>`.

    Example:
        >>> from transformers import BertConfig
        >>> config = LoraConfig(backbone_config=BertConfig(), r=16, target_modules=["query", "value"])
        >>> config.scaling
        1.0
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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.phase_trainable is None:
            self.phase_trainable = {phase: list(groups) for phase, groups in DEFAULT_PHASE_TRAINABLE.items()}
        if isinstance(self.target_modules, str) and self.target_modules != "auto":
            self.target_modules = [self.target_modules]
        elif isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.trained_groups is None:
            self.trained_groups = []
        self.validate_lora()

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def validate_lora(self) -> None:
        """Raise `ValueError` naming the field, the value and what is allowed."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"`r` must be a positive integer, got {self.r!r}.")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise ValueError(f"`lora_alpha` must be a positive number, got {self.lora_alpha!r}.")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` must be a number in [0, 1), got {self.lora_dropout!r}.")
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"`use_rslora` must be True or False, got {self.use_rslora!r}.")
        if self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(f"`init_lora_weights` must be one of {list(INIT_CHOICES)}, got {self.init_lora_weights!r}.")
        self._validate_target_modules()
        self._validate_phase_trainable()
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

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        # Generation, pipelines and DeepSpeed's "auto" sizes read the text model's config.
        if self.backbone_config is None:
            return self
        return self.backbone_config.get_text_config(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("scaling", None)
        return output


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
