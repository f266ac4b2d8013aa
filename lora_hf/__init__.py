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

# The Hub and PEFT entry points live in modules that do not travel with a saved model's code (a model loaded as
# remote code keeps transformers' own push_to_hub; `lora_hf.hub.push_to_hub(model, repo_id)` serves it too).
# They are imported when called, so `import lora_hf` does not load the Hub, datasets and evaluate stacks.
def _push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str | None = None, **kwargs):
    from .hub import push_to_hub

    return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message, **kwargs)


def _save_peft_adapter(self, save_directory, base_model_name_or_path: str | None = None):
    from .peft_interop import save_peft_adapter

    return save_peft_adapter(self, save_directory, base_model_name_or_path)


def _from_peft_adapter(cls, peft_dir, base_model_name_or_path: str | None = None, **kwargs):
    from .peft_interop import load_peft_adapter

    return load_peft_adapter(cls, peft_dir, base_model_name_or_path, **kwargs)


_push_to_hub.__doc__ = "Upload config, weights, the code files and a model card to `repo_id` in one commit (`lora_hf.hub.push_to_hub`)."
_save_peft_adapter.__doc__ = "Write the adapters in PEFT's format (`lora_hf.peft_interop.save_peft_adapter`)."
_from_peft_adapter.__doc__ = "Build this class from a PEFT LoRA adapter directory (`lora_hf.peft_interop.load_peft_adapter`)."
LoraPreTrainedModel.push_to_hub = _push_to_hub
LoraPreTrainedModel.save_peft_adapter = _save_peft_adapter
LoraPreTrainedModel.from_peft_adapter = classmethod(_from_peft_adapter)
