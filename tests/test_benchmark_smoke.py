"""`scripts/benchmark.py --quick` runs end to end and reports every system and figure.

A smoke test of the harness on tiny random backbones, not a timing test: it never asserts a
speed, only that the JSON is complete and well formed and that the systems compare like with
like (same trainable parameters for both LoRAs, the same step-0 loss for every system).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
PRECISION_SYSTEMS = {f"{s}_{p}" for s in ("lora_hf", "peft", "floor") for p in ("bf16", "bf16base")}
TRAIN_SYSTEMS = {"lora_hf", "peft", "lora_hf_dropout", "peft_dropout", "full_ft", "floor"} | PRECISION_SYSTEMS
INFERENCE_SYSTEMS = {"lora_hf_unmerged", "lora_hf_merged", "peft_unmerged", "base", "lora_hf_merged_bf16", "lora_hf_merged_bf16weights"}
LOAD_SYSTEMS = {"lora_hf_adapter", "peft_adapter", "base"}
CHECKPOINTS = {"lora_hf_adapter", "lora_hf_full", "peft_adapter", "full_ft"}
RATIOS = {
    "step lora_hf / peft (dropout 0)",
    "step lora_hf / peft (dropout p)",
    "step lora_hf / floor",
    "step lora_hf / full_ft",
    "inference merged / base",
    "inference unmerged / base",
    "peak memory lora_hf / peft (dropout 0)",
    "peak memory lora_hf / peft (dropout p)",
    "checkpoint adapter / full",
    "load adapter / base alone",
    "step lora_hf bf16 / peft fp32",
    "step lora_hf bf16 / floor bf16",
    "step lora_hf bf16base / floor bf16base",
    "inference merged bf16 autocast / base fp32",
    "inference merged bf16 weights / base fp32",
}


def _timing(t: dict) -> None:
    assert t["min"] <= t["median"] <= t["max"] and t["min"] > 0
    assert len(t["all"]) == 2  # --quick: 2 repetitions


def test_quick_benchmark_reports_every_system_and_figure(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # The run takes well under a minute; the timeout only guards against a hang on a loaded machine.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert {"command", "machine", "versions", "settings"} <= set(report)
    assert set(report["backbones"]) == {"tiny-bert", "tiny-gpt2"}
    for name, b in report["backbones"].items():
        assert set(b["train"]) == TRAIN_SYSTEMS, name
        for t in b["train"].values():
            _timing(t["step_s"])
            assert t["tokens_per_s"] > 0 and 0 <= t["trainable_params"] <= t["total_params"]
        assert b["train"]["lora_hf"]["trainable_params"] == b["train"]["peft"]["trainable_params"] > 0
        assert b["train"]["floor"]["trainable_params"] == 0
        assert b["train"]["full_ft"]["trainable_params"] == b["train"]["full_ft"]["total_params"]
        assert b["step0_loss_spread"] < 1e-5  # every dropout-free system is the base model at step 0
        assert set(b["memory"]) == TRAIN_SYSTEMS and all(m["peak_bytes"] > 0 for m in b["memory"].values())
        assert set(b["inference"]) == INFERENCE_SYSTEMS
        for t in b["inference"].values():
            _timing(t["latency_s"])
        assert b["merged_max_abs_diff"] < 1e-4
        # bf16 rounds each matmul input to an 8-bit mantissa: close to the fp32 merged logits, not equal
        for key in ("merged_bf16_autocast_max_abs_diff", "merged_bf16_weights_max_abs_diff"):
            assert 0 < b[key] < 0.1, (key, b[key])
        # the precision systems are the same model at step 0, up to bf16 rounding
        for system in PRECISION_SYSTEMS:
            assert abs(b["train"][system]["first_loss"] - b["train"][system.split("_bf16")[0]]["first_loss"]) < 0.05, system
        assert b["train"]["lora_hf_bf16base"]["trainable_params"] == b["train"]["lora_hf"]["trainable_params"]
        assert set(b["checkpoint"]) == CHECKPOINTS
        assert b["checkpoint"]["lora_hf_adapter"]["weights_bytes"] < b["checkpoint"]["lora_hf_full"]["weights_bytes"]
        assert set(b["load"]) == LOAD_SYSTEMS
        assert RATIOS <= set(b["ratios"])
        for label, r in b["ratios"].items():
            assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("median", "min", "max")), label
            assert r["met"] in (True, False, None), label
    e2e = report["end_to_end"]
    assert e2e["steps"] == 3 and set(e2e["runs"]) == {"lora_hf_default", "peft_trainer_defaults"}
    for runs in e2e["runs"].values():
        assert len(runs) == 1 and all(r["train_runtime_s"] > 0 and r["samples_per_s"] > 0 and r["peak_bytes"] > 0 for r in runs)
    assert {r["precision"] for r in e2e["runs"]["peft_trainer_defaults"]} == {"fp32"}
    assert {r["precision"] for r in e2e["runs"]["lora_hf_default"]} <= {"bf16", "fp32"}  # whatever this machine's default is
    for label, r in e2e["ratios"].items():
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("median", "min", "max")), label
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "End to end" in markdown and "step lora_hf bf16 / peft fp32" in markdown
    assert "step lora_hf / peft (dropout 0)" in markdown and "tiny-gpt2" in markdown
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
