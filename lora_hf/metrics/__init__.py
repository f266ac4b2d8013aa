"""Metric modules shipped with lora_hf, loaded by local path with `evaluate.load`.

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; these are the
same metrics as `evaluate` modules that live in the package.
"""

from pathlib import Path

import evaluate

METRICS = ("accuracy", "f1", "pearsonr", "spearmanr", "perplexity")


def load_metric(name: str) -> "evaluate.EvaluationModule":
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; lora_hf ships {list(METRICS)}.")
    return evaluate.load(str(Path(__file__).parent / f"{name}.py"))
