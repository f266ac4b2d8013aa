"""LoRA layers: `LoraLinear` beside `nn.Linear` and GPT-2's transposed `Conv1D`, `LoraEmbedding` beside `nn.Embedding`.

Each is checked against the formula written out with plain torch ops: the forward, the hand-written
backward (with and without dropout on the LoRA branch), and merge/unmerge in fp32 and bf16.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_hf import LoraEmbedding, LoraLinear
from tiny_backbones import ATOL, randomize_adapters

IN, OUT = 8, 6


def make_layer(kind, dtype=torch.float32, **kwargs):
    """A LoRA layer of `kind` over a seeded base layer, with A and B both non-zero so the update shows."""
    torch.manual_seed(0)
    if kind == "embedding":
        layer = LoraEmbedding(nn.Embedding(10, OUT, padding_idx=0), r=2, lora_alpha=4, **kwargs)
        x = torch.tensor([[1, 4, 9], [0, 3, 3]])
    else:
        base = Conv1D(OUT, IN) if kind == "conv1d" else nn.Linear(IN, OUT, bias=kind == "linear")
        layer = LoraLinear(base, r=2, lora_alpha=4, **kwargs)
        x = torch.randn(2, 3, IN)
    randomize_adapters(layer, scale=1.0)
    layer.to(dtype)
    return layer, x.to(dtype) if x.is_floating_point() else x


def reference(layer, x, lora_x):
    """`base(x) + scale * lora_x A^T B^T` with plain torch ops; `W` is stored (in, out) by Conv1D."""
    weight = layer.weight.T if layer.fan_in_fan_out else layer.weight
    return F.linear(x, weight, layer.bias) + (lora_x @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_lora_linear_forward_is_the_base_plus_the_scaled_update(kind):
    layer, x = make_layer(kind)
    assert layer.fan_in_fan_out == (kind == "conv1d")
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x, x), rtol=0, atol=ATOL[torch.float32])
    torch.testing.assert_close(layer(x), reference(layer, x, x), rtol=0, atol=ATOL[torch.float32])
    assert layer(x).shape == (2, 3, OUT)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_lora_linear_gradients_equal_autograd_of_the_formula(kind, dropout):
    layer, x = make_layer(kind, lora_dropout=dropout)
    layer.train()
    x.requires_grad_(True)
    tensors = (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B)
    grad_out = torch.randn(2, 3, OUT)
    torch.manual_seed(1)  # the same dropout mask in both passes
    layer(x).backward(grad_out)
    ours = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    torch.manual_seed(1)
    lora_x = F.dropout(x, dropout, training=True) if dropout else x
    reference(layer, x, lora_x).backward(grad_out)
    for name, got, t in zip(("x", "weight", "bias", "lora_A", "lora_B"), ours, tensors):
        assert got.abs().sum() > 0, name
        torch.testing.assert_close(got, t.grad, rtol=0, atol=ATOL[torch.float32], msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_under_bf16_autocast_the_hand_written_backward_matches_autograd(kind, dropout):
    """fp32 layer, bf16 autocast: outputs in bf16, gradients equal autograd's of the formula under the same
    autocast to ATOL[bf16] of their largest magnitude (the two sum in a different order; seen: 6.8e-3),
    and the adapters' gradients come back in fp32 (master weights)."""
    layer, x = make_layer(kind, lora_dropout=dropout)
    layer.train()
    x.requires_grad_(True)
    tensors = (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B)
    grad_out = torch.randn(2, 3, OUT)
    results = []
    for ours in (True, False):
        for t in tensors:
            t.grad = None
        torch.manual_seed(1)  # the same dropout mask in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ours:
                y = layer(x)
            else:
                lora_x = F.dropout(x.to(torch.bfloat16), dropout, training=True) if dropout else x
                y = reference(layer, x, lora_x)
        y.backward(grad_out.to(y.dtype))
        results.append((y.detach(), [t.grad.clone() for t in tensors]))
    (y, grads), (y_ref, grads_ref) = results
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=0, atol=ATOL[torch.bfloat16] * y_ref.abs().max().item())
    for name, got, expected in zip(("x", "weight", "bias", "lora_A", "lora_B"), grads, grads_ref):
        assert got.dtype == torch.float32 and got.abs().sum() > 0, name
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL[torch.bfloat16] * expected.abs().max().item(), msg=name)


def test_lora_embedding_forward_is_the_lookup_plus_the_scaled_update():
    layer, x = make_layer("embedding")
    expected = F.embedding(x, layer.weight, padding_idx=0) + (F.embedding(x, layer.lora_A.T) @ layer.lora_B.T) * layer.scaling
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=ATOL[torch.float32])


def test_a_fresh_layer_equals_its_base():
    torch.manual_seed(0)
    for base, x in ((nn.Linear(IN, OUT), torch.randn(3, IN)), (Conv1D(OUT, IN), torch.randn(3, IN)), (nn.Embedding(10, OUT), torch.tensor([1, 5]))):
        expected = base(x)
        layer = (LoraEmbedding if isinstance(base, nn.Embedding) else LoraLinear)(base, r=2, lora_alpha=4)
        assert torch.equal(layer(x), expected), type(base).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_merge_then_unmerge_restores_outputs_and_weights(kind, dtype):
    layer, x = make_layer(kind, dtype)
    weight = layer.weight.detach().clone()
    before = layer(x)
    atol = ATOL[dtype] * before.abs().max().item()
    layer.merge()
    assert layer.merged and not torch.equal(layer.weight, weight)
    merged_weight = layer.weight.detach().clone()
    layer.merge()  # idempotent: a second merge adds nothing
    assert torch.equal(layer.weight, merged_weight)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=atol)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged and layer.weight.dtype == dtype and layer.lora_A.dtype == dtype
    # Merging rounds W + delta to the weight dtype once: unmerge is exact up to that rounding.
    torch.testing.assert_close(layer.weight, weight, rtol=0, atol=ATOL[dtype] * merged_weight.abs().max().item())
    torch.testing.assert_close(layer(x), before, rtol=0, atol=atol)


def test_merge_adds_the_update_computed_in_fp32():
    """bf16 would round a small update away if B @ A were formed in bf16; merge forms it in fp32."""
    layer, _ = make_layer("linear", torch.bfloat16)
    delta = (layer.lora_B.float() @ layer.lora_A.float()) * layer.scaling
    expected = (layer.weight.float() + delta).to(torch.bfloat16)
    layer.merge()
    assert torch.equal(layer.weight, expected)


def test_safe_merge_refuses_non_finite_weights_and_leaves_the_layer_unmerged():
    layer, _ = make_layer("linear")
    weight = layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.merge(safe_merge=True)
    assert not layer.merged and torch.equal(layer.weight, weight)


@pytest.mark.parametrize("kind", ["linear", "linear_without_bias", "conv1d", "embedding"])
def test_unload_puts_back_the_original_class_holding_the_same_parameters(kind):
    layer, x = make_layer(kind)
    layer.merge()
    expected = layer(x)
    plain = layer.unload()
    assert type(plain) is {"linear": nn.Linear, "linear_without_bias": nn.Linear, "conv1d": Conv1D, "embedding": nn.Embedding}[kind]
    assert plain.weight is layer.weight and not any("lora" in n for n, _ in plain.named_parameters())
    assert [n for n, _ in plain.named_parameters()] == (["weight"] if kind in ("embedding", "linear_without_bias") else ["weight", "bias"])
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=ATOL[torch.float32])
