"""scripts/phase_one.py's statistics: McNemar's exact test and the paired comparison, on hand-made runs."""


import pytest

import train_fixtures


def load_script():
    return train_fixtures.load_script("phase_one")


def test_mcnemar_exact_matches_the_binomial_tail():
    script = load_script()
    assert script.mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # one-sided tail 1/32, doubled
    assert script.mcnemar_exact(3, 3) == 1.0 and script.mcnemar_exact(0, 0) == 1.0
    assert script.mcnemar_exact(95, 136) == pytest.approx(0.0084, abs=1e-4)  # the head warm-up row of docs/phase_one.md


def test_paired_comparison_counts_discordant_snippets_and_per_seed_differences():
    script = load_script()
    gold = ["pos", "neg", "pos", "neg"]
    base = {1: {"test_accuracy": 0.5, "predictions": ["pos", "pos", "neg", "neg"]},
            2: {"test_accuracy": 0.75, "predictions": ["pos", "neg", "neg", "neg"]}}
    variant = {1: {"test_accuracy": 0.75, "predictions": ["pos", "neg", "neg", "neg"]},
               2: {"test_accuracy": 0.5, "predictions": ["pos", "pos", "neg", "neg"]}}
    cmp = script.compare(variant, base, gold)
    assert cmp["diffs"] == pytest.approx([25.0, -25.0]) and cmp["mean_diff"] == pytest.approx(0.0)
    assert (cmp["b"], cmp["c"]) == (1, 1)  # seed 1: the variant alone right on snippet 2; seed 2: the reverse
    assert cmp["ci95"] == pytest.approx(12.706 * 25.0 * 2 ** 0.5 / 2 ** 0.5)  # t(1) x sd / sqrt(2)


def test_a_variant_that_changes_the_finetune_recipe_is_paired_with_that_recipe_alone():
    script = load_script()
    gold = ["pos", "neg", "pos", "neg"]

    def runs(accuracy, predictions):
        return {42: {"test_accuracy": accuracy, "eval_accuracy": accuracy, "predictions": predictions,
                     "pretrain_perplexity": None, "minutes": 1.0, "checkpoint_mb": 0.6}}

    variant, recipe = next(iter(script.PAIRED_WITH.items()))
    results = {script.BASELINE: runs(0.25, ["neg", "pos", "neg", "neg"]),
               recipe: runs(0.5, ["pos", "pos", "neg", "pos"]),
               variant: runs(0.75, ["pos", "neg", "neg", "pos"])}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in script.table(results, gold).splitlines() if line.startswith("| ")}
    assert rows[variant][4] == recipe and rows[variant][5] == "+25.00"  # against its recipe, not +50 against the default's
    assert rows[recipe][4] == script.BASELINE and rows[recipe][5] == "+25.00"
