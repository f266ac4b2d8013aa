"""The pretrain phase's options (issue: phase 1 must earn its place): task-adaptive text, a head warm-up, and a
masked-LM step that projects only the masked positions onto the vocabulary."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lora_hf
from lora_hf.training import main
from tiny_backbones import ATOL, inputs
from train_fixtures import FAST, sentences, write_csv, write_jsonl

FAST = [*FAST, "--bf16", "false"]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return ["--train_file", write_csv(root / "train.csv", sentences(40, seed=1)),
            "--validation_file", write_csv(root / "dev.csv", sentences(16, seed=2))]


def pretrain_only(bert_dir, task_files, out, *flags):
    return main(["--model_name_or_path", bert_dir, *task_files, "--output_dir", str(out), "--skip_finetune", *FAST, *flags])


def test_head_warm_up_trains_the_head_alone_for_its_steps_then_the_adapters(bert_dir, task_files, tmp_path):
    base = load_file(f"{bert_dir}/model.safetensors")
    head_key = "cls.predictions.transform.dense.weight"
    for steps, warm_up in ((2, 2), (3, 1)):
        out = tmp_path / f"warm{warm_up}-{steps}"
        assert pretrain_only(bert_dir, task_files, out, "--pretrain_trainable", "lora", "head",
                             "--pretrain_max_steps", str(steps), "--pretrain_head_warmup_steps", str(warm_up)) == 0
        saved = load_file(out / "pretrain" / "model.safetensors")
        lora_b = [saved[k] for k in saved if k.endswith("lora_B")]
        head = next(v for k, v in saved.items() if k.endswith(head_key))
        assert not torch.equal(head, base[head_key])  # the head trained from the first step
        moved = max(b.abs().max().item() for b in lora_b)
        if steps == warm_up:
            assert moved == 0.0  # B starts at zero and had no step: the adapters waited for the head
        else:
            assert moved > 0.0


def test_pretrain_on_task_text_reads_the_training_split(bert_dir, task_files, tmp_path):
    out = tmp_path / "tapt"
    assert pretrain_only(bert_dir, task_files, out, "--pretrain_on_task_text", "--pretrain_max_steps", "1",
                         "--pretrain_eval_samples", "4") == 0
    record = json.loads((out / "run_record.json").read_text())
    assert record["hyperparameters"]["pretrain"]["texts (train + held out)"] == "36 + 4"  # the 40 training rows
    assert record["datasets"]["pretrain"] == "the finetune training text (train.csv)"


def test_pretrain_on_task_text_with_other_pretrain_data_is_refused_before_any_work(bert_dir, task_files, tmp_path, capsys):
    texts = write_jsonl(tmp_path / "more.jsonl", [{"text": "a plain sentence"}])
    out = tmp_path / "refused"
    assert pretrain_only(bert_dir, task_files, out, "--pretrain_on_task_text", "--pretrain_files", texts) == 2
    err = capsys.readouterr().err
    assert "`--pretrain_on_task_text`" in err and "`--pretrain_files`" in err
    assert not out.exists()


def test_negative_head_warm_up_is_refused(bert_dir, task_files, tmp_path, capsys):
    assert pretrain_only(bert_dir, task_files, tmp_path / "neg", "--pretrain_head_warmup_steps", "-1") == 2
    assert "`--pretrain_head_warmup_steps` must be >= 0, got -1" in capsys.readouterr().err


def test_masked_lm_training_step_projects_only_masked_positions_with_the_same_loss_and_gradients(bert_dir):
    model = lora_hf.LoraForMaskedLM.from_base_model(bert_dir, r=4, phase_trainable={"pretrain": ["lora", "embeddings", "head"],
                                                                                    "finetune": ["lora"]})
    model.set_phase("pretrain")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(std=0.1)
    for module in model.modules():  # the two paths must see the same (no) dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = inputs(batch=3, length=12)
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    model.train()
    fast = model(input_ids=ids, labels=labels)
    fast.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full = model.backbone(input_ids=ids, labels=labels)
    full.loss.backward()
    assert fast.logits.shape == (int(labels.ne(-100).sum()), model.config.vocab_size)
    assert full.logits.shape == (*ids.shape, model.config.vocab_size)
    torch.testing.assert_close(fast.loss, full.loss, rtol=0, atol=ATOL[torch.float32])
    assert set(fast_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=1e-4, atol=ATOL[torch.float32])
    model.eval()  # evaluation (perplexity, fill-mask) keeps the full logits
    assert model(input_ids=ids, labels=labels).logits.shape == (*ids.shape, model.config.vocab_size)
