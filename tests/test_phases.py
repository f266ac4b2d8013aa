"""What trains: phases and their parameter groups, parameter counts (PEFT's numbers), tied weights,
and gradient checkpointing with a frozen backbone."""

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from lora_hf import LoraConfig, LoraForCausalLM, LoraForMaskedLM, LoraForSequenceClassification, LoraModel
from lora_hf.lora_layers import lora_layers
from tiny_backbones import ATOL, BACKBONES, DECODERS, inputs, embeddings_in_pretrain, randomize_adapters, tiny_config


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_phases_train_exactly_their_groups():
    model = LoraForMaskedLM(LoraConfig(backbone_config=tiny_config("bert"), r=2, phase_trainable=embeddings_in_pretrain()))
    lora = {n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    assert len(lora) == 16
    assert trainable_names(model) == lora | {n for n, _ in model.named_parameters() if n.startswith("backbone.cls.")}  # finetune at start
    model.set_phase("pretrain")
    embeddings = {f"backbone.bert.embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")}
    assert trainable_names(model) == lora | embeddings
    model.set_phase("finetune")
    assert trainable_names(model) == lora | {"backbone.cls.predictions.bias", "backbone.cls.predictions.transform.dense.weight",
                                             "backbone.cls.predictions.transform.dense.bias", "backbone.cls.predictions.transform.LayerNorm.weight",
                                             "backbone.cls.predictions.transform.LayerNorm.bias"}
    assert model.active_phase == "finetune" and model.config.trained_groups == ["lora", "embeddings", "head"]


def test_custom_phase_groups_and_regexes_select_their_parameters():
    phases = {"pretrain": ["norm", "bias"], "finetune": ["lora", "re:layer\\.1\\.output\\.dense\\.weight$"]}
    model = LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("bert"), r=2, phase_trainable=phases))
    model.set_phase("pretrain")
    assert trainable_names(model) and all("LayerNorm" in n or n.endswith(".bias") for n in trainable_names(model))
    assert any(n.endswith("LayerNorm.weight") for n in trainable_names(model))
    model.set_phase("finetune")
    assert {n for n in trainable_names(model) if "lora_" not in n} == {"backbone.bert.encoder.layer.1.output.dense.weight"}


@pytest.mark.parametrize("name", BACKBONES)
def test_the_attention_group_is_the_weights_and_biases_of_the_attention_projections(name):
    """The same projections `target_modules="auto"` wraps, whatever the block is called (GPT-2 `attn`, Llama `self_attn`)."""
    model = LoraModel(LoraConfig(backbone_config=tiny_config(name), r=2, phase_trainable={"finetune": ["attention"]}))
    expected = {f"backbone.{module}.{p}" for module in model.lora_module_names for p in ("weight", "bias")}
    assert trainable_names(model) == expected & {n for n, _ in model.named_parameters()}
    assert len(trainable_names(model)) >= len(model.lora_module_names)


def test_parameter_groups_split_the_parameters_by_requires_grad():
    model = LoraForCausalLM(LoraConfig(backbone_config=tiny_config("gpt2"), r=2))
    model.set_phase("pretrain")
    groups = model.parameter_groups()
    assert set(groups) == {"trainable", "fixed"}
    assert set(groups["trainable"]) == trainable_names(model)
    assert set(groups["fixed"]) == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not set(groups["trainable"]) & set(groups["fixed"])
    assert "backbone.lm_head.weight" not in groups["trainable"] + groups["fixed"]  # tied to wte: listed once


@pytest.mark.parametrize("name", BACKBONES)
def test_trainable_and_total_counts_equal_peft_s(name):
    import peft

    torch.manual_seed(0)
    ours = LoraModel(LoraConfig(backbone_config=tiny_config(name), r=4))
    ours.set_phase("finetune")  # a bare model has no head: LoRA only
    targets = "|".join(n.replace(".", "\\.") for n in ours.lora_module_names)
    theirs = peft.get_peft_model(AutoModel.from_config(tiny_config(name)), peft.LoraConfig(r=4, target_modules=f"^({targets})$", fan_in_fan_out=name == "gpt2"))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    lora_numel = sum(p.numel() for n, p in ours.named_parameters() if "lora_" in n)
    assert ours.get_nb_trainable_parameters()[0] == lora_numel > 0


def test_print_trainable_parameters_prints_peft_s_line(capsys):
    import peft

    torch.manual_seed(0)
    LoraModel(LoraConfig(backbone_config=tiny_config("bert"), r=4, target_modules=["query", "value"])).print_trainable_parameters()
    ours = capsys.readouterr().out
    peft.get_peft_model(AutoModel.from_config(tiny_config("bert")), peft.LoraConfig(r=4, target_modules=["query", "value"])).print_trainable_parameters()
    assert ours == capsys.readouterr().out and ours.startswith("trainable params: 1,024 || all params: ")


@pytest.mark.parametrize(
    "name, lm_head",
    [("gpt2", "lm_head"), ("bert", "cls.predictions.decoder"), ("roberta", "lm_head.decoder"), ("distilbert", "vocab_projector")],
)
def test_tied_weights_stay_tied_when_embeddings_train_and_are_counted_and_saved_once(name, lm_head, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    lm_class, auto = (LoraForCausalLM, AutoModelForCausalLM) if name in DECODERS else (LoraForMaskedLM, AutoModelForMaskedLM)
    model = lm_class(LoraConfig(backbone_config=tiny_config(name), r=2, phase_trainable=embeddings_in_pretrain()))
    model.set_phase("pretrain")
    embeddings = model.get_input_embeddings().weight
    assert model.backbone.get_submodule(lm_head).weight is embeddings and embeddings.requires_grad
    embedding_numel = sum(m.weight.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Embedding))
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    unique_numel = sum({id(p): p.numel() for p in model.parameters()}.values())
    assert model.get_nb_trainable_parameters() == (lora_numel + embedding_numel, unique_numel)

    x = inputs()
    before = embeddings.detach().clone()
    model(x, labels=x).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert not torch.equal(embeddings, before)
    assert model.backbone.get_submodule(lm_head).weight is model.get_input_embeddings().weight

    model.save_pretrained(tmp_path, save_base=True)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        shaped_like_embeddings = [k for k in f.keys() if tuple(f.get_slice(k).get_shape()) == tuple(embeddings.shape)]
    assert len(shaped_like_embeddings) == 1 and not shaped_like_embeddings[0].endswith(f"{lm_head}.weight")
    reloaded = auto.from_pretrained(tmp_path)
    assert reloaded.backbone.get_submodule(lm_head).weight is reloaded.get_input_embeddings().weight
    assert torch.equal(reloaded(x).logits, model.eval()(x).logits)


def checkpointed_gradients(name, enable=None):
    """Adapter gradients of one pass on a frozen backbone, and how often the first LoRA layer ran forward."""
    torch.manual_seed(0)
    config = LoraConfig(backbone_config=tiny_config(name, dropout=False), r=2, phase_trainable={"finetune": ["lora"]})
    model = LoraForSequenceClassification(config)
    randomize_adapters(model)
    model.train()
    calls = []
    next(layer for _, layer in lora_layers(model)).register_forward_hook(lambda *_: calls.append(1))
    if enable is not None:
        enable(model)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    model(inputs(), labels=torch.tensor([0, 1])).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, len(calls)


def assert_same_nonzero_gradients(got, expected):
    assert got.keys() == expected.keys() and expected
    for key, grad in expected.items():
        assert got[key] is not None and got[key].abs().sum() > 0, key
        torch.testing.assert_close(got[key], grad, rtol=0, atol=ATOL[torch.float32], msg=key)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_gradient_checkpointing_gives_a_frozen_backbone_s_adapters_the_same_gradients(name, use_reentrant):
    expected, calls = checkpointed_gradients(name)
    assert calls == 1 and all("lora_" in n for n in expected)
    kwargs = {"use_reentrant": use_reentrant}
    got, calls = checkpointed_gradients(name, lambda m: m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs))
    assert calls == 2  # checkpointing recomputed the layer in the backward pass
    assert_same_nonzero_gradients(got, expected)


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}])
def test_activation_checkpointing_enable_the_v5_name_does_the_same(kwargs):
    expected, _ = checkpointed_gradients("bert")
    got, calls = checkpointed_gradients("bert", lambda m: m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs))
    assert calls == 2
    assert_same_nonzero_gradients(got, expected)
