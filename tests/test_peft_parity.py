"""Same numbers as PEFT: the same tiny backbone injected by lora_hf and by peft, with the same A and B,
gives the same logits and the same gradients on A and B (fp32, `ATOL`), with and without rsLoRA."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lora_hf import LoraConfig, LoraForSequenceClassification
from lora_hf.lora_layers import lora_layers
from tiny_backbones import ATOL, AUTO_TARGETS, BACKBONES, inputs, randomize_adapters, tiny_config

TOL = ATOL[torch.float32]


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_logits_and_adapter_gradients_equal_peft_s(name, use_rslora):
    import peft

    config = tiny_config(name)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config).eval()
    twin = AutoModelForSequenceClassification.from_config(config).eval()
    twin.load_state_dict(base.state_dict())
    targets = AUTO_TARGETS[name]
    ours = LoraForSequenceClassification(
        LoraConfig(backbone_config=config, r=4, lora_alpha=8, use_rslora=use_rslora, target_modules=targets), backbone=base
    ).eval()
    theirs = peft.get_peft_model(twin, peft.LoraConfig(r=4, lora_alpha=8, use_rslora=use_rslora, target_modules=targets, lora_dropout=0.0,
                                                       fan_in_fan_out=name == "gpt2")).eval()  # GPT-2's Conv1D stores W as (in, out)
    x, labels = inputs(), torch.tensor([0, 1])
    base_logits = ours(x).logits.detach()
    randomize_adapters(ours)
    peft_root = theirs.base_model.model
    pairs = [(layer, peft_root.get_submodule(module_name)) for module_name, layer in lora_layers(ours.backbone)]
    assert len(pairs) == 2 * len(targets)
    with torch.no_grad():
        for layer, target in pairs:
            assert target.lora_A["default"].weight.shape == layer.lora_A.shape and target.lora_B["default"].weight.shape == layer.lora_B.shape
            assert target.scaling["default"] == layer.scaling
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
    out_ours, out_theirs = ours(x, labels=labels), theirs(input_ids=x, labels=labels)
    assert not torch.allclose(out_ours.logits, base_logits)  # the adapters show
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=TOL)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for layer, target in pairs:
        assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0
        torch.testing.assert_close(layer.lora_A.grad, target.lora_A["default"].weight.grad, rtol=0, atol=TOL)
        torch.testing.assert_close(layer.lora_B.grad, target.lora_B["default"].weight.grad, rtol=0, atol=TOL)
