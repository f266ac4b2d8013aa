"""Tiny real-format models, tokenizers and data files for the training tests (no downloads)."""

import csv
import importlib.util
import json
import random
from pathlib import Path

from tiny_backbones import tiny_config

REPO = Path(__file__).resolve().parents[1]
# Small, fast `lora-hf train` runs: short sequences, small batches, a log line per step, no pinning or bars.
FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--logging_steps", "1", "--dataloader_pin_memory", "false", "--disable_tqdm", "true"]

POSITIVE = "good great fine lovely superb happy brilliant".split()
NEGATIVE = "bad awful poor dull terrible sad boring".split()
FILLER = "the movie film plot was is a very quite and story acting".split()


def sentences(n: int, seed: int = 0) -> list:
    """`(text, label)` rows whose label a bag of words can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=5) + rng.choices(POSITIVE if label else NEGATIVE, k=2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list, header=("text", "label")) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def word_tokenizer(extra: tuple = ()):
    """A whitespace word-level fast tokenizer over the words the fixtures use."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[EOS]"] + sorted(set(POSITIVE + NEGATIVE + FILLER) | set(extra))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def save_tiny_bert(path: Path) -> str:
    """Tiny BERT with a masked-LM head and the MiniLM WordPiece tokenizer (a real vocabulary)."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from lora_hf.training import default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config("bert", vocab_size=tokenizer.vocab_size, max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_gpt2(path: Path) -> str:
    """Tiny GPT-2 with its LM head and the fixtures' word-level tokenizer."""
    import torch
    from transformers import GPT2LMHeadModel

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = tiny_config("gpt2", vocab_size=len(tokenizer), n_positions=64, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def load_script(name: str):
    """`scripts/<name>.py` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
