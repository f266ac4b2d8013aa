"""Perplexity of a language model from its mean token losses: exp of the token-weighted mean loss.

`predictions` are mean cross-entropy losses (nats) of batches, `references` their token counts
(use 1 each for an already averaged loss such as the Trainer's `eval_loss`).
"""

import math

import datasets
import evaluate


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exp(mean token cross-entropy).",
            citation="",
            inputs_description="predictions: mean losses; references: token counts (weights)",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        total = sum(references)
        mean = sum(loss * n for loss, n in zip(predictions, references)) / total
        return {"perplexity": math.exp(mean)}
