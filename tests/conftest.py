"""Set before any test imports huggingface_hub: no test may reach the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """`{backbone: directory}` of the six tiny backbones saved with their task heads, for `from_base_model`."""
    from tiny_backbones import save_tiny_bases

    return save_tiny_bases(tmp_path_factory.mktemp("tiny_bases"))


# Tiny saved bases and a finished run, shared by test_hub.py, test_cards.py and test_peft_interop.py.
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from hub_fixtures import save_bases

    return save_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bases):
    from hub_fixtures import save_run

    return save_run(tmp_path_factory.mktemp("run") / "out", bases["bert"])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT with its masked-LM head and MiniLM's tokenizer, for `lora-hf train` runs (train_fixtures.save_tiny_bert)."""
    from train_fixtures import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
