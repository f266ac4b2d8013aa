"""`LoraForCausalLM.generate` against the plain backbone's `generate` with the same weights: identical token ids.

Two comparisons per decoder: fresh adapters (B = 0) against the base model itself, where the arithmetic is
the same, and trained-looking adapters against the merged plain model (`merge_and_unload`), whose weights
are W + scale * B @ A. Greedy, sampling, beam search, assisted decoding, dict outputs and the KV cache,
and the generation config round trip through save/load.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from lora_hf import LoraForCausalLM
from tiny_backbones import ATOL, DECODERS, inputs, randomize_adapters

PROMPT = inputs(batch=2, length=5, seed=3)
MASK = torch.ones_like(PROMPT)
SETTINGS = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 10, "temperature": 0.9},
    "beam search": {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
}


def generate(model, seed=0, batch=2, **kwargs):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(PROMPT[:batch], attention_mask=MASK[:batch], max_new_tokens=8, pad_token_id=0, **kwargs)


def pair(tiny_bases, name, trained: bool):
    """`(lora model, plain transformers model with the same weights)`."""
    torch.manual_seed(0)
    lora = LoraForCausalLM.from_base_model(tiny_bases[name], r=4).eval()
    if not trained:
        return lora, AutoModelForCausalLM.from_pretrained(tiny_bases[name]).eval()
    randomize_adapters(lora, seed=1)
    return lora, copy.deepcopy(lora).merge_and_unload().eval()


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", DECODERS)
def test_generate_matches_the_plain_model(tiny_bases, name, setting, trained):
    lora, plain = pair(tiny_bases, name, trained)
    assert torch.equal(generate(lora, **SETTINGS[setting]), generate(plain, **SETTINGS[setting]))


@pytest.mark.parametrize("name", DECODERS)
def test_dict_outputs_scores_and_kv_cache(tiny_bases, name):
    lora, plain = pair(tiny_bases, name, trained=True)
    kwargs = {"return_dict_in_generate": True, "output_scores": True, "output_logits": True}
    ours, theirs = generate(lora, **kwargs), generate(plain, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL[torch.float32])
    assert ours.past_key_values is not None and ours.past_key_values.get_seq_length() == ours.sequences.shape[1] - 1


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generate_with_the_kv_cache_equals_generate_without(tiny_bases, name):
    lora, _ = pair(tiny_bases, name, trained=True)
    cached = generate(lora, do_sample=False, use_cache=True)
    assert cached.shape == (2, PROMPT.shape[1] + 8) and torch.equal(cached[:, :PROMPT.shape[1]], PROMPT)
    # Without the cache every step recomputes the whole prefix: the same tokens.
    assert torch.equal(generate(lora, do_sample=False, use_cache=False), cached)
    # The adapters take part: the same base with B = 0 generates something else.
    fresh, _ = pair(tiny_bases, name, trained=False)
    assert not torch.equal(generate(fresh, do_sample=False), cached)


@pytest.mark.parametrize("name", DECODERS)
def test_assisted_decoding(tiny_bases, name):
    lora, plain = pair(tiny_bases, name, trained=True)
    torch.manual_seed(5)
    assistant = LoraForCausalLM.from_base_model(tiny_bases[name], r=2).eval()
    randomize_adapters(assistant, seed=7)
    # Greedy assisted decoding (one sequence at a time) returns what the main model alone returns.
    assisted = generate(lora, batch=1, assistant_model=assistant)
    assert torch.equal(assisted, generate(lora, batch=1))
    assert torch.equal(assisted, generate(plain, batch=1, assistant_model=copy.deepcopy(assistant).merge_and_unload().eval()))


@pytest.mark.parametrize("save_base", [False, True], ids=["adapter", "full"])
def test_generation_config_round_trip(tiny_bases, tmp_path, save_base):
    lora, _ = pair(tiny_bases, "gpt2", trained=True)
    lora.generation_config = GenerationConfig(max_new_tokens=6, do_sample=False, num_beams=2, pad_token_id=0, eos_token_id=2)
    lora.save_pretrained(tmp_path, save_base=save_base)
    loaded = LoraForCausalLM.from_pretrained(tmp_path)
    assert loaded.generation_config.to_diff_dict() == lora.generation_config.to_diff_dict()
    with torch.no_grad():
        ours = loaded.generate(PROMPT, attention_mask=MASK)
        expected = lora.generate(PROMPT, attention_mask=MASK)
    assert ours.shape[1] == PROMPT.shape[1] + 6 or (ours == 2).any()
    assert torch.equal(ours, expected)
