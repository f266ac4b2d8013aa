"""Untrusted files: only safetensors and JSON are read from a model directory, pickles are never run,
and nothing but the three model modules travels for `trust_remote_code`."""

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import lora_hf
from lora_hf import LoraForSequenceClassification
from lora_hf.training import main
from reliability_fixtures import MARKER_NAME, _RunsShell, save_base
from tiny_backbones import randomize_adapters
from train_fixtures import save_tiny_bert, sentences, write_csv

CODE_FILES = {"configuration_lora.py", "lora_layers.py", "checkpoint_lora.py", "loading_lora.py", "phases_lora.py", "modeling_lora.py"}
SAVED_FILES = CODE_FILES | {"config.json", "model.safetensors"}


def plant_pickle(path: Path, marker: Path) -> None:
    """A torch.save file (zip + pickle) whose unpickling runs `touch marker`, like a poisoned pytorch_model.bin."""
    torch.save({"weight": _RunsShell(f"touch {marker}")}, path)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / MARKER_NAME
    yield path
    assert not path.exists(), "a planted pickle was unpickled: its code ran"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    base = save_base(root / "base")
    model = LoraForSequenceClassification.from_base_model(base, r=4, num_labels=2)
    randomize_adapters(model)
    model.save_pretrained(root / "adapter")
    return {"root": root, "base": base, "adapter": root / "adapter", "model": model.eval()}


def test_the_planted_pickle_is_live(tmp_path):
    """Control: loading the planted file the unsafe way does run its code, so the tests below mean something."""
    live = tmp_path / "live"
    plant_pickle(tmp_path / "evil.bin", live)
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert live.exists()


def test_a_directory_with_only_a_pickled_model_is_refused(saved, tmp_path, marker):
    directory = shutil.copytree(saved["adapter"], tmp_path / "pickled")
    (directory / "model.safetensors").unlink()
    plant_pickle(directory / "pytorch_model.bin", marker)
    for load in (LoraForSequenceClassification.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(OSError, match="has no model.safetensors"):
            load(directory)
        with pytest.raises(OSError, match="has no model.safetensors"):
            load(directory, weights_only=False)
    with pytest.raises(ValueError, match="safetensors only"):
        LoraForSequenceClassification.from_pretrained(directory, use_safetensors=False)


def test_pickles_beside_the_safetensors_are_ignored(saved, tmp_path, marker):
    directory = shutil.copytree(saved["adapter"], tmp_path / "mixed")
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt", "adapter_model.bin"):
        plant_pickle(directory / name, marker)
    ids = torch.tensor([[4, 5, 6, 7]])
    expected = saved["model"](input_ids=ids).logits
    for load in (LoraForSequenceClassification.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
        torch.testing.assert_close(load(directory)(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_code_in_a_directory_runs_only_with_trust_remote_code(saved, tmp_path, marker):
    directory = shutil.copytree(saved["adapter"], tmp_path / "code")
    for name in CODE_FILES:
        (directory / name).write_text(f"import os\nos.system('touch {marker}')\n")
    AutoConfig.from_pretrained(directory)
    AutoModelForSequenceClassification.from_pretrained(directory)
    LoraForSequenceClassification.from_pretrained(directory)


def test_save_pretrained_writes_exactly_the_config_the_weights_and_the_three_modules(saved, tmp_path):
    saved["model"].save_pretrained(tmp_path / "a")
    saved["model"].save_pretrained(tmp_path / "b", save_base=True)
    for directory in (tmp_path / "a", tmp_path / "b"):
        assert {p.name for p in directory.iterdir()} == SAVED_FILES
        for name in CODE_FILES:  # byte for byte the library's own modules, nothing generated or added
            assert (directory / name).read_bytes() == (Path(lora_hf.__file__).parent / name).read_bytes()
    auto_map = json.loads((tmp_path / "a" / "config.json").read_text())["auto_map"]
    assert {ref.split(".")[0] for ref in auto_map.values()} == {"configuration_lora", "modeling_lora"}


def test_the_travelling_modules_import_nothing_but_torch_transformers_safetensors_and_each_other():
    allowed = {"torch", "transformers", "safetensors", "huggingface_hub"} | set(sys.stdlib_module_names)
    for name in CODE_FILES:
        tree = ast.parse((Path(lora_hf.__file__).parent / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            elif isinstance(node, ast.ImportFrom):  # relative: only the sibling modules
                assert node.level == 1 and f"{node.module}.py" in CODE_FILES, f"{name}: from {'.' * node.level}{node.module}"
                continue
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"


# ----- Trainer checkpoints ----------------------------------------------------------------------------
FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--logging_steps", "1",
        "--dataloader_pin_memory", "false", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    bert = save_tiny_bert(root / "bert")
    args = ["--model_name_or_path", bert, "--train_file", write_csv(root / "train.csv", sentences(32, seed=1)),
            "--skip_pretrain", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", *FAST]
    assert main([*args, "--output_dir", str(root / "out")]) == 0
    return args, root / "out"


def _unfinished_copy(finished_run, tmp_path) -> Path:
    """The run as if killed after checkpoint-4: `--resume_from_checkpoint` trains from there again."""
    out = shutil.copytree(finished_run[1], tmp_path / "out")
    (out / "finetune" / "phase_results.json").unlink()
    return out


def test_resume_never_unpickles_planted_model_or_argument_files(finished_run, tmp_path, marker):
    out = _unfinished_copy(finished_run, tmp_path)
    checkpoint = out / "finetune" / "checkpoint-4"
    for name in ("pytorch_model.bin", "training_args.bin"):
        plant_pickle(checkpoint / name, marker)
    assert main([*finished_run[0], "--output_dir", str(out), "--resume_from_checkpoint", "true"]) == 0


def test_a_checkpoint_holding_only_pickled_weights_is_never_resumed_from(finished_run, tmp_path, marker, capsys):
    out = _unfinished_copy(finished_run, tmp_path)
    checkpoint = out / "finetune" / "checkpoint-4"
    (checkpoint / "model.safetensors").unlink()
    plant_pickle(checkpoint / "pytorch_model.bin", marker)
    assert main([*finished_run[0], "--output_dir", str(out), "--resume_from_checkpoint", str(checkpoint)]) == 2
    assert "is not a complete checkpoint" in capsys.readouterr().err
    # `true` passes over it to checkpoint-2, the last complete one.
    assert main([*finished_run[0], "--output_dir", str(out), "--resume_from_checkpoint", "true"]) == 0
    state = json.loads((out / "finetune" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_a_planted_optimizer_pickle_stops_the_resume_with_one_line(finished_run, tmp_path, marker, capsys):
    out = _unfinished_copy(finished_run, tmp_path)
    plant_pickle(out / "finetune" / "checkpoint-4" / "optimizer.pt", marker)
    assert main([*finished_run[0], "--output_dir", str(out), "--resume_from_checkpoint", "true"]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert "Refusing to resume from" in last and "checkpoint-4" in last and "calls posix.system" in last
    assert "Traceback" not in err


def test_every_directory_a_run_writes_carries_only_the_code_modules(finished_run):
    out = finished_run[1]
    for directory in (out, out / "finetune", out / "finetune" / "checkpoint-2", out / "finetune" / "checkpoint-4"):
        assert {p.name for p in directory.iterdir() if p.suffix == ".py"} == CODE_FILES, directory
