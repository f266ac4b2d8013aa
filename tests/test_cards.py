"""Cards and pictures say what happened: phases as run, label names, a pipeline example that runs, the base's
real Hub id, epochs as run, learning rates that agree with the configuration, and a one-point loss that shows."""

import json
import shutil


from hub_fixtures import RESULTS, classifier
from lora_hf.cli import main as cli
from lora_hf.hub import build_model_card, hub_base_model
from lora_hf.training import default_base_model, plot_loss_curves

LABELS = {0: "negative", 1: "neutral", 2: "positive"}



def phase_section(card: str, number: int) -> str:
    return card.split(f"### Phase {number}: ")[1].split("\n## ")[0].split("### Phase")[0]


def test_a_model_trained_with_a_plain_trainer_gets_its_finetune_phase_and_data(bases, tmp_path, capsys):
    model = classifier(bases["bert"], id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model.set_phase("finetune")  # what a plain Trainer run does before training; no run_record.json, no phase folders
    model.save_pretrained(tmp_path / "plain")
    assert cli(["card", str(tmp_path / "plain"), "--finetune_dataset", "stanfordnlp/sst2"]) == 0, capsys.readouterr().err
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "Not run" in phase_section(card, 1)  # nothing says a pretrain phase ran
    finetune = phase_section(card, 2)
    assert "Not run" not in finetune and "- **Data:** stanfordnlp/sst2" in finetune
    assert "- stanfordnlp/sst2" in card.split("---")[1]  # in the metadata too
    assert "| Labels | negative, neutral, positive |" in card


def test_the_cards_pipeline_example_runs_and_names_a_label(run_dir, tmp_path):
    model_dir = shutil.copytree(run_dir, tmp_path / "model")
    card = str(build_model_card(model_dir))
    code = card.split("As a `pipeline`:")[1].split("```python\n")[1].split("```")[0]
    assert f'pipeline("text-classification", model="{model_dir}")' in code
    printed = []
    exec(code, {"print": printed.append})  # the example as a reader would paste it
    (prediction,) = printed[0]
    assert prediction["label"] in LABELS.values() and 0.0 < prediction["score"] <= 1.0


def test_epochs_are_shown_as_run_and_learning_rates_agree_with_the_configuration(run_dir, tmp_path):
    model_dir = shutil.copytree(run_dir, tmp_path / "model")
    history = [{"step": s, "loss": 1.0 / s, "learning_rate": 9e-4 * min(1.0, s / 20)} for s in range(10, 101, 10)]
    state = {"global_step": 100, "num_train_epochs": 2, "epoch": 1.1111, "train_batch_size": 16, "log_history": history}
    (model_dir / "finetune" / "trainer_state.json").write_text(json.dumps(state))
    record = {**RESULTS, "hyperparameters": {"finetune": {"learning rate: adapters, new tensors": 1e-3}}}
    card = str(build_model_card(model_dir, record))
    finetune = phase_section(card, 2)
    assert "| epochs | 1.11 |" in finetune  # --max_steps stopped the run before its 2 epochs
    assert "| learning rate: adapters, new tensors | 0.001 |" in finetune and "highest logged" not in finetune

    # No configured rate recorded (a plain Trainer): the logged maximum, labelled for what it is.
    card = str(build_model_card(model_dir, RESULTS))
    assert "| learning rate (highest logged; the configured peak may be higher) | 0.0009 |" in phase_section(card, 2)


def test_the_default_base_is_named_by_its_real_hub_id():
    hub_id, note = hub_base_model(default_base_model())
    assert hub_id == "sentence-transformers/all-MiniLM-L6-v2"  # not the stale _name_or_path nreimers/MiniLM-L6-H384-uncased
    assert "README" in note


def test_a_local_base_without_a_readme_keeps_its_recorded_origin(bases):
    assert hub_base_model(bases["bert"])[0] == "hf-internal-testing/tiny-random-bert"


def test_a_loss_series_of_one_point_is_drawn_as_a_marker(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    lines = []
    original = Axes.plot

    def spy(self, *args, **kwargs):
        drawn = original(self, *args, **kwargs)
        lines.extend(drawn)
        return drawn

    monkeypatch.setattr(Axes, "plot", spy)
    plot_loss_curves({"finetune": [{"step": 1, "loss": 0.7}]}, tmp_path / "one.png")
    (line,) = lines
    assert line.get_marker() not in (None, "None", "", " ") and len(line.get_xdata()) == 1
    assert (tmp_path / "one.png").stat().st_size > 1000
    lines.clear()
    plot_loss_curves({"finetune": [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]}, tmp_path / "three.png")
    assert [line.get_marker() for line in lines] == ["None"]  # a series of points stays a plain line
