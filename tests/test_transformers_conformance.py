"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) on `LoraModel` and every
`LoraFor*` head, on the six tiny backbones.

The test code is the installed transformers version's own, taken from its PyPI source distribution at
test time (see transformers_common_tests.py). Each backbone gets one test class, as each transformers
model gets one in transformers' repository; its `all_model_classes` are the lora_hf heads whose Auto
class maps the backbone's config (GPT-2 has no masked LM, DistilBERT no causal LM). A few tests cannot
apply to a model whose backbone is frozen by design; they are skipped in `SKIPPED`, one reason each.
"""

import json
import unittest
from unittest import mock

from transformers.models.auto import modeling_auto

import transformers_common_tests
from tiny_backbones import BACKBONES, tiny_config

from lora_hf import (
    LoraConfig,
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraForQuestionAnswering,
    LoraForSequenceClassification,
    LoraForTokenClassification,
    LoraModel,
)

modeling_common, configuration_common = transformers_common_tests.load()
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
GenerationTesterMixin = modeling_common.GenerationTesterMixin
ids_tensor = modeling_common.ids_tensor
random_attention_mask = modeling_common.random_attention_mask

HEADS = (LoraModel, LoraForMaskedLM, LoraForCausalLM, LoraForSequenceClassification, LoraForTokenClassification,
         LoraForQuestionAnswering)

# Tests that cannot apply to a LoRA model, each with the reason (the backbone is frozen on purpose).
SKIPPED = {
    "test_retain_grad_hidden_states_attentions": "retains the gradient of the embedding output, which has none: the "
    "embeddings are frozen (only LoRA and the head train), so the first hidden state does not require grad",
}
# transformers' tests tell a base model from a head, and pick each head's labels, by looking the class name up in
# the `*_MAPPING_NAMES` tables of its own models. `import lora_hf` registers the classes with the Auto classes,
# which leaves those tables alone: list them there while the tests run, as each transformers model is.
NAME_TABLES = {
    "MODEL_MAPPING_NAMES": "LoraModel",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "LoraForMaskedLM",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "LoraForCausalLM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "LoraForSequenceClassification",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "LoraForTokenClassification",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "LoraForQuestionAnswering",
}


def heads_of(backbone: str) -> tuple:
    """The lora_hf classes whose Auto class has a model for `backbone`'s config."""
    config_class = type(tiny_config(backbone))
    return tuple(head for head in HEADS if config_class in head.backbone_auto_class._model_mapping)


class LoraModelTester:
    """Builds the config and inputs of one backbone, as each transformers model's `ModelTester` does."""

    batch_size = 4
    seq_length = 7
    is_training = True
    vocab_size = 99
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    num_labels = 3
    type_sequence_label_size = 3

    def __init__(self, parent, backbone: str):
        self.parent = parent
        self.backbone = backbone

    def get_backbone_config(self):
        config = tiny_config(self.backbone)  # num_labels 2, as transformers' testers leave it (QA heads need 2)
        if self.backbone == "gpt_neox":
            # Rotary dims 4 of a head's 8 (not 2): dynamic RoPE scaling divides by (dim - 2).
            config.rope_parameters["partial_rotary_factor"] = 0.5
        return config

    def get_config(self) -> LoraConfig:
        return LoraConfig(backbone_config=self.get_backbone_config(), r=4, lora_alpha=8)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_ids[input_ids == 0] = 3  # never the pad id: decoders' classification pools the last non-pad token
        inputs = {"input_ids": input_ids, "attention_mask": random_attention_mask([self.batch_size, self.seq_length])}
        if self.backbone in ("bert",):
            inputs["token_type_ids"] = ids_tensor([self.batch_size, self.seq_length], 2)
        return config, inputs


def _conformance_class(backbone: str):
    classes = heads_of(backbone)
    generative = any(head.can_generate() for head in classes)
    bases = (ModelTesterMixin,) + ((GenerationTesterMixin,) if generative else ()) + (unittest.TestCase,)

    def setUp(self):
        self.model_tester = LoraModelTester(self, backbone)
        # The backbone config as config.json holds it (ConfigTester compares the JSON with the arguments).
        backbone_config = json.loads(LoraConfig(backbone_config=tiny_config(backbone)).to_json_string())["backbone_config"]
        self.config_tester = ConfigTester(self, config_class=LoraConfig, backbone_config=backbone_config, r=4, lora_alpha=8)

    @classmethod
    def setUpClass(cls):
        cls._tables = [mock.patch.dict(getattr(modeling_auto, table), {"lora": name}) for table, name in NAME_TABLES.items()]
        for patch in cls._tables:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in cls._tables:
            patch.stop()

    def test_config(self):
        self.config_tester.run_common_tests()

    namespace = {
        "all_model_classes": classes,
        "setUp": setUp,
        "setUpClass": setUpClass,
        "tearDownClass": tearDownClass,
        "test_config": test_config,
        "__module__": __name__,
    }
    for name, reason in SKIPPED.items():
        namespace[name] = unittest.skip(reason)(lambda self: None)
    name = f"Lora{''.join(part.capitalize() for part in backbone.split('_'))}ConformanceTest"
    return type(name, bases, namespace)


for _backbone in BACKBONES:
    _cls = _conformance_class(_backbone)
    globals()[_cls.__name__] = _cls
del _cls
