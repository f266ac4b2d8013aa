"""The model classes: every head on every backbone it exists for, Auto registration, which modules
`target_modules="auto"` picks, and `from_base_model`'s step-0 equality (generation: test_generation.py)."""

import pytest
import torch
from transformers import AutoConfig, OPTConfig
from transformers.modeling_outputs import ModelOutput

import lora_hf
from lora_hf import (
    LoraConfig,
    LoraForCausalLM,
    LoraForMaskedLM,
    LoraForQuestionAnswering,
    LoraForSequenceClassification,
    LoraForTokenClassification,
    LoraModel,
)
from lora_hf.lora_layers import LoraLinear, lora_layers
from tiny_backbones import ATTENTION_LAYER_CLASS, AUTO_TARGETS, BACKBONES, DECODERS, VOCAB, inputs, randomize_adapters, task_classes, tiny_config

X = inputs()
LABELS = {
    LoraModel: {},
    LoraForSequenceClassification: {"labels": torch.tensor([0, 1])},
    LoraForTokenClassification: {"labels": torch.randint(0, 2, X.shape, generator=torch.Generator().manual_seed(1))},
    LoraForQuestionAnswering: {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])},
    LoraForMaskedLM: {"labels": X},
    LoraForCausalLM: {"labels": X},
}


def heads_of(name):
    heads = [LoraModel, LoraForSequenceClassification, LoraForTokenClassification, LoraForQuestionAnswering]
    return heads + ([LoraForCausalLM] if name in DECODERS else [LoraForMaskedLM])


@pytest.mark.parametrize("name", BACKBONES)
def test_every_head_returns_the_plain_backbone_output_and_loss_and_trains_its_adapters(name):
    for head in heads_of(name):
        torch.manual_seed(0)
        model = head(LoraConfig(backbone_config=tiny_config(name), r=2)).eval()
        plain = head.backbone_auto_class.from_config(tiny_config(name)).eval()
        plain.load_state_dict({k: v for k, v in model.backbone.state_dict().items() if "lora_" not in k})
        ours, theirs = model(input_ids=X, **LABELS[head]), plain(input_ids=X, **LABELS[head])
        assert type(ours) is type(theirs) and isinstance(ours, ModelOutput), head.__name__
        assert ours.keys() == theirs.keys(), head.__name__
        for key in ours.keys():
            if isinstance(ours[key], torch.Tensor):
                assert torch.equal(ours[key], theirs[key]), (head.__name__, key)  # B = 0: the base's numbers exactly
        if LABELS[head]:
            assert ours.loss.ndim == 0 and torch.isfinite(ours.loss)
            ours.loss.backward()
        else:
            ours.last_hidden_state.pow(2).sum().backward()  # a plain sum after LayerNorm is constant
        assert all(layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0 for _, layer in lora_layers(model)), head.__name__


def test_import_registers_the_config_and_every_auto_class():
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    assert type(AutoConfig.for_model("lora", backbone_config=tiny_config("bert").to_dict())) is LoraConfig
    config = LoraConfig(backbone_config=tiny_config("gpt2"), r=2)
    pairs = [(AutoModel, LoraModel), (AutoModelForCausalLM, LoraForCausalLM), (AutoModelForSequenceClassification, LoraForSequenceClassification),
             (AutoModelForTokenClassification, LoraForTokenClassification), (AutoModelForQuestionAnswering, LoraForQuestionAnswering)]
    for auto, ours in pairs:
        assert type(auto.from_config(config)) is ours, auto.__name__
    assert type(AutoModelForMaskedLM.from_config(LoraConfig(backbone_config=tiny_config("bert"), r=2))) is LoraForMaskedLM
    assert set(lora_hf.__all__) >= {"LoraConfig", "LoraModel", "LoraForCausalLM", "LoraForMaskedLM", "LoraForSequenceClassification",
                                    "LoraForTokenClassification", "LoraForQuestionAnswering", "LoraLinear", "LoraEmbedding"}


@pytest.mark.parametrize("name", BACKBONES)
def test_auto_targets_pick_every_attention_projection(name):
    model = LoraModel(LoraConfig(backbone_config=tiny_config(name), r=2))
    per_layer = {}
    for module_name in model.lora_module_names:
        layer_index = next(part for part in module_name.split(".") if part.isdigit())
        per_layer.setdefault(layer_index, []).append(module_name.split(f".{layer_index}.", 1)[1])
    assert per_layer == {"0": AUTO_TARGETS[name], "1": AUTO_TARGETS[name]}
    assert all(isinstance(layer, LoraLinear) for _, layer in lora_layers(model))
    assert {layer._base_class.__name__ for _, layer in lora_layers(model)} == {ATTENTION_LAYER_CLASS[name]}


def test_gpt2_and_gpt_neox_wrap_the_fused_qkv_projection_whole():
    gpt2 = LoraModel(LoraConfig(backbone_config=tiny_config("gpt2"), r=2))
    c_attn = gpt2.backbone.get_submodule("h.0.attn.c_attn")
    assert c_attn.fan_in_fan_out and (c_attn.in_features, c_attn.out_features) == (32, 96)
    assert c_attn.lora_A.shape == (2, 32) and c_attn.lora_B.shape == (96, 2)
    neox = LoraModel(LoraConfig(backbone_config=tiny_config("gpt_neox"), r=2))
    qkv = neox.backbone.get_submodule("layers.0.attention.query_key_value")
    assert not qkv.fan_in_fan_out and qkv.lora_B.shape == (96, 2)


def test_explicit_targets_work_on_an_architecture_without_an_auto_table():
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=37, num_attention_heads=4,
                       max_position_embeddings=40, word_embed_proj_dim=32, dropout=0.0)
    torch.manual_seed(0)
    model = LoraForCausalLM(LoraConfig(backbone_config=config, r=2, target_modules=["fc1", "re:.*self_attn\\.v_proj"])).eval()
    assert model.lora_module_names == [f"model.decoder.layers.{i}.{m}" for i in (0, 1) for m in ("fc1", "self_attn.v_proj")]
    before = model(X).logits
    randomize_adapters(model)
    assert not torch.allclose(model(X).logits, before)
    model(X, labels=X).loss.backward()
    assert all(layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0 for _, layer in lora_layers(model))


@pytest.mark.parametrize("name", BACKBONES)
def test_from_base_model_loads_the_base_weights_and_equals_the_base_at_step_zero(tiny_bases, name):
    auto, lora_class = task_classes(name)
    base = auto.from_pretrained(tiny_bases[name]).eval()
    model = lora_class.from_base_model(tiny_bases[name], r=4, lora_alpha=32, use_rslora=True).eval()
    assert model.config.base_model_name_or_path == tiny_bases[name]
    assert (model.config.r, model.config.lora_alpha, model.config.use_rslora) == (4, 32, True)
    assert {layer.lora_A.shape[0] for _, layer in lora_layers(model)} == {4}
    assert {layer.scaling for _, layer in lora_layers(model)} == {32 / 2}
    assert torch.equal(model(X).logits, base(X).logits)
    bare = LoraModel.from_base_model(tiny_bases[name], r=2).eval()
    assert torch.equal(bare(X).last_hidden_state, base.base_model(X).last_hidden_state)


def test_a_base_without_the_head_gets_one_plain_line_instead_of_transformers_load_report(tmp_path, capfd, caplog):
    """A sentence encoder saved without its MLM head (MiniLM is one) is no corrupted checkpoint: lora_hf
    creates the head, and says so in one line naming it, not in transformers' table of MISSING keys."""
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(tmp_path / "encoder")
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level("WARNING"):
        model = LoraForMaskedLM.from_base_model(str(tmp_path / "encoder"))
    err = capfd.readouterr().err + caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("lora_hf")]
    assert len(ours) == 1, ours
    assert "has no weights for cls.predictions:" in ours[0] and "LoraForMaskedLM starts them fresh" in ours[0]
    assert "LOAD REPORT" not in err and "corrupted" not in err and "MISSING" not in err
    assert model.newly_initialized_keys and all(k.startswith("backbone.cls.predictions.") for k in model.newly_initialized_keys)
