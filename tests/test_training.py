"""Two-phase training with the HF Trainer, on tiny models: phases, heads, resume, bad data (multi-process runs: test_distributed.py)."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lora_hf
from lora_hf.training import main
from train_fixtures import FAST, REPO, save_tiny_gpt2, sentences, write_csv, write_jsonl


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(root / "train.csv", sentences(64, seed=1)),
        "validation": write_csv(root / "dev.csv", sentences(32, seed=2)),
        "test": write_csv(root / "test.csv", sentences(32, seed=3)),
    }


def data_flags(files):
    return ["--train_file", files["train"], "--validation_file", files["validation"], "--test_file", files["test"]]


def test_two_phase_bert_writes_both_phases_and_a_loadable_final_model(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    code = main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out),
                 "--pretrain_max_steps", "4", "--num_train_epochs", "2", *FAST])
    assert code == 0
    for phase in ("pretrain", "finetune"):
        assert (out / phase / "trainer_state.json").is_file()
        assert (out / phase / "loss_curve.png").stat().st_size > 1000
        assert (out / phase / "phase_results.json").is_file()
    results = json.loads((out / "run_record.json").read_text())
    assert results["task"] == "classification"
    assert 0.0 <= results["finetune"]["test_accuracy"] <= 1.0
    # all_results.json is flat, as run_glue.py's: the final phase's metrics, the pretrain phase's prefixed.
    flat = json.loads((out / "all_results.json").read_text())
    assert flat["test_accuracy"] == results["finetune"]["test_accuracy"] and flat["eval_loss"] == results["finetune"]["eval_loss"]
    assert flat["pretrain_eval_perplexity"] == results["pretrain"]["eval_perplexity"] and "pretrain_train_loss" in flat
    assert all(isinstance(v, (int, float)) for v in flat.values())
    assert results["columns"] == {"text": "text", "text_pair": None, "label": "label"} and results["label_names"] == ["0", "1"]
    assert "eval_perplexity" in results["pretrain"]
    # Recorded for the model card: the data of each phase and what trainer_state.json does not hold.
    assert results["datasets"] == {"pretrain": "the finetune training text (train.csv)", "finetune": "train.csv"}
    assert results["hyperparameters"]["pretrain"]["texts (train + held out)"] == "58 + 6"  # 64 rows, a tenth held out
    assert results["hyperparameters"]["finetune"]["LoRA r"] == 8
    assert results["hyperparameters"]["finetune"]["learning rate: pretrained weights"] == 5e-5
    phases = results["pretrain"]["train_wall_seconds"] + results["finetune"]["train_wall_seconds"]
    assert phases < results["wall_seconds"] < phases + 120  # the whole command: both phases plus loading and evaluation
    assert (out / "loss_curve.png").is_file()
    card = (out / "README.md").read_text()
    assert "train.csv" in card and "not recorded" not in card
    model = lora_hf.LoraForSequenceClassification.from_pretrained(out)
    assert model.config.trained_groups == ["lora", "head"]  # phase 1 trained the adapters alone (the base has an MLM head)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForSequenceClassification.from_pretrained(out)
    batch = AutoTokenizer.from_pretrained(out)(["the film was good"], return_tensors="pt")
    torch.testing.assert_close(auto(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_finetune_starts_from_the_pretrain_adapters(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    assert main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out),
                 "--skip_finetune", "--pretrain_max_steps", "3", "--pretrain_trainable", "lora", "embeddings", *FAST]) == 0
    saved = load_file(out / "pretrain" / "model.safetensors")
    assert any("word_embeddings" in k for k in saved)
    model = lora_hf.LoraForSequenceClassification.from_pretrained(out / "pretrain", num_labels=2)
    state = model.state_dict()
    lora_keys = [k for k in saved if k.endswith(("lora_A", "lora_B"))]
    assert lora_keys and any(saved[k].abs().sum() > 0 for k in lora_keys if k.endswith("lora_B"))
    for key in lora_keys + [k for k in saved if "word_embeddings" in k]:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
    assert not any(k.startswith("backbone.cls.") for k in state)  # the masked-LM head is dropped


def test_merge_between_phases_starts_fresh_adapters_on_a_merged_base(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    assert main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out),
                 "--merge_between_phases", "--pretrain_max_steps", "3", "--max_steps", "2", *FAST]) == 0
    config = json.loads((out / "finetune" / "config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "pretrain" / "merged_base")
    assert (out / "pretrain" / "merged_base" / "model.safetensors").is_file()
    lora_hf.LoraForSequenceClassification.from_pretrained(out)


def test_gpt2_causal_lm_pretrain_then_sequence_classification(gpt2_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    assert main(["--model_name_or_path", gpt2_dir, *data_flags(csv_data), "--output_dir", str(out),
                 "--pretrain_max_steps", "3", "--max_steps", "3", *FAST]) == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["pretrain"]["eval_perplexity"] > 1.0
    assert "test_accuracy" in results["finetune"]
    model = lora_hf.LoraForSequenceClassification.from_pretrained(out)
    assert sorted({n.rsplit(".", 1)[-1] for n in model.lora_module_names}) == ["c_attn", "c_proj"]


def test_gpt2_causal_lm_finetuning_on_text(gpt2_dir, tmp_path):
    rows = [{"text": text} for text, _ in sentences(40)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[32:])
    out = tmp_path / "run"
    assert main(["--model_name_or_path", gpt2_dir, "--train_file", train, "--validation_file", dev, "--task", "causal-lm",
                 "--output_dir", str(out), "--skip_pretrain", "--max_steps", "3", *FAST]) == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["task"] == "causal-lm" and results["finetune"]["eval_perplexity"] > 1.0
    model = lora_hf.LoraForCausalLM.from_pretrained(out)
    generated = model.generate(torch.tensor([[3, 4]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 5)


def test_regression_and_token_classification_heads(bert_dir, tmp_path):
    reg = [{"text": t, "label": float(l) * 2.5 - 0.3} for t, l in sentences(32)]
    reg_file = write_jsonl(tmp_path / "reg.jsonl", reg)
    out = tmp_path / "reg"
    assert main(["--model_name_or_path", bert_dir, "--train_file", reg_file, "--validation_file", reg_file,
                 "--output_dir", str(out), "--skip_pretrain", "--max_steps", "2", *FAST]) == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["task"] == "regression" and "eval_pearsonr" in results["finetune"]

    tok = [{"tokens": t.split(), "tags": ["POS" if w in t.split()[:1] else "O" for w in t.split()]} for t, _ in sentences(24)]
    tok_file = write_jsonl(tmp_path / "tok.jsonl", tok)
    out = tmp_path / "tok"
    assert main(["--model_name_or_path", bert_dir, "--train_file", tok_file, "--validation_file", tok_file,
                 "--text_column", "tokens", "--label_column", "tags", "--output_dir", str(out),
                 "--skip_pretrain", "--max_steps", "2", *FAST]) == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["task"] == "token-classification"
    model = lora_hf.LoraForTokenClassification.from_pretrained(out)
    assert model.config.id2label == {0: "O", 1: "POS"}


def test_full_finetune_baseline_trains_every_weight(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    assert main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out),
                 "--full_finetune", "--max_steps", "2", *FAST]) == 0
    results = json.loads((out / "run_record.json").read_text())
    assert results["trainable_params"] == results["total_params"]
    assert not (out / "pretrain").exists()


def test_best_model_and_checkpoint_limit_work_with_adapter_checkpoints(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    assert main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out), "--skip_pretrain",
                 "--num_train_epochs", "3", "--load_best_model_at_end", "true", "--metric_for_best_model", "accuracy",
                 "--save_total_limit", "1", *FAST]) == 0
    state = json.loads((out / "finetune" / "trainer_state.json").read_text())
    best = max(h["eval_accuracy"] for h in state["log_history"] if "eval_accuracy" in h)
    assert state["best_metric"] == pytest.approx(best)
    checkpoints = sorted((out / "finetune").glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2  # the limit keeps the best one besides the last
    for ckpt in checkpoints:
        assert (ckpt / "model.safetensors").stat().st_size < 300_000  # adapters + head, not the 1M-parameter base


def _final_tensors(path):
    return load_file(Path(path) / "finetune" / "model.safetensors")


def test_resume_after_sigkill_in_phase_two_matches_an_uninterrupted_run(bert_dir, csv_data, tmp_path):
    args = ["--model_name_or_path", bert_dir, *data_flags(csv_data), "--pretrain_max_steps", "2", "--max_steps", "12",
            "--save_strategy", "steps", "--save_steps", "3", "--eval_strategy", "no", "--save_total_limit", "5", *FAST]
    straight = tmp_path / "straight"
    assert main([*args, "--output_dir", str(straight)]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lora_hf.cli", "train", *args, "--output_dir", str(killed)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "finetune" / "checkpoint-6" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before phase 2 reached checkpoint-6"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "finetune" / "phase_results.json").exists()

    assert main([*args, "--output_dir", str(killed), "--resume_from_checkpoint", "true"]) == 0
    a, b = _final_tensors(straight), _final_tensors(killed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_flags_from_a_yaml_file_and_a_datasets_directory(bert_dir, csv_data, tmp_path):
    """`--dataset_name` goes through `datasets.load_dataset` (a local directory here: no Hub offline)."""
    import shutil

    dataset_dir = tmp_path / "my_dataset"
    dataset_dir.mkdir()
    shutil.copy(csv_data["train"], dataset_dir / "train.csv")
    shutil.copy(csv_data["validation"], dataset_dir / "validation.csv")
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model_name_or_path: {bert_dir}\ndataset_name: {dataset_dir}\noutput_dir: {out}\nskip_pretrain: true\n"
        "max_steps: 2\nmax_seq_length: 16\nper_device_train_batch_size: 8\ndisable_tqdm: true\nr: 4\nlora_alpha: 8\n"
    )
    assert main([str(config)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (4, 8)
    results = json.loads((out / "run_record.json").read_text())
    assert "eval_accuracy" in results["finetune"]
    assert results["datasets"] == {"finetune": str(dataset_dir)}  # --skip_pretrain: no pretrain entry
    assert results["hyperparameters"]["finetune"]["LoRA alpha"] == 8


def test_targets_are_checked_on_the_model_of_each_phase_that_runs(bert_dir, csv_data, tmp_path, capsys):
    """BERT's pooler is in the classifier of phase 2 but not in the masked LM of phase 1."""
    flags = ["--model_name_or_path", bert_dir, *data_flags(csv_data), "--target_modules", "query", "pooler.dense",
             "--pretrain_max_steps", "1", "--max_steps", "1", *FAST]
    assert main([*flags, "--output_dir", str(tmp_path / "both")]) == 2
    assert "'pooler.dense' matched no module of BertForMaskedLM" in capsys.readouterr().err
    assert not (tmp_path / "both" / "pretrain").exists()  # refused before any training

    assert main([*flags, "--skip_pretrain", "--output_dir", str(tmp_path / "finetune")]) == 0
    saved = load_file(tmp_path / "finetune" / "model.safetensors")
    assert {k for k in saved if "pooler.dense.lora_" in k} == {"backbone.bert.pooler.dense.lora_A", "backbone.bert.pooler.dense.lora_B"}


def test_the_task_registry_has_every_task_flag_and_takes_each_model_class_from_the_head_that_declares_it():
    from lora_hf.data import TASKS as TASK_FLAGS
    from lora_hf.modeling_lora import HEAD_CLASSES
    from lora_hf.tasks import TASKS

    assert set(TASKS) == set(TASK_FLAGS) - {"auto"}
    declared = {task: cls for cls in HEAD_CLASSES for task in cls.training_tasks}
    assert {name: task.model_class for name, task in TASKS.items()} == declared


def test_defaults_group_batches_by_length_and_skip_pinning_without_cuda(tmp_path):
    from lora_hf.training import parse_args

    *_, training_args, _ = parse_args(["--output_dir", str(tmp_path)])
    assert training_args.train_sampling_strategy == "group_by_length"
    assert training_args.dataloader_pin_memory is torch.cuda.is_available()
    *_, training_args, _ = parse_args(["--output_dir", str(tmp_path), "--train_sampling_strategy", "random"])
    assert training_args.train_sampling_strategy == "random"  # a user's choice wins


@pytest.mark.parametrize("flags, warmup", [([], 0), (["--warmup_ratio", "0.5"], 2), (["--warmup_steps", "0.5"], 2)],
                         ids=["default-none", "ratio-transformers-4-name", "steps-as-share"])
def test_warmup_reaches_the_scheduler_and_the_card(bert_dir, csv_data, tmp_path, flags, warmup):
    # transformers 5 no longer reads `warmup_ratio`: the alias must reach the scheduler, not sit on the arguments.
    out = tmp_path / "run"
    code = main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out), "--skip_pretrain",
                 "--max_steps", "4", "--learning_rate", "1e-3", *flags, *FAST])
    assert code == 0
    rates = [h["learning_rate"] for h in json.loads((out / "finetune" / "trainer_state.json").read_text())["log_history"] if "learning_rate" in h]
    # Linear schedule over 4 steps, each logged with the rate it trained at: a 2-step warm-up starts from 0.
    expected = [0.0, 0.5e-3, 1e-3, 0.5e-3] if warmup else [1e-3, 0.75e-3, 0.5e-3, 0.25e-3]
    assert rates == pytest.approx(expected, abs=1e-9)
    said = "50% of the steps" if warmup else "0 steps"
    assert json.loads((out / "run_record.json").read_text())["hyperparameters"]["finetune"]["warm-up"] == said


def test_a_classifier_whose_loss_stays_at_chance_is_called_out_in_the_table(bert_dir, csv_data, tmp_path, capsys):
    from lora_hf.report import stalled_classifier

    balanced, skewed = [0, 1] * 50, [0] * 90 + [1] * 10  # label entropies ln 2 = 0.693 and 0.325
    stuck = [{"step": s, "loss": 0.6931} for s in range(20, 820, 20)]
    learnt = [{"step": s, "loss": 0.693 if s < 300 else 0.25} for s in range(20, 820, 20)]
    assert "ended at 0.693" in stalled_classifier(stuck, balanced) and "(0.693)" in stalled_classifier(stuck, balanced)
    assert stalled_classifier(learnt, balanced) is None
    assert stalled_classifier([{"step": 800, "loss": 0.33}], skewed) is not None  # the majority share, no better
    assert stalled_classifier([{"step": 800, "loss": 0.25}], skewed) is None
    assert stalled_classifier(stuck, [1] * 100) is None and stalled_classifier([], balanced) is None

    # A run that cannot move (learning rate ~0) from a fresh head: its loss stays at ln 2, and the table says so.
    out = tmp_path / "run"
    code = main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out), "--skip_pretrain",
                 "--max_steps", "4", "--learning_rate", "1e-12", "--pretrained_learning_rate", "1e-12", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "WARNING: the finetune phase did not learn" in printed
    assert printed.index("WARNING: the finetune phase") < printed.index("saved to:")
    assert json.loads((out / "run_record.json").read_text())["warnings"][0].startswith("the finetune phase did not learn")


def test_pretrained_weights_train_at_the_fine_tuning_rate_and_new_ones_at_the_lora_rate(bert_dir, tmp_path):
    from transformers import Trainer

    from lora_hf.trainer import LoraTrainer
    from lora_hf.training import LoraTrainingArguments

    model = lora_hf.LoraForSequenceClassification.from_base_model(bert_dir, r=2, num_labels=2)
    model.config.phase_trainable["finetune"] = ["lora", "head", "embeddings"]
    model.set_phase("finetune")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    args = LoraTrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, pretrained_learning_rate=5e-5, weight_decay=0.01,
                                 eval_strategy="no")
    trainer = LoraTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert set(rate) == trainable and sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    new = {n for n in trainable if ".lora_" in n or n in model.newly_initialized_keys}
    assert any("word_embeddings" in n for n in trainable - new) and any("classifier" in n for n in new)
    assert {rate[n] for n in new} == {2e-3} and {rate[n] for n in trainable - new} == {5e-5}
    expected_decay = set(Trainer.get_decay_parameter_names(trainer, model))
    assert all(decay[n] == (0.01 if n in expected_decay else 0.0) for n in trainable)  # the Trainer's split is kept

    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    rates = {(g["lr"], g["initial_lr"]) for g in optimizer.param_groups}
    assert {round(lr / initial, 9) for lr, initial in rates} == {round(scheduler.get_last_lr()[0] / 2e-3, 9)}  # one schedule, both rates

    args = LoraTrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, pretrained_learning_rate=None, eval_strategy="no")
    assert {g["lr"] for g in LoraTrainer(model=model, args=args).create_optimizer().param_groups} == {2e-3}  # one rate, as Trainer


def test_a_card_the_user_wrote_in_the_output_directory_is_kept(bert_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "README.md").write_text("# notes I keep here\n")
    assert main(["--model_name_or_path", bert_dir, *data_flags(csv_data), "--output_dir", str(out), "--overwrite_output_dir",
                 "--skip_pretrain", "--max_steps", "1", *FAST]) == 0
    assert (out / "README.md").read_text() == "# notes I keep here\n"
    assert (out / "all_results.json").is_file() and (out / "model.safetensors").is_file()


def test_do_predict_writes_regression_values_and_word_labels(bert_dir, tmp_path):
    reg = [{"text": t, "label": float(l) * 2.5 - 0.3} for t, l in sentences(16)]
    reg_file = write_jsonl(tmp_path / "reg.jsonl", reg)
    out = tmp_path / "reg"
    assert main(["--model_name_or_path", bert_dir, "--train_file", reg_file, "--test_file", reg_file, "--do_predict",
                 "--output_dir", str(out), "--skip_pretrain", "--max_steps", "1", *FAST]) == 0
    lines = (out / "predict_results.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 17
    assert all(re.fullmatch(r"\d+\t-?\d+\.\d{3}", line) for line in lines[1:])  # run_glue.py: f"{value:3.3f}"

    # Rows of different lengths: batches grouped by length must not reorder the predictions.
    tok = [{"tokens": t.split()[: 2 + k % 5], "tags": ["POS" if i == 0 else "O" for i, _ in enumerate(t.split()[: 2 + k % 5])]}
           for k, (t, _) in enumerate(sentences(12))]
    tok_file = write_jsonl(tmp_path / "tok.jsonl", tok)
    out = tmp_path / "tok"
    assert main(["--model_name_or_path", bert_dir, "--train_file", tok_file, "--test_file", tok_file, "--do_predict",
                 "--text_column", "tokens", "--label_column", "tags", "--output_dir", str(out), "--skip_pretrain", "--max_steps", "1", *FAST]) == 0
    rows = [line.split("\t")[1].split() for line in (out / "predict_results.txt").read_text().splitlines()[1:]]
    assert [len(r) for r in rows] == [len(row["tokens"]) for row in tok]  # one label per word, as run_ner.py
    assert {tag for r in rows for tag in r} <= {"O", "POS"}
