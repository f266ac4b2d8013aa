"""LoraConfig: the base model's config nested as `backbone_config`, LoRA's fields, and errors that say what to fix."""

import pytest
import torch
from transformers import AutoConfig

from lora_hf import LoraConfig, LoraForSequenceClassification, LoraModel
from lora_hf.lora_layers import lora_layers
from tiny_backbones import BACKBONES, read_json, tiny_config


def test_defaults_are_the_documented_ones():
    config = LoraConfig()
    assert (config.model_type, config.r, config.lora_alpha, config.lora_dropout) == ("lora", 8, 16, 0.0)
    assert (config.target_modules, config.use_rslora, config.init_lora_weights) == ("auto", False, "kaiming")
    assert config.phase_trainable == {"pretrain": ["lora"], "finetune": ["lora", "head"]}
    assert config.base_model_name_or_path is None


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_config_round_trips_through_config_json_as_its_own_class(name, tmp_path):
    backbone = tiny_config(name)
    config = LoraConfig(backbone_config=backbone, base_model_name_or_path="some/base", r=4, lora_alpha=8, lora_dropout=0.1,
                        target_modules=["re:.*\\.0\\..*"], use_rslora=True, init_lora_weights="gaussian",
                        phase_trainable={"finetune": ["lora", "norm"]})
    config.save_pretrained(tmp_path)
    saved = read_json(tmp_path / "config.json")
    assert saved["model_type"] == "lora" and saved["backbone_config"]["model_type"] == backbone.model_type
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LoraConfig and type(loaded.backbone_config) is type(backbone)
    assert loaded.backbone_config.to_dict() == backbone.to_dict()
    fields = ("base_model_name_or_path", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "init_lora_weights", "phase_trainable")
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(config, f) for f in fields}


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scaling_is_alpha_over_r_or_alpha_over_sqrt_r(use_rslora, expected):
    config = LoraConfig(backbone_config=tiny_config("bert"), r=4, lora_alpha=16, use_rslora=use_rslora)
    assert config.scaling == expected
    assert {layer.scaling for _, layer in lora_layers(LoraModel(config))} == {expected}


def test_target_modules_are_name_suffixes_or_full_name_regexes():
    config = tiny_config("bert")
    by_suffix = LoraModel(LoraConfig(backbone_config=config, target_modules=["query", "attention.output.dense"]))
    assert by_suffix.lora_module_names == [f"encoder.layer.{i}.attention.{m}" for i in (0, 1) for m in ("output.dense", "self.query")]
    by_regex = LoraModel(LoraConfig(backbone_config=config, target_modules=["re:encoder\\.layer\\.1\\..*\\.(key|value)"]))
    assert by_regex.lora_module_names == ["encoder.layer.1.attention.self.key", "encoder.layer.1.attention.self.value"]
    # A suffix matches whole name parts: "dense" is not "output.dense"'s suffix "put.dense".
    with pytest.raises(ValueError, match="'put.dense'"):
        LoraModel(LoraConfig(backbone_config=config, target_modules=["put.dense"]))


def test_kaiming_and_gaussian_init_differ_in_a_and_start_b_at_zero():
    torch.manual_seed(0)
    layers = {init: [layer for _, layer in lora_layers(LoraModel(LoraConfig(backbone_config=tiny_config("bert"), r=4, init_lora_weights=init)))]
              for init in ("kaiming", "gaussian")}
    for init, found in layers.items():
        assert all(not layer.lora_B.any() for layer in found), init
    kaiming_a = torch.cat([layer.lora_A.flatten() for layer in layers["kaiming"]])
    gaussian_a = torch.cat([layer.lora_A.flatten() for layer in layers["gaussian"]])
    assert kaiming_a.abs().max() <= 1 / 32**0.5  # Kaiming-uniform with a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), in = 32
    assert abs(gaussian_a.std().item() - 1 / 4) < 0.02  # N(0, 1/r), 1024 samples


@pytest.mark.parametrize(
    "field, value, shown, allowed",
    [
        ("r", 0, "0", "positive integer"),
        ("r", -2, "-2", "positive integer"),
        ("lora_alpha", 0, "0", "positive finite number"),
        ("lora_alpha", -1.5, "-1.5", "positive finite number"),
        ("lora_dropout", 1.0, "1.0", "[0, 1)"),
        ("lora_dropout", -0.1, "-0.1", "[0, 1)"),
        ("init_lora_weights", "xavier", "'xavier'", "['kaiming', 'gaussian']"),
        ("target_modules", [], "[]", "'auto' or a non-empty list"),
        ("phase_trainable", {"warmup": ["lora"]}, "'warmup'", "['pretrain', 'finetune']"),
        ("phase_trainable", {"finetune": ["loras"]}, "'loras'", "['lora', 'embeddings', 'head', 'attention', 'norm', 'bias', 'all']"),
    ],
)
def test_bad_values_raise_value_error_naming_field_value_and_allowed_values(field, value, shown, allowed):
    with pytest.raises(ValueError) as err:
        LoraConfig(backbone_config=tiny_config("bert"), **{field: value})
    message = str(err.value)
    assert f"`{field}" in message and shown in message and allowed in message, message


@pytest.mark.parametrize("name, target, candidates", [("gpt2", "q_proj", ["c_attn", "c_fc", "c_proj"]), ("bert", "q_lin", ["query", "key", "value", "dense"])])
def test_a_target_matching_no_module_lists_the_wrappable_module_names(name, target, candidates):
    with pytest.raises(ValueError) as err:
        LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config(name), target_modules=[target]))
    message = str(err.value)
    assert "`target_modules`" in message and repr(target) in message
    assert all(repr(c) in message for c in candidates), message
