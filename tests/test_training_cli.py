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
    _check_the_log_says_what_happened(done.stdout, out)


def _check_the_log_says_what_happened(stdout: str, out: Path) -> None:
    """A header per phase (objective, data, groups, parameter count); the final table ends with where the model is
    and one-line ways to use it, and the printed load and pipeline lines run as printed."""
    pretrain, finetune = stdout.index("==== pretrain phase: masked LM on"), stdout.index("==== finetune phase: classification on")
    assert pretrain < finetune
    assert "trains: lora; the rest is frozen\ntrainable params: " in stdout[pretrain:finetune]  # the base has its MLM head
    assert "pairs.csv: 24 train, 24 validation" in stdout[finetune:] and "trains: lora, head; the rest is frozen" in stdout[finetune:]
    tail = stdout.rstrip().splitlines()[-6:]
    assert tail[0] == f"saved to: {out}" and tail[-1].startswith("=====")
    by_name = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in tail[1:-1]}
    assert by_name["card"] == f"lora-hf card {out}" and by_name["push"] == f"lora-hf push {out} <user>/<repo>"
    scope: dict = {}
    exec(by_name["load"], scope)  # noqa: S102 (the line the user is told to run)
    exec(by_name["pipeline"], scope)  # noqa: S102
    assert type(scope["model"]).__name__ == "LoraForSequenceClassification"
    assert scope["pipe"]("a tiny test sentence")[0]["label"] in scope["model"].config.id2label.values()


# ----- items 3 and 4: refused before any work, in one line, exit code 2 ----------------------------
def _blank_label(root: Path) -> list:
    rows = [(text, "pos" if label else "neg") for text, label in sentences(10)]
    rows[7] = (rows[7][0], "")
    return ["--train_file", write_csv(root / "blank.csv", rows, header=("text", "sentiment")), "--label_column", "sentiment"]


def _empty_file(root: Path) -> list:
    (root / "empty.csv").write_bytes(b"")
    return ["--train_file", str(root / "empty.csv")]


UNREACHABLE = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9: refused at once
REFUSED = [
    ("report-to-tensorboard", lambda s, r: ["--report_to", "tensorboard"], {}, ("`--report_to tensorboard` cannot be used", "tensorboard to be installed")),
    ("report-to-wandb", lambda s, r: ["--report_to", "wandb"], {}, ("`--report_to wandb` cannot be used", "pip install wandb")),
    ("report-to-unknown", lambda s, r: ["--report_to", "tensorbord"], {}, ("`--report_to` 'tensorbord' is not an integration", "'tensorboard'")),
    ("push-offline", lambda s, r: ["--push_to_hub", "--hub_model_id", "me/x"], {}, ("`--push_to_hub` needs the Hub, but HF_HUB_OFFLINE=1", "lora-hf push")),
    ("push-unreachable", lambda s, r: ["--push_to_hub", "--hub_model_id", "me/x"], UNREACHABLE, ("`--push_to_hub`: the Hub (http://127.0.0.1:9) cannot be reached",)),
    ("hub-base-offline", lambda s, r: ["--model_name_or_path", "someone/not-cached"], {},
     ("'someone/not-cached' is not a local directory nor in the Hugging Face cache", "HF_HUB_OFFLINE=1")),
    ("hub-base-unreachable", lambda s, r: ["--model_name_or_path", "someone/not-cached"], UNREACHABLE,
     ("'someone/not-cached' is not a local directory and the Hub (http://127.0.0.1:9) cannot be reached",)),
    ("blank-label-cell", lambda s, r: _blank_label(r), {}, ("Split 'train' row 7: label column 'sentiment' is empty",)),
    ("zero-byte-csv", lambda s, r: _empty_file(r), {}, ("`--train_file`", "empty.csv' is empty (0 bytes)")),
    ("resume-from-elsewhere", lambda s, r: ["--resume_from_checkpoint", str(r / "other" / "checkpoint-4")], {},
     ("`--resume_from_checkpoint`", "is not a checkpoint of this run's phases")),
    ("do-train-false", lambda s, r: ["--do_train", "false"], {}, ("`--do_train false` is not supported: lora-hf train always trains",)),
    ("do-predict-without-test", lambda s, r: ["--do_predict"], {}, ("`--do_predict` writes predictions for the test split; pass `--test_file`",)),
]


@pytest.mark.parametrize("make_flags, env, says", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_before_any_work_with_one_line(setup, tmp_path, make_flags, env, says):
    out = tmp_path / "out"
    flags = ["--model_name_or_path", setup["bert"], "--train_file", setup["data"]["train"]]
    done = train(*flags, "--output_dir", out, "--skip_pretrain", "--max_steps", "1", *FAST, *make_flags(setup, tmp_path), env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    line = last_line(done)
    assert line.startswith("lora-hf train: error: ")
    for phrase in says:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    assert "Traceback" not in done.stderr
    assert not (out / "finetune").exists()


# ----- item 2: the flags the HF example scripts act on -----------------------------------------------
def test_do_predict_writes_label_names_and_do_eval_false_evaluates_nothing(setup):
    root = setup["root"]
    named = [(text, "pos" if label else "neg") for text, label in sentences(32, seed=6)]
    train_file = write_csv(root / "named.csv", named)
    unlabelled = write_csv(root / "unlabelled.csv", [(text,) for text, _ in sentences(12, seed=7)], header=("text",))
    out = root / "predict"
    done = train("--model_name_or_path", setup["bert"], "--train_file", train_file, "--validation_file", train_file, "--test_file", unlabelled,
                 "--output_dir", out, "--skip_pretrain", "--max_steps", "2", "--do_predict", "--do_eval", "false", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "task: classification; text column 'text', label column 'label'\nlabels: neg, pos\n" in done.stdout  # the final table
    lines = (out / "predict_results.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13  # run_glue.py's format: one line per test row
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(12)]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"neg", "pos"}
    assert (out / "finetune" / "predict_results.txt").read_text() == (out / "predict_results.txt").read_text()
    state = json.loads((out / "finetune" / "trainer_state.json").read_text())
    assert not [h for h in state["log_history"] if "eval_loss" in h]  # --do_eval false: no evaluation at all
