#!/usr/bin/env python
"""What the pretrain phase gives on the default task (MiniLM + VADER movie snippets), measured paired.

    python scripts/phase_one.py --output_dir runs/phase_one [--seeds 42 43 44] [--variants NAME ...] [--doc docs/phase_one.md README.md]

Every variant is one `lora-hf train` run per seed with the same finetune recipe (the defaults); only
phase 1 differs. Each is compared with the finetune-only run of the same seed (and of the same finetune
recipe, where a variant changes it: PAIRED_WITH): the per-seed
difference in test accuracy, their mean with a t interval, and McNemar's exact test on the
test snippets (pooled over seeds: the discordant pairs, one run right and the other wrong).
Finished runs are read, not retrained, so the script can be stopped and started again; the
table goes between the `phase-one` markers of docs/phase_one.md and the README.
"""

import argparse
import functools
import json
import math
import platform
import re
import sys
from pathlib import Path

import torch

from lora_hf.checkpoint_lora import WEIGHTS_NAME
from lora_hf.data import vader_task
from lora_hf.run_dir import PREDICTIONS_NAME, RECORD_NAME
from lora_hf.training import main as train

BASELINE = "finetune only"
# name -> flags. Phase 1 reads 5,000 texts unless a flag says otherwise (the default run's sample).
VARIANTS = {
    BASELINE: ["--skip_pretrain"],
    "task text; LoRA": ["--pretrain_on_task_text", "--pretrain_trainable", "lora"],
    "all VADER corpora; LoRA": ["--pretrain_trainable", "lora"],
    "task text; head warm-up 50 steps, then LoRA": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "--pretrain_head_warmup_steps", "50"],
    "task text; LoRA + norms": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "norm"],
    "task text; LoRA, merged between phases": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "--merge_between_phases"],
    "task text; LoRA + embeddings": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "embeddings"],
    "task text; LoRA, every text, 2 epochs": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "--max_pretrain_samples", "100000",
                                              "--pretrain_num_train_epochs", "2"],
    "task text; LoRA, masking 30%": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "--mlm_probability", "0.3"],
    "finetune only, warm-up 6%": ["--skip_pretrain", "--warmup_steps", "0.06"],
    "task text; LoRA, every text, 2 epochs, warm-up 6%": ["--pretrain_on_task_text", "--pretrain_trainable", "lora", "--max_pretrain_samples", "100000",
                                                          "--pretrain_num_train_epochs", "2", "--warmup_steps", "0.06"],
    "finetune only, learning rate 1e-3": ["--skip_pretrain", "--learning_rate", "1e-3"],
    "task text; LoRA, every text, 2 epochs, finetune learning rate 1e-3": [
        "--pretrain_on_task_text", "--pretrain_trainable", "lora", "--max_pretrain_samples", "100000", "--pretrain_num_train_epochs", "2",
        "--learning_rate", "1e-3", "--pretrain_learning_rate", "2e-3"],
}
# A variant that changes the finetune recipe too is paired with the finetune-only run of that recipe.
PAIRED_WITH = {"task text; LoRA, every text, 2 epochs, warm-up 6%": "finetune only, warm-up 6%",
               "task text; LoRA, every text, 2 epochs, finetune learning rate 1e-3": "finetune only, learning rate 1e-3"}
START, END = "<!-- phase-one:start -->", "<!-- phase-one:end -->"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # two-sided 95% t quantiles by degrees of freedom


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(out: Path, flags: list, seed: int, extra: list) -> dict:
    if not (out / RECORD_NAME).is_file():
        code = train(["--output_dir", str(out), "--seed", str(seed), "--do_predict", "--overwrite_output_dir", *flags, *extra])
        if code != 0:
            raise SystemExit(f"training into {out} failed with exit code {code}")
    record = json.loads((out / RECORD_NAME).read_text())
    predictions = [line.split("\t")[1] for line in (out / "finetune" / PREDICTIONS_NAME).read_text().splitlines()[1:]]
    predictions = in_test_order(predictions, seed, record["finetune"]["test_accuracy"])
    phases = ("pretrain", "finetune")
    return {
        "test_accuracy": record["finetune"]["test_accuracy"],
        "eval_accuracy": record["finetune"]["eval_accuracy"],
        "pretrain_perplexity": record.get("pretrain", {}).get("eval_perplexity"),
        "minutes": record["wall_seconds"] / 60,
        "train_minutes": sum(record.get(p, {}).get("train_wall_seconds", 0.0) for p in phases) / 60,
        "checkpoint_mb": (out / WEIGHTS_NAME).stat().st_size / 1e6,
        "predictions": predictions,
    }


@functools.lru_cache(maxsize=1)  # read once: every run's predictions are checked against it
def gold_labels() -> tuple:
    test = vader_task()[1]["test"]
    return tuple(str(label) for label in test.features["label"].int2str(test["label"]))


def in_test_order(predictions: list, seed: int, test_accuracy: float) -> list:
    """The predictions in the test file's order, checked against the run's recorded accuracy.

    Runs made before lora_hf's fix wrote them in the order of transformers 5's length-grouped evaluation
    batches (seeded by the run's seed): that order is rebuilt here, and accepted only if it gives the
    accuracy the run recorded, exactly.
    """
    gold = gold_labels()
    accuracy = lambda rows: sum(p == g for p, g in zip(rows, gold)) / len(gold)  # noqa: E731
    if abs(accuracy(predictions) - test_accuracy) < 1e-9:
        return predictions
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lora_hf.training import default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    lengths = [len(ids) for ids in tokenizer(list(vader_task()[1]["test"]["text"]), truncation=True, max_length=128)["input_ids"]]
    order = list(LengthGroupedSampler(64, lengths=lengths, generator=torch.Generator().manual_seed(seed)))
    restored = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = predictions[position]
    if abs(accuracy(restored) - test_accuracy) >= 1e-9:
        raise SystemExit(f"predictions of seed {seed} match neither the file order nor the length-grouped order")
    return restored


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c are the discordant counts (variant right only, baseline right only)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(variant: dict, baseline: dict, gold: list) -> dict:
    seeds = sorted(set(variant) & set(baseline))
    diffs = [100 * (variant[s]["test_accuracy"] - baseline[s]["test_accuracy"]) for s in seeds]
    b = c = 0
    for s in seeds:
        for v, f, g in zip(variant[s]["predictions"], baseline[s]["predictions"], gold):
            b += v == g and f != g
            c += f == g and v != g
    mean = sum(diffs) / len(diffs) if diffs else float("nan")
    half = float("nan")
    if len(diffs) > 1:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        half = T95[len(diffs) - 1] * sd / math.sqrt(len(diffs))
    return {"seeds": seeds, "diffs": diffs, "mean_diff": mean, "ci95": half, "b": b, "c": c, "p_mcnemar": mcnemar_exact(b, c)}


def mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(results: dict, gold: list) -> str:
    lines = [
        f"Measured with `python scripts/phase_one.py` on {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}, "
        f"torch {torch.__version__}; test set {len(gold):,} snippets. Difference: variant minus the run in \"paired with\" on the same seed, "
        "in points of test accuracy (per seed, then mean ± 95% t half-width); McNemar: exact two-sided p on the "
        "discordant test predictions pooled over the seeds (variant right only / paired run right only).",
        "",
        "| variant | seeds | test | validation | paired with | difference per seed | mean difference | McNemar (b/c, p) | phase-1 perplexity | whole run | final checkpoint |",
        "|---|---|---:|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        seeds = sorted(runs)
        row = [name, ", ".join(map(str, seeds)),
               f"{100 * mean([runs[s]['test_accuracy'] for s in seeds]):.2f}%", f"{100 * mean([runs[s]['eval_accuracy'] for s in seeds]):.2f}%"]
        if name == BASELINE:
            row += ["—", "—", "—", "—"]
        else:
            paired = PAIRED_WITH.get(name, BASELINE)
            cmp = compare(runs, results.get(paired, {}), gold)
            row += [paired, " / ".join(f"{d:+.2f}" for d in cmp["diffs"]) or "—",
                    (f"{cmp['mean_diff']:+.2f} ± {cmp['ci95']:.2f}" if len(cmp["diffs"]) > 1 else f"{cmp['mean_diff']:+.2f} (one seed)")
                    if cmp["diffs"] else "—",
                    f"{cmp['b']}/{cmp['c']}, p={cmp['p_mcnemar']:.2f}" if cmp["diffs"] else "—"]
        ppl = [runs[s]["pretrain_perplexity"] for s in seeds if runs[s]["pretrain_perplexity"] is not None]
        row += [f"{mean(ppl):.0f}" if ppl else "—", f"{mean([runs[s]['minutes'] for s in seeds]):.1f} min",
                f"{mean([runs[s]['checkpoint_mb'] for s in seeds]):.2f} MB"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/phase_one")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"Names from: {list(VARIANTS)}")
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--doc", nargs="+", default=[str(root / "docs" / "phase_one.md"), str(root / "README.md")],
                        help="Files whose `phase-one` markers get the table.")
    parser.add_argument("--only_report", action="store_true", help="Train nothing: tabulate the runs already finished.")
    parser.add_argument("extra", nargs="*", help="Flags passed to every run (after --).")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants {unknown} unknown; choose from {list(VARIANTS)}")
    out = Path(args.output_dir)
    gold = gold_labels()
    results = {}
    baselines = [BASELINE] + [PAIRED_WITH[v] for v in args.variants if v in PAIRED_WITH]
    for name in dict.fromkeys(baselines + args.variants):  # baselines first, each once
        results[name] = {}
        for seed in args.seeds:
            run_dir = out / slug(name) / f"seed{seed}"
            # Unlisted (the baseline), or --only_report: read what is finished, train nothing.
            if (args.only_report or name not in args.variants) and not (run_dir / RECORD_NAME).is_file():
                continue
            results[name][seed] = run(run_dir, VARIANTS[name], seed, args.extra)
            print(f"{name}, seed {seed}: test {results[name][seed]['test_accuracy']:.4f}", flush=True)
    text = table(results, gold)
    print(text)
    summary = {name: {seed: {k: v for k, v in r.items() if k != "predictions"} for seed, r in runs.items()} for name, runs in results.items()}
    (out / "phase_one.json").write_text(json.dumps(summary, indent=2))
    for doc in map(Path, args.doc):
        content = doc.read_text() if doc.is_file() else ""
        if START in content and END in content:
            content = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{text}\n{END}", content, flags=re.S)
            doc.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
