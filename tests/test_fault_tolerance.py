"""Faults lose nothing: a save killed at any moment or stopped by a full disk leaves a loadable directory, and
a training run killed anywhere in either phase resumes to the weights of an uninterrupted run."""

import collections
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lora_hf
from lora_hf import LoraConfig, LoraForSequenceClassification
from lora_hf import checkpoint_lora
from lora_hf.training import main
from reliability_fixtures import REPO
from tiny_backbones import randomize_adapters, tiny_config
from train_fixtures import save_tiny_bert, sentences, write_csv

KILLS = 20
INPUT = torch.tensor([[2, 7, 1, 9, 4, 4, 3, 8]])


def snapshot(directory: Path) -> dict:
    """Every file in `directory`, hidden temporary files included, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=INPUT).logits


# ----- save_pretrained killed with SIGKILL ------------------------------------------------------
def test_sigkill_at_random_moments_during_save_pretrained_leaves_a_saved_version(tmp_path):
    """A child saves three versions in turn over one directory; it is killed at random moments, 20 times.

    After each kill the directory loads and gives exactly the outputs of one of the versions.
    """
    # Large enough (6.5 MB of safetensors) that kills land inside the weights write.
    config = tiny_config("bert", vocab_size=8000, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                         max_position_embeddings=128)
    torch.manual_seed(0)
    model = LoraForSequenceClassification(LoraConfig(backbone_config=config, r=8)).eval()
    randomize_adapters(model)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    versions, expected = [], []
    for v in range(3):
        state = {k: (t + 0.01 * v if t.is_floating_point() else t) for k, t in base_state.items()}
        model.load_state_dict(state)
        versions.append(state)
        expected.append(logits(model))
    directory = tmp_path / "saved"
    model.save_pretrained(directory, state_dict=versions[0], save_base=True)

    rng = random.Random(0)
    seen, stages, saves = [], collections.Counter(), 0
    for _ in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: save, save, save ... until killed
            try:
                os.close(read_end)
                torch.set_num_threads(1)
                i = rng.randrange(3)
                while True:
                    model.save_pretrained(directory, state_dict=versions[i % 3], save_base=True)
                    os.write(write_end, b".")
                    i += 1
            finally:
                os._exit(1)
        os.close(write_end)
        time.sleep(rng.uniform(0.01, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        saves += len(os.read(read_end, 1 << 16))
        os.close(read_end)
        stages[_save_stage(directory)] += 1

        loaded = LoraForSequenceClassification.from_pretrained(directory)
        out = logits(loaded)
        matches = [v for v, ref in enumerate(expected) if torch.allclose(out, ref, rtol=0, atol=1e-6)]
        assert matches, "the directory holds none of the saved versions"
        seen.append(matches[0])

    assert saves > KILLS, "the child hardly ever finished a save: the kills tested nothing"
    assert stages["between saves"] < KILLS, "no kill landed inside a save"
    print(f"\n{KILLS} kills, {saves} completed saves, killed while {dict(stages)}; versions loaded: {seen}")
    # The next save removes the staging folders the killed saves left behind.
    model.save_pretrained(directory, state_dict=versions[0], save_base=True)
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint_lora.py", "config.json", "configuration_lora.py",
                                                           "loading_lora.py", "lora_layers.py", "model.safetensors", "modeling_lora.py", "phases_lora.py"]


def _save_stage(directory: Path) -> str:
    """Where a killed save stopped, from the staging folder it left."""
    staged = {p.name for folder in directory.glob(".lora_hf-save-*") for p in folder.iterdir()}
    if not any(directory.glob(".lora_hf-save-*")):
        return "between saves"
    if "config.json" in staged:
        return "renaming"
    return "writing code/config" if "model.safetensors" in staged else "writing weights"


# ----- a full disk ------------------------------------------------------------------------------
def _small_saved_model(tmp_path):
    torch.manual_seed(0)
    model = LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("bert"), r=4)).eval()
    randomize_adapters(model, seed=1)
    directory = tmp_path / "saved"
    model.save_pretrained(directory, save_base=True)
    return model, directory


def _full_disk_in_weights(filename, data):
    Path(filename).write_bytes(data[:4096])  # part of it reached the disk
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_in_copy(src, dst, **kwargs):
    Path(dst).write_bytes(b"# half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_in_json(self, json_file_path, use_diff=True):
    Path(json_file_path).write_text('{"r": ')
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_in_rename(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing, target, patch", [
    ("model.safetensors", checkpoint_lora, ("write_bytes", _full_disk_in_weights)),
    ("configuration_lora.py", shutil, ("copyfile", _full_disk_in_copy)),
    ("config.json", LoraConfig, ("to_json_file", _full_disk_in_json)),
    ("model.safetensors", os, ("replace", _full_disk_in_rename)),
], ids=["weights-write", "code-copy", "config-write", "first-rename"])
def test_disk_full_while_saving_keeps_the_previous_save_and_no_temp_files(tmp_path, monkeypatch, failing, target, patch):
    model, directory = _small_saved_model(tmp_path)
    before, before_logits = snapshot(directory), logits(model)
    randomize_adapters(model, seed=2)  # the save that fails would have changed the weights
    monkeypatch.setattr(target, *patch)
    with pytest.raises(OSError) as raised:
        model.save_pretrained(directory, save_base=True)
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC
    assert failing in str(raised.value) and "No space left on device" in str(raised.value)
    assert snapshot(directory) == before  # same names (no temp files left), same bytes
    torch.testing.assert_close(logits(LoraForSequenceClassification.from_pretrained(directory)), before_logits, rtol=0, atol=0)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB filesystem, where root may mount one; skipped elsewhere."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_previous_save(tiny_tmpfs):
    # Sizes matter here: the small model, built from a config and so saved whole, fits in the 256 KiB with 64
    # positions (0.21 MB with its code), not with the tiny BERT's 512 (0.27 MB); the big one is 0.7 MB.
    torch.manual_seed(0)
    small = LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("bert", max_position_embeddings=64), r=4))
    small.save_pretrained(tiny_tmpfs / "model")
    before = snapshot(tiny_tmpfs / "model")
    big = LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("bert", vocab_size=4000, max_position_embeddings=64), r=4))
    with pytest.raises(OSError) as raised:
        big.save_pretrained(tiny_tmpfs / "model", save_base=True)  # 0.7 MB does not fit in 256 KiB
    assert raised.value.errno == errno.ENOSPC and "model.safetensors" in str(raised.value)
    assert snapshot(tiny_tmpfs / "model") == before


# ----- training runs killed and resumed ---------------------------------------------------------
FAST = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--logging_steps", "1", "--dataloader_pin_memory", "false", "--disable_tqdm", "true"]
# A kill at each of these points, one after another on the same run, each followed by a resume.
KILL_POINTS = [
    "mid-checkpoint:pretrain:4",  # phase 1, checkpoint-4 has its model files only
    "final-save:pretrain",        # phase 1's final model written, its results not
    "step:finetune:1",            # phase 2 before its first checkpoint: the phase restarts
    "torn-state:finetune:4",      # phase 2, checkpoint-4's trainer_state.json half written
]


@pytest.fixture(scope="module")
def run_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    bert = save_tiny_bert(root / "bert")
    train = write_csv(root / "train.csv", sentences(48, seed=1))
    dev = write_csv(root / "dev.csv", sentences(16, seed=2))
    return ["--model_name_or_path", bert, "--train_file", train, "--validation_file", dev, "--pretrain_max_steps", "6",
            "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
            "--save_total_limit", "5", *FAST]


@pytest.fixture(scope="module")
def uninterrupted(run_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*run_args, "--output_dir", str(out)]) == 0
    return out


def assert_same_final_weights(a: Path, b: Path) -> None:
    for phase in ("pretrain", "finetune"):
        first, second = load_file(a / phase / "model.safetensors"), load_file(b / phase / "model.safetensors")
        assert first.keys() == second.keys()
        for key in first:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-6, msg=f"{phase}: {key}")


def test_a_run_killed_in_both_phases_resumes_to_the_uninterrupted_weights(run_args, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for i, point in enumerate(KILL_POINTS):
        resume = ["--resume_from_checkpoint", "true"] if i else []
        cmd = [sys.executable, str(REPO / "tests" / "kill_points.py"), point, *run_args, "--output_dir", str(out), *resume]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, f"{point}: the run was not killed there\n{done.stderr[-2000:]}"
    assert not (out / "finetune" / "phase_results.json").exists()
    assert main([*run_args, "--output_dir", str(out), "--resume_from_checkpoint", "true"]) == 0
    assert_same_final_weights(uninterrupted, out)


def test_disk_full_in_a_trainer_checkpoint_stops_with_one_line_then_resumes(run_args, uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("finetune", "checkpoint-4", "optimizer.pt")):
            Path(f).write_bytes(b"PK\x03\x04")  # the start of a zip that never ends
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main([*run_args, "--output_dir", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Writing checkpoint-4" in err and "unexpected pos" in err and "--resume_from_checkpoint" in err
    assert (out / "finetune" / "checkpoint-2" / "trainer_state.json").is_file()
    assert main([*run_args, "--output_dir", str(out), "--resume_from_checkpoint", "true"]) == 0
    assert_same_final_weights(uninterrupted, out)


def test_resuming_from_an_incomplete_checkpoint_by_name_is_refused(run_args, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    (out / "finetune" / "phase_results.json").unlink()
    (out / "finetune" / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')
    code = main([*run_args, "--output_dir", str(out), "--resume_from_checkpoint", str(out / "finetune" / "checkpoint-4")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "checkpoint-4" in err and "is not a complete checkpoint" in err and "`true`" in err
