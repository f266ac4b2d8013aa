"""The real `lora-hf train` command, used as a newcomer would: reruns, HF example-script flags, early failures.

Each case starts the command in a fresh interpreter (about 5 s), on a tiny BERT with the MiniLM vocabulary.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_fixtures import save_tiny_bert, sentences, write_csv

REPO = Path(__file__).resolve().parents[1]
FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--logging_steps", "1", "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--eval_strategy", "no",
        "--save_strategy", "no"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    bert = save_tiny_bert(root / "bert")
    data = {
        "train": write_csv(root / "train.csv", sentences(32, seed=1)),
        "validation": write_csv(root / "dev.csv", sentences(16, seed=2)),
        "test": write_csv(root / "test.csv", sentences(16, seed=3)),
    }
    return {"root": root, "bert": bert, "data": data}


def train(*argv, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`lora-hf train ...` in a new interpreter that imports this checkout."""
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "lora_hf.cli", "train", *map(str, argv)]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def base_flags(setup, *splits) -> list:
    flags = ["--model_name_or_path", setup["bert"]]
    for split in splits or ("train", "validation", "test"):
        flags += [f"--{split}_file", setup["data"][split]]
    return flags + FAST


# ----- item 1: reruns never reuse or publish another run's results ---------------------------------
def test_overwrite_trains_again_and_resume_refuses_changed_arguments(setup):
    out = setup["root"] / "rerun"
    first = train(*base_flags(setup), "--output_dir", out, "--skip_pretrain", "--max_steps", "2", "--r", "8")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["r"] == 8

    second = train(*base_flags(setup), "--output_dir", out, "--overwrite_output_dir", "--skip_pretrain", "--max_steps", "3", "--r", "4")
    assert second.returncode == 0, second.stderr[-2000:]
    # Trained again from scratch: the new step count, and every published file belongs to r=4.
    assert json.loads((out / "finetune" / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((out / "config.json").read_text())["r"] == 4
    assert json.loads((out / "finetune" / "run_arguments.json").read_text())["arguments"]["r"] == 4
    card = (out / "README.md").read_text()
    assert "| LoRA rank `r` | 4 |" in card and "| LoRA r | 4 |" in card
    assert "| LoRA rank `r` | 8 |" not in card and "| LoRA r | 8 |" not in card

    before = (out / "model.safetensors").read_bytes()
    resumed = train(*base_flags(setup), "--output_dir", out, "--resume_from_checkpoint", "true", "--skip_pretrain", "--max_steps", "3",
                    "--r", "2")
    assert resumed.returncode == 2
    assert "`r` 4 -> 2" in last_line(resumed) and "--overwrite_output_dir" in last_line(resumed), last_line(resumed)
    assert "Traceback" not in resumed.stderr
    assert (out / "model.safetensors").read_bytes() == before and json.loads((out / "config.json").read_text())["r"] == 4


# ----- item 5: sentence pairs with a pretrain phase ------------------------------------------------
def test_sentence_pairs_train_both_phases(setup):
    rows = [(a, b, label) for (a, label), (b, _) in zip(sentences(24, seed=4), sentences(24, seed=5))]
    pairs = write_csv(setup["root"] / "pairs.csv", rows, header=("premise", "hypothesis", "label"))
    out = setup["root"] / "pairs"
    done = train("--model_name_or_path", setup["bert"], "--train_file", pairs, "--validation_file", pairs, "--text_column", "premise",
                 "--text_pair_column", "hypothesis", "--output_dir", out, "--pretrain_max_steps", "1", "--max_steps", "1", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "pretrain" / "trainer_state.json").read_text())["global_step"] == 1
    assert json.loads((out / "finetune" / "trainer_state.json").read_text())["global_step"] == 1
