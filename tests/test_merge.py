"""Merging: `merge_adapter` / `unmerge_adapter` keep the outputs, and `merge_and_unload` hands back the plain
`transformers` class, which saves and loads with `transformers` alone."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lora_hf import LoraConfig
from lora_hf.lora_layers import lora_layers
from tiny_backbones import ATOL, BACKBONES, DECODERS, inputs, randomize_adapters, run_without_lora_hf, task_classes, tiny_config

TOL = ATOL[torch.float32]


def tiny_task_model(name):
    torch.manual_seed(0)
    model = task_classes(name)[1](LoraConfig(backbone_config=tiny_config(name), r=4, lora_alpha=8)).eval()
    randomize_adapters(model)
    return model


@pytest.mark.parametrize("name", BACKBONES)
def test_merge_then_unmerge_restores_outputs(name):
    model = tiny_task_model(name)
    x = inputs()
    before = model(x).logits
    weights = {n: layer.weight.detach().clone() for n, layer in lora_layers(model)}
    model.merge_adapter()
    assert all(layer.merged and not torch.equal(layer.weight, weights[n]) for n, layer in lora_layers(model))
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=TOL)
    model.unmerge_adapter()
    assert not any(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=TOL)
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.weight, weights[n], rtol=0, atol=TOL, msg=n)


@pytest.mark.parametrize("name", BACKBONES)
def test_merge_and_unload_returns_the_plain_class_that_reloads_with_auto_classes(name, tmp_path):
    model = tiny_task_model(name)
    x = inputs()
    expected = model(x).logits
    plain_class = type(model.backbone)
    plain = model.merge_and_unload()
    assert type(plain) is plain_class and plain_class.__module__.startswith("transformers.models.")
    assert not any("lora" in n for n, _ in plain.named_parameters()) and not any("Lora" in type(m).__name__ for m in plain.modules())
    torch.testing.assert_close(plain(x).logits, expected, rtol=0, atol=TOL)
    plain.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if name in DECODERS else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path).eval()
    assert type(reloaded) is plain_class and reloaded.config.model_type == tiny_config(name).model_type
    assert torch.equal(reloaded(x).logits, plain(x).logits)


def test_merged_bert_classifier_loads_where_lora_hf_is_not_importable(tmp_path):
    model = tiny_task_model("bert")
    x = inputs()
    expected = model(x).logits
    plain = model.merge_and_unload()
    assert type(plain).__name__ == "BertForSequenceClassification"
    plain.save_pretrained(tmp_path / "merged")
    child = run_without_lora_hf(f"""
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "merged")!r}).eval()
        assert type(model).__name__ == "BertForSequenceClassification"
        x = torch.tensor({x.tolist()})
        save_file({{"logits": model(x).logits.contiguous()}}, OUT)
    """, tmp_path)
    torch.testing.assert_close(child["logits"], expected, rtol=0, atol=TOL)


def test_an_untied_lora_embedding_merges_with_the_same_outputs():
    torch.manual_seed(0)
    model = task_classes("llama")[1](LoraConfig(backbone_config=tiny_config("llama"), r=2, target_modules=["embed_tokens", "q_proj"])).eval()
    randomize_adapters(model)
    assert model.backbone.get_output_embeddings().weight is not model.get_input_embeddings().weight
    x = inputs()
    before = model(x).logits
    model.merge_adapter()
    assert model.get_input_embeddings().merged
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=TOL)


def test_merging_a_lora_embedding_tied_to_the_lm_head_is_refused_and_changes_nothing():
    """Merged, the update would reach the tied LM head too: the outputs would change."""
    torch.manual_seed(0)
    model = task_classes("gpt2")[1](LoraConfig(backbone_config=tiny_config("gpt2"), r=2, target_modules=["wte", "c_attn"])).eval()
    randomize_adapters(model)
    x = inputs()
    before = model(x).logits
    with pytest.raises(ValueError, match=r"Cannot merge the LoRA embedding \['transformer.wte'\]: its weight is tied"):
        model.merge_and_unload()
    assert not any(layer.merged for _, layer in lora_layers(model))
    assert torch.equal(model(x).logits, before)
