"""scripts/compare_baselines.py: each system trains once into its own folder, and the table lands between the README markers."""

import json
from pathlib import Path

import train_fixtures


def load_script():
    return train_fixtures.load_script("compare_baselines")


def fake_train(calls):
    def train(argv):
        out = argv[argv.index("--output_dir") + 1]
        calls.append(argv)
        full = "--full_finetune" in argv
        results = {"finetune": {"test_accuracy": 0.9 if full else 0.8, "eval_accuracy": 0.85, "train_wall_seconds": 90.0},
                   "trainable_params": 10 if not full else 1000, "total_params": 1000, "wall_seconds": 120.0}
        if "--skip_pretrain" not in argv and not full:
            results["pretrain"] = {"train_wall_seconds": 30.0}
        Path(out).mkdir(parents=True)
        (Path(out) / "run_record.json").write_text(json.dumps(results))
        (Path(out) / "model.safetensors").write_bytes(b"\0" * 250_000)
        return 0

    return train


def test_the_table_replaces_the_readme_section_and_finished_systems_are_not_retrained(tmp_path, monkeypatch):
    script = load_script()
    calls = []
    monkeypatch.setattr(script, "train", fake_train(calls))
    monkeypatch.setattr(script, "train_peft", fake_train(calls))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{script.START}\n(not measured yet)\n{script.END}\n\nafter\n")
    argv = ["--output_dir", str(tmp_path / "cmp"), "--readme", str(readme)]
    assert script.main(argv) == 0
    assert [("--skip_pretrain" in a, "--full_finetune" in a, script.PEFT_FLAG in a) for a in calls] == [
        (False, False, False), (True, False, False), (True, False, True), (False, True, False)]

    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("after\n") and "(not measured yet)" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert rows == [
        "| two-phase LoRA (pretrain + finetune) | 80.0% | 85.0% | 1.00% | 2.0 min | 2.0 min | 0.25 MB |",
        "| LoRA, finetune only | 80.0% | 85.0% | 1.00% | 1.5 min | 2.0 min | 0.25 MB |",
        "| PEFT LoRA, finetune only | 80.0% | 85.0% | 1.00% | 1.5 min | 2.0 min | 0.25 MB |",
        "| full fine-tuning | 90.0% | 85.0% | 100.00% | 1.5 min | 2.0 min | 0.25 MB |",
    ]
    assert script.main(argv) == 0 and len(calls) == 4  # run_record.json there: measured, not trained again
    assert readme.read_text().count(script.START) == 1


def test_the_peft_row_is_the_same_run_with_peft_s_lora_as_the_finetune_model(tmp_path):
    from train_fixtures import save_tiny_bert, sentences, write_csv

    script = load_script()
    bert = save_tiny_bert(tmp_path / "bert")
    data = ["--train_file", write_csv(tmp_path / "train.csv", sentences(32, seed=1)),
            "--validation_file", write_csv(tmp_path / "dev.csv", sentences(16, seed=2)),
            "--model_name_or_path", bert, "--skip_pretrain", "--max_steps", "2", "--max_seq_length", "16",
            "--disable_tqdm", "true", "--bf16", "false"]
    assert script.train(["--output_dir", str(tmp_path / "lora_hf"), *data]) == 0
    assert script.train_peft(["--output_dir", str(tmp_path / "peft"), script.PEFT_FLAG, *data]) == 0
    ours, peft = (json.loads((tmp_path / run / "run_record.json").read_text()) for run in ("lora_hf", "peft"))
    assert (tmp_path / "peft" / "finetune" / "adapter_config.json").is_file()  # PEFT saved it: PEFT's model trained
    assert json.loads((tmp_path / "peft" / "finetune" / "adapter_config.json").read_text())["r"] == 8
    assert peft["trainable_params"] == ours["trainable_params"]  # same targets, rank and head
    steps = [json.loads((tmp_path / run / "finetune" / "trainer_state.json").read_text())["global_step"] for run in ("lora_hf", "peft")]
    assert steps == [2, 2]
