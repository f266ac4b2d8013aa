"""Tiny models and helpers shared by the reliability tests (bad input, faults, untrusted files, properties)."""

import json
import os
import pickle
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MARKER_NAME = "PWNED"


def tiny_bert_config(**overrides):
    """The transformers "tester" size: vocab 99, hidden 32, 2 layers."""
    from transformers import BertConfig

    values = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64)
    return BertConfig(**{**values, **overrides})


def save_base(path: Path, seed: int = 0, **overrides) -> str:
    """A tiny BERT masked-LM base model saved with `save_pretrained` (no tokenizer)."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    BertForMaskedLM(tiny_bert_config(**overrides)).save_pretrained(path)
    return str(path)


def randomize_adapters(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give every adapter a non-zero update (B starts at zero, which would make merge tests trivial)."""
    from lora_hf.lora_layers import lora_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for param in (layer.lora_A, layer.lora_B):
                param.copy_((torch.randn(param.shape, generator=gen) * scale).to(param.dtype))


def copy_dir(src, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(directory: Path, **changes) -> Path:
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return Path(directory)


_DELETE = object()


class _RunsShell:
    """Unpickling this runs a shell command: the classic malicious `pytorch_model.bin`."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    """A pickle whose unpickling creates `marker`; `torch.load(weights_only=False)` would run it."""
    path.write_bytes(pickle.dumps({"state_dict": _RunsShell(f"touch {marker}")}))
    return path
