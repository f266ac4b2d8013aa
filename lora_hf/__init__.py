"""lora_hf: LoRA as a native `transformers` model family.

`import lora_hf` registers `LoraConfig` (model_type `lora`) with `AutoConfig` and every LoRA
model class with its `AutoModel*` class, so saved LoRA models load like any other model.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_lora import GROUPS, PHASES, LoraConfig
from .lora_layers import LoraEmbedding, LoraLinear
from .modeling_lora import (
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraForQuestionAnswering,
    LoraForSequenceClassification,
    LoraForTokenClassification,
    LoraModel,
    LoraPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "GROUPS",
    "PHASES",
    "LoraConfig",
    "LoraEmbedding",
    "LoraForCausalLM",
    "LoraForMaskedLM",
    "LoraForQuestionAnswering",
    "LoraForSequenceClassification",
    "LoraForTokenClassification",
    "LoraLinear",
    "LoraModel",
    "LoraPreTrainedModel",
]

AutoConfig.register("lora", LoraConfig, exist_ok=True)
for _auto, _model in (
    (AutoModel, LoraModel),
    (AutoModelForCausalLM, LoraForCausalLM),
    (AutoModelForMaskedLM, LoraForMaskedLM),
    (AutoModelForSequenceClassification, LoraForSequenceClassification),
    (AutoModelForTokenClassification, LoraForTokenClassification),
    (AutoModelForQuestionAnswering, LoraForQuestionAnswering),
):
    _auto.register(LoraConfig, _model, exist_ok=True)
