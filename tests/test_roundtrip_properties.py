"""Properties over random shapes, ranks, alphas, rsLoRA, dtypes and target sets (hypothesis).

- merge, then unmerge: the merged model gives the unmerged outputs, and unmerging restores them;
- save, then load (adapters only on a saved base, or everything): the loaded model gives the same outputs.

One stated tolerance per dtype (tiny_backbones' table), on outputs of order one (the backbone's last hidden state,
after LayerNorm): fp32 `ATOL[torch.float32]` = 1e-5 (worst seen over 400 random cases: 1.4e-6). bf16
`ATOL_BF16_MERGED_ANY_SHAPE` = 0.1: merging rounds W + scale * B @ A to bf16's 8-bit mantissa (a relative
2^-8 = 0.4% per weight) and that rounding passes through up to two layers (worst seen: 0.047). Unmerged base
weights come back within `ATOL_UNMERGED_WEIGHTS`: 1e-6 in fp32 (seen: 7.5e-9) and 2e-3 in bf16, one rounding
step (seen: 4.9e-4). A save/load round trip rounds nothing: it is compared bit for bit in both dtypes.
"""

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertModel, GPT2Model

from lora_hf import LoraConfig, LoraModel
from lora_hf.lora_layers import lora_layers
from tiny_backbones import ATOL, ATOL_BF16_MERGED_ANY_SHAPE, ATOL_UNMERGED_WEIGHTS, randomize_adapters, tiny_config

TOLERANCE = {torch.float32: ATOL[torch.float32], torch.bfloat16: ATOL_BF16_MERGED_ANY_SHAPE}
PROPERTY = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "word_embeddings"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc", "wte"]


@st.composite
def setups(draw):
    """A tiny BERT or GPT-2 of random shape and a LoRA configuration that fits it."""
    family = draw(st.sampled_from(["bert", "gpt2"]))
    hidden = draw(st.sampled_from([8, 16, 24, 32]))
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if hidden % h == 0]))
    layers = draw(st.integers(1, 2))
    vocab = draw(st.integers(16, 64))
    if family == "bert":
        inner = draw(st.integers(4, 48))
        backbone = tiny_config("bert", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=inner, max_position_embeddings=32)
        smallest, names = min(hidden, inner), BERT_TARGETS
    else:
        backbone = tiny_config("gpt2", vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=32)
        smallest, names = hidden, GPT2_TARGETS
    targets = draw(st.one_of(st.just("auto"), st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)))
    lora = {
        "r": draw(st.integers(1, min(smallest, 16))),
        "lora_alpha": draw(st.floats(0.5, 64)),
        "use_rslora": draw(st.booleans()),
        "target_modules": targets,
        "init_lora_weights": draw(st.sampled_from(["kaiming", "gaussian"])),
    }
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return backbone, lora, dtype, draw(st.integers(0, 2**16))


def trained_like_std(layer) -> float:
    """The std of A and B that gives the update `scale * B @ A` entries of std 0.02, the size of the weights
    themselves (as after training), whatever r and alpha: a huge alpha / r must not turn the test into one of
    rounding. std(B @ A) = std**2 * sqrt(r)."""
    return (0.02 / (layer.scaling * layer.r**0.5)) ** 0.5


def hidden_states(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state.float()


def close(actual, expected, dtype) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE[dtype])


@settings(PROPERTY, max_examples=60)
@given(setups())
def test_merge_then_unmerge_restores_outputs(setup):
    backbone_config, lora, dtype, seed = setup
    torch.manual_seed(seed)
    model = LoraModel(LoraConfig(backbone_config=backbone_config, **lora)).to(dtype).eval()
    randomize_adapters(model, seed, scale=trained_like_std)
    ids = torch.randint(0, backbone_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    weights = {name: layer.weight.detach().clone() for name, layer in lora_layers(model)}
    unmerged = hidden_states(model, ids)

    model.merge_adapter()
    assert all(layer.merged for _, layer in lora_layers(model))
    assert max((layer.weight.float() - weights[name].float()).abs().max() for name, layer in lora_layers(model)) > 1e-3
    close(hidden_states(model, ids), unmerged, dtype)
    model.unmerge_adapter()
    close(hidden_states(model, ids), unmerged, dtype)
    for name, layer in lora_layers(model):  # the base weights come back (to one rounding step in bf16)
        torch.testing.assert_close(layer.weight, weights[name], rtol=0, atol=ATOL_UNMERGED_WEIGHTS[dtype])


@settings(PROPERTY, max_examples=40)
@given(setups(), st.booleans())
def test_save_then_load_gives_the_same_outputs(setup, save_base):
    backbone_config, lora, dtype, seed = setup
    torch.manual_seed(seed)
    bare = (BertModel if backbone_config.model_type == "bert" else GPT2Model)(backbone_config)
    ids = torch.randint(0, backbone_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        bare.save_pretrained(Path(tmp) / "base")
        model = LoraModel.from_base_model(Path(tmp) / "base", dtype=dtype, **lora).eval()
        randomize_adapters(model, seed, scale=trained_like_std)
        expected = hidden_states(model, ids)
        model.save_pretrained(Path(tmp) / "saved", save_base=save_base)
        loaded = LoraModel.from_pretrained(Path(tmp) / "saved", dtype=dtype)
        assert {p.dtype for p in loaded.parameters()} == {dtype}
        torch.testing.assert_close(hidden_states(loaded, ids), expected, rtol=0, atol=0)  # nothing was rounded
        saved_state, loaded_state = model.state_dict(), loaded.state_dict()
        for key in saved_state:
            torch.testing.assert_close(loaded_state[key], saved_state[key], rtol=0, atol=0)
