"""Directories saved by an earlier release still load, to the outputs the saving model gave.

The fixtures in `tests/fixtures/release_0_1_0/` were written once by lora_hf 0.1.0 (see
`make_release_0_1_0.py` there) and are never regenerated: they are the files users already have.
Tolerance: fp32 1e-5 on logits of order one (`tiny_backbones.ATOL`), since a later release may
compute the same sums in another order.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_backbones import ATOL, tiny_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import lora_hf  # noqa: F401  (registers the Auto classes)

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1_0"
CASES = {
    "bert_seqcls_adapters": AutoModelForSequenceClassification,
    "gpt2_causal_adapters": AutoModelForCausalLM,
    "llama_causal_full": AutoModelForCausalLM,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_release_0_1_0_directory_loads_to_the_outputs_it_was_saved_with(case):
    root = FIXTURES / case
    kwargs = {"base_model_name_or_path": str(root / "base")} if (root / "base").is_dir() else {}
    model = CASES[case].from_pretrained(root / "lora", **kwargs)
    expected = load_file(root / "expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    assert type(model).__module__.startswith("lora_hf")
    torch.testing.assert_close(logits, expected["logits"], atol=ATOL[torch.float32], rtol=0)


def test_a_release_0_1_0_adapter_save_still_refuses_another_base(tmp_path):
    config = tiny_config("bert", dropout=False)
    config.num_labels = 3
    torch.manual_seed(1)  # same architecture, other weights: only the saved fingerprint tells them apart
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="fingerprint"):
        AutoModelForSequenceClassification.from_pretrained(
            FIXTURES / "bert_seqcls_adapters" / "lora", base_model_name_or_path=str(tmp_path / "other"))
