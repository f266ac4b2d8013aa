"""lora_hf: LoRA as a native `transformers` model family.

`import lora_hf` registers `LoraConfig` (model_type `lora`) with `AutoConfig` and every LoRA
model class with its `AutoModel*` class, so saved LoRA models load like any other model.
"""

from transformers import AutoConfig

from .configuration_lora import GROUPS, PHASES, LoraConfig
from .lora_layers import LoraEmbedding, LoraLinear
from .modeling_lora import (
    HEAD_CLASSES,
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraForQuestionAnswering,
    LoraForSequenceClassification,
    LoraForTokenClassification,
    LoraModel,
    LoraPreTrainedModel,
    head_class,
)

__version__ = "0.1.0"

__all__ = [
    "GROUPS",
    "HEAD_CLASSES",
    "PHASES",
    "head_class",
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
for _model in HEAD_CLASSES:
    _model.backbone_auto_class.register(LoraConfig, _model, exist_ok=True)

# The Hub and PEFT entry points live in modules that do not travel with a saved model's code; the package adds
# them to the classes here (a model loaded as remote code without lora_hf keeps transformers' own push_to_hub).
from . import hub, peft_interop  # noqa: E402

LoraPreTrainedModel.push_to_hub = hub.push_to_hub
LoraPreTrainedModel.save_peft_adapter = peft_interop.save_peft_adapter
LoraPreTrainedModel.from_peft_adapter = classmethod(peft_interop.load_peft_adapter)
