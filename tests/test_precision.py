"""The training precision: bf16 autocast by default where the hardware computes bf16 natively, fp32
elsewhere, an explicit flag always winning; weights, adapters and optimizer states stay fp32.

Tolerance: a model trained under bf16 autocast and evaluated under it is compared with its merged
fp32 form in absolute logit terms at ATOL[bf16] = 2e-2 (autocast rounds every matmul input to bf16's
8-bit mantissa; logits of the tiny models are of order one). Merged and unmerged fp32 agree to 1e-5.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from lora_hf import LoraForSequenceClassification
from lora_hf.lora_layers import LoraLinear, lora_layers
from lora_hf.precision import choose_precision, cpu_bf16_flags
from lora_hf.training import main, parse_args
from tiny_backbones import ATOL, inputs
from train_fixtures import save_tiny_bert, sentences, write_csv

AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu avx512_bf16 amx_bf16\n"
OLD_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"


@pytest.fixture()
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)

    return write


def test_the_bf16_flags_are_read_from_cpuinfo(cpuinfo, tmp_path):
    assert cpu_bf16_flags(cpuinfo(AMX_CPUINFO)) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(cpuinfo(OLD_CPUINFO)) == []
    assert cpu_bf16_flags(str(tmp_path / "missing")) == []  # no cpuinfo: no claim of native bf16


def test_default_is_bf16_on_a_native_bf16_cpu_and_fp32_elsewhere(cpuinfo):
    precision, reason = choose_precision(None, use_cpu=True, cpuinfo=cpuinfo(AMX_CPUINFO))
    assert precision == "bf16" and "amx_bf16" in reason
    precision, reason = choose_precision(None, use_cpu=True, cpuinfo=cpuinfo(OLD_CPUINFO))
    assert precision == "fp32" and "neither" in reason


def test_an_explicit_choice_wins_over_the_hardware(cpuinfo):
    assert choose_precision(False, use_cpu=True, cpuinfo=cpuinfo(AMX_CPUINFO)) == ("fp32", "--bf16 false given")
    assert choose_precision(True, use_cpu=True, cpuinfo=cpuinfo(OLD_CPUINFO)) == ("bf16", "--bf16 given")
    assert choose_precision(None, fp16=True, use_cpu=True, cpuinfo=cpuinfo(AMX_CPUINFO)) == ("fp16", "--fp16 given")
    with pytest.raises(ValueError, match="--fp16"):
        choose_precision(True, fp16=True)


def test_the_cli_resolves_the_default_and_honours_bf16_false(tmp_path):
    *_, args, _ = parse_args(["--output_dir", str(tmp_path)])
    expected, _ = choose_precision(None, use_cpu=not torch.cuda.is_available())
    assert args.precision == expected and args.bf16 == (expected == "bf16")
    *_, args, _ = parse_args(["--output_dir", str(tmp_path), "--bf16", "false"])
    assert args.precision == "fp32" and args.bf16 is False and args.precision_reason == "--bf16 false given"
    *_, args, _ = parse_args(["--output_dir", str(tmp_path), "--bf16"])
    assert args.precision == "bf16" and args.bf16 is True


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.mark.parametrize("flag", ["true", "false"])
def test_training_runs_under_the_chosen_precision_with_fp32_master_weights(bert_dir, tmp_path, monkeypatch, capsys, flag):
    rows = sentences(32, seed=1)
    train = write_csv(tmp_path / "train.csv", rows)
    seen = []
    forward = LoraLinear.forward

    def spy(self, x):  # what each LoRA layer sees: the autocast state and its parameters' dtype
        seen.append((torch.is_autocast_enabled("cpu"), self.lora_A.dtype, self.weight.dtype))
        return forward(self, x)

    monkeypatch.setattr(LoraLinear, "forward", spy)
    out = tmp_path / "run"
    code = main(["--model_name_or_path", bert_dir, "--train_file", train, "--validation_file", train, "--output_dir", str(out),
                 "--skip_pretrain", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
                 "--max_seq_length", "16", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--bf16", flag])
    assert code == 0
    bf16 = flag == "true"
    assert seen and {s[0] for s in seen} == {bf16}  # every forward, training and evaluation
    assert {s[1:] for s in seen} == {(torch.float32, torch.float32)}
    printed = capsys.readouterr().out
    assert ("Precision: bf16 autocast" if bf16 else "Precision: fp32") in printed
    results = json.loads((out / "run_record.json").read_text())
    assert results["precision"]["precision"] == ("bf16" if bf16 else "fp32")
    saved = load_file(out / "model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    optimizer = torch.load(out / "finetune" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    states = [t for s in optimizer["state"].values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    assert states and {t.dtype for t in states} == {torch.float32}


def test_merged_fp32_model_equals_the_unmerged_bf16_trained_model(tiny_bases):
    """Train a few steps under bf16 autocast; merged in fp32 the model gives what it gave unmerged under autocast."""
    torch.manual_seed(0)
    model = LoraForSequenceClassification.from_base_model(tiny_bases["bert"], num_labels=2)
    model.set_phase("finetune")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, labels = inputs(batch=8, length=7), torch.tensor([0, 1] * 4)
    for _ in range(5):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(layer.lora_B.abs().max() > 0 for _, layer in lora_layers(model))  # the adapters trained
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trained = model(input_ids=ids).logits.float()
    with torch.no_grad():
        unmerged_fp32 = model(input_ids=ids).logits
        model.merge_adapter()
        merged_fp32 = model(input_ids=ids).logits
    torch.testing.assert_close(merged_fp32, unmerged_fp32, rtol=0, atol=ATOL[torch.float32])
    torch.testing.assert_close(merged_fp32, trained, rtol=0, atol=ATOL[torch.bfloat16])


def test_the_merged_model_in_bf16_serves_a_pipeline_like_the_fp32_one(bert_dir):
    """Inference in bf16: merge, cast the plain model, hand it to `pipeline`; scores within ATOL[bf16] of fp32's."""
    from transformers import AutoTokenizer, pipeline

    from tiny_backbones import randomize_adapters

    torch.manual_seed(0)
    model = LoraForSequenceClassification.from_base_model(bert_dir, num_labels=2)
    randomize_adapters(model)
    merged = model.eval().merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    texts = ["the film was good", "a dull and boring plot", "great acting"]
    fp32 = pipeline("text-classification", model=merged, tokenizer=tokenizer, top_k=None)(texts)
    bf16_model = merged.to(torch.bfloat16)
    assert {p.dtype for p in bf16_model.parameters()} == {torch.bfloat16}
    bf16 = pipeline("text-classification", model=bf16_model, tokenizer=tokenizer, top_k=None)(texts)
    for got, expected in zip(bf16, fp32):
        scores = {d["label"]: d["score"] for d in got}
        assert scores.keys() == {d["label"] for d in expected}
        for d in expected:
            assert abs(scores[d["label"]] - d["score"]) < ATOL[torch.bfloat16], (got, expected)
