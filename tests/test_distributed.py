"""Real multi-process runs on CPU (gloo): DDP, DeepSpeed ZeRO-2/3 and FSDP1/FSDP2, two processes each.

Every run records the world size each rank saw (tests/rank_probe.py, tests/fsdp_worker.py), so a run
that silently fell back to one process fails. Models are tiny (tests/train_fixtures.py) with every
dropout at zero, so two processes and one process with the same global batch compute the same thing.

Tolerance, fp32: 1e-6 for DDP against one process, two nodes against one, and ZeRO-2/3 against DDP (the
all-reduce sums the two halves of a batch in another order than one process does, and DeepSpeed runs its
own Adam over flattened buffers; measured differences are below 1e-7). Saved files against the in-memory
model, and rank against rank: exact.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lora_hf
from lora_hf.training import main
from train_fixtures import save_tiny_bert, sentences, write_csv

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "scripts" / "run_two_phase.py")
PROBE = str(REPO / "tests" / "rank_probe.py")
# Global batch 8: one process with 8 rows a step, or two with 4 each.
STEPS = ["--pretrain_max_steps", "3", "--max_steps", "3", "--max_seq_length", "16", "--per_device_eval_batch_size", "16",
         "--logging_steps", "1", "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--save_strategy", "no",
         "--eval_strategy", "no", "--seed", "7", "--bf16", "false"]  # fp32, whatever the default precision
DDP_TOL = 1e-6
DEEPSPEED_TOL = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", **extra}


def launch(cmd: list, record: Path, timeout: int = 600, **extra_env) -> subprocess.CompletedProcess:
    record.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, env=env(LORA_HF_RANK_DIR=str(record), **extra_env), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def ranks_saw(record: Path, world: int) -> None:
    """Each of `world` ranks ran, saw `world` processes and imported this checkout's lora_hf."""
    seen = [json.loads((record / f"rank{i}.json").read_text()) for i in range(world)]
    assert [s["world_size"] for s in seen] == [world] * world
    assert [s["torch_distributed_world_size"] for s in seen] == [world] * world
    assert {s["lora_hf"] for s in seen} == {lora_hf.__file__}


def assert_reload_is_exact(phase_dir: Path, in_memory: dict) -> None:
    """The saved phase directory loads with `AutoModelFor*` to the trained in-memory tensors, exactly."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    auto = AutoModelForMaskedLM if phase_dir.name == "pretrain" else AutoModelForSequenceClassification
    loaded = dict(auto.from_pretrained(phase_dir).named_parameters())
    assert_tensors_close({k: loaded[k].detach() for k in in_memory}, in_memory, 0.0)


def assert_tensors_close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max |diff| {worst:.3g} > {atol}"
    return worst


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """Tiny BERT with every dropout at zero: one process and two compute the same function."""
    path = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"))
    config = json.loads((Path(path) / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (Path(path) / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    return ["--train_file", write_csv(root / "train.csv", sentences(48, seed=1)),
            "--validation_file", write_csv(root / "dev.csv", sentences(16, seed=2))]


@pytest.fixture(scope="module")
def single(bert_dir, data, tmp_path_factory):
    """The reference: one process, 8 rows a step."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["--model_name_or_path", bert_dir, *data, "--output_dir", str(out), "--per_device_train_batch_size", "8", *STEPS]) == 0
    return out


def accelerate_ddp(script_args: list, port: int) -> list:
    """The README's DDP command: two real processes on CPU need --multi_gpu (a launcher choice, not a device
    one) and the script's --use_cpu; `--cpu --num_processes 2` starts one process."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), PROBE, RUN,
            "--use_cpu", "true", "--ddp_backend", "gloo", *script_args]


@pytest.fixture(scope="module")
def ddp(bert_dir, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    launch(accelerate_ddp(["--model_name_or_path", bert_dir, *data, "--output_dir", str(root / "run"),
                           "--per_device_train_batch_size", "4", *STEPS], free_port()), root / "ranks")
    return root


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(ddp, single):
    ranks_saw(ddp / "ranks", 2)
    for phase in ("pretrain", "finetune"):
        saved = load_file(ddp / "run" / phase / "model.safetensors")
        reference = load_file(single / phase / "model.safetensors")
        worst = assert_tensors_close(saved, reference, DDP_TOL)
        print(f"DDP {phase}: max |diff| against one process {worst:.3g} over {len(saved)} tensors")
        # Training moved the adapters: the comparison is not between two untouched models.
        assert any(k.endswith("lora_B") and saved[k].abs().max() > 0 for k in saved)
        # The ranks hold identical models, and those are what was saved.
        rank0, rank1 = (load_file(ddp / "ranks" / f"rank{i}-{phase}.safetensors") for i in range(2))
        assert_tensors_close(rank0, rank1, 0.0)
        assert_tensors_close({k: v for k, v in saved.items() if k in rank0}, rank0, 0.0)
        assert_reload_is_exact(ddp / "run" / phase, rank0)
    assert load_file(ddp / "run" / "model.safetensors").keys() == load_file(single / "model.safetensors").keys()


def test_gradient_accumulation_equals_one_big_batch(single, bert_dir, data, tmp_path):
    """The same loss rule, one process: 2 accumulated micro-batches of 4 train as one batch of 8."""
    out = tmp_path / "accumulated"
    assert main(["--model_name_or_path", bert_dir, *data, "--output_dir", str(out), "--per_device_train_batch_size", "4",
                 "--gradient_accumulation_steps", "2", *STEPS]) == 0
    for phase in ("pretrain", "finetune"):
        worst = assert_tensors_close(load_file(out / phase / "model.safetensors"), load_file(single / phase / "model.safetensors"), DDP_TOL)
        print(f"gradient accumulation {phase}: max |diff| against one batch {worst:.3g}")


def accelerate_deepspeed(stage: int, script_args: list, port: int) -> list:
    """The README's DeepSpeed command; on CPU it needs DS_ACCELERATOR=cpu in the environment and gloo."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", str(stage),
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), PROBE, RUN, "--ddp_backend", "gloo", *script_args]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_both_phases_like_ddp_and_saves_complete_adapters(stage, ddp, bert_dir, data, tmp_path):
    launch(accelerate_deepspeed(stage, ["--model_name_or_path", bert_dir, *data, "--output_dir", str(tmp_path / "run"),
                                        "--per_device_train_batch_size", "4", *STEPS], free_port()),
           tmp_path / "ranks", DS_ACCELERATOR="cpu")
    ranks_saw(tmp_path / "ranks", 2)
    for phase in ("pretrain", "finetune"):
        saved = load_file(tmp_path / "run" / phase / "model.safetensors")
        reference = load_file(ddp / "run" / phase / "model.safetensors")
        # Complete: every tensor DDP saved (every LoRA A and B), full shapes, B moved off zero.
        worst = assert_tensors_close(saved, reference, DEEPSPEED_TOL)
        print(f"ZeRO-{stage} {phase}: max |diff| against DDP {worst:.3g} over {len(saved)} tensors")
        assert all(saved[k].abs().max() > 0 for k in saved if k.endswith("lora_B"))
        rank0, rank1 = (load_file(tmp_path / "ranks" / f"rank{i}-{phase}.safetensors") for i in range(2))
        assert_tensors_close(rank0, rank1, 0.0)
        assert_tensors_close({k: v for k, v in saved.items() if k in rank0}, rank0, 0.0)
        assert_reload_is_exact(tmp_path / "run" / phase, rank0)


def torchrun(script_args: list, port: int, nnodes: int = 1, node_rank: int = 0, nproc: int = 2) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port), *script_args]


@pytest.mark.parametrize("state_dict", ["full", "sharded"])
@pytest.mark.parametrize("fsdp", [1, 2])
def test_fsdp_training_saves_a_directory_that_loads_to_the_in_memory_model(fsdp, state_dict, bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "fsdp"
    launch(torchrun([str(REPO / "tests" / "fsdp_worker.py"), "--fsdp", str(fsdp), "--state_dict", state_dict,
                     "--base", bert_dir, "--out", str(out)], free_port()), out)
    ranks_saw(out, 2)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LoraForSequenceClassification"]  # not FSDP2's FSDPLoraForSequenceClassification
    saved = load_file(out / "model" / "model.safetensors")
    assert not any("_fsdp_wrapped_module" in k for k in saved)
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert type(loaded).__name__ == "LoraForSequenceClassification"
    assert sorted(saved) == loaded.adapter_state_keys()  # every LoRA tensor and the new head, nothing else
    assert sum(k.endswith(("lora_A", "lora_B")) for k in saved) == 16  # 2 layers x 4 attention projections x (A, B)
    assert all(saved[k].abs().max() > 0 for k in saved if k.endswith("lora_B"))  # trained
    reference = load_file(out / "in_memory.safetensors")
    with torch.no_grad():
        logits = loaded(input_ids=reference["input_ids"]).logits
    worst = (logits - reference["logits"]).abs().max().item()
    print(f"FSDP{fsdp} {state_dict}: max |logit diff| loaded vs in-memory {worst:.3g}")
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-6)


def test_two_nodes_on_localhost_train_as_one_node(ddp, bert_dir, data, tmp_path):
    """`torchrun --nnodes 2` with one process a node (the Trainer picks the ranks up from torchrun) equals the
    single-node two-process DDP run."""
    port, record = free_port(), tmp_path / "ranks"
    record.mkdir()
    script = [PROBE, RUN, "--use_cpu", "true", "--ddp_backend", "gloo", "--model_name_or_path", bert_dir, *data,
              "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "4", *STEPS]
    nodes = [subprocess.Popen(torchrun(script, port, nnodes=2, node_rank=i, nproc=1), env=env(LORA_HF_RANK_DIR=str(record)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    ranks_saw(record, 2)
    for phase in ("pretrain", "finetune"):
        worst = assert_tensors_close(load_file(tmp_path / "run" / phase / "model.safetensors"),
                                     load_file(ddp / "run" / phase / "model.safetensors"), DDP_TOL)
        print(f"two nodes {phase}: max |diff| against one node {worst:.3g}")


@pytest.mark.parametrize("head", ["sequence-classification", "masked-lm", "causal-lm"])
def test_a_micro_batch_loss_is_its_share_of_the_step_sum_when_the_trainer_passes_num_items(head):
    """The rule behind DDP equality, in one process: with `num_items_in_batch` = N, the loss is the sum of the
    per-label losses of this micro-batch divided by N (labels -100 left out, shifted by one for causal LMs)."""
    import torch.nn.functional as F

    from lora_hf import LoraConfig, LoraForCausalLM, LoraForMaskedLM, LoraForSequenceClassification
    from tiny_backbones import VOCAB, inputs, randomize_adapters, tiny_config

    torch.manual_seed(0)
    if head == "causal-lm":
        model = LoraForCausalLM(LoraConfig(backbone_config=tiny_config("gpt2", dropout=False)))
    elif head == "masked-lm":
        model = LoraForMaskedLM(LoraConfig(backbone_config=tiny_config("bert", dropout=False)))
    else:
        config = tiny_config("bert", dropout=False)
        config.num_labels = 3
        model = LoraForSequenceClassification(LoraConfig(backbone_config=config))
    randomize_adapters(model)
    ids = inputs(batch=3, length=6)
    if head == "sequence-classification":
        labels = torch.tensor([0, 2, 1])
    else:
        labels = ids.clone()
        labels[0, :3] = -100
        labels[2, 4:] = -100
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        loss = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(40)).loss
    if head == "causal-lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    width = 3 if head == "sequence-classification" else VOCAB
    summed = F.cross_entropy(logits.reshape(-1, width), labels.reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, summed / 40, rtol=1e-6, atol=0)
