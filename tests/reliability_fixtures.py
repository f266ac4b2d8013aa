"""Saved tiny bases and planted files shared by the reliability tests (bad input, faults, untrusted files, config fuzzing)."""

import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from tiny_backbones import tiny_config

REPO = Path(__file__).resolve().parents[1]
MARKER_NAME = "PWNED"


def save_base(path: Path, seed: int = 0, **overrides) -> str:
    """A tiny BERT masked-LM base model saved with `save_pretrained` (no tokenizer); `overrides` change its config."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    BertForMaskedLM(tiny_config("bert", **overrides)).save_pretrained(path)
    return str(path)


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
