"""Model cards, the one-commit push, loading what was pushed, and pipelines.

The Hub is never contacted: `HfApi.create_repo` / `create_commit` are replaced by `FakeHub`, which
keeps the uploaded bytes, and the pushed repo is rebuilt from them on disk. `ModelCard.validate()`
posts the card to the Hub's `/api/validate-yaml`, so it needs the network: the metadata is checked
offline with `lora_hf.hub.check_card_metadata` (YAML round trip, model-index through huggingface_hub's
`EvalResult` parser, Hub id and license forms).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

import lora_hf
from hub_fixtures import REPO, RESULTS, FakeHub, run_without_lora_hf, save_bases, save_run
from lora_hf import LoraForSequenceClassification
from lora_hf.hub import build_model_card, check_card_metadata, hub_base_model, push_to_hub, template_path, write_model_card
from tiny_backbones import ATOL, inputs

TOL = ATOL[torch.float32]  # fp32 outputs of our model against the pushed code's and a pipeline's


@pytest.fixture()
def hub(monkeypatch):
    return FakeHub(monkeypatch)


def logits(model, x=None):
    with torch.no_grad():
        return model(inputs() if x is None else x).logits


# ----- the card ---------------------------------------------------------------------------------
def test_card_metadata_names_base_task_datasets_metrics_license_and_eval_results(run_dir):
    path = write_model_card(run_dir)  # results come from run_record.json
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == "hf-internal-testing/tiny-random-bert"  # the local base's recorded origin
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert set(data["tags"]) == {"lora", "lora_hf", "text-classification"}
    assert data["datasets"] == ["stanfordnlp/sst2"]  # the pretrain data is a description, not a Hub id: body only
    assert data["metrics"] == ["accuracy", "f1", "perplexity"]
    assert data["license"] == "unknown"  # the tiny base has no card to take it from
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "out"
    got = {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert got == {
        ("fill-mask", "movie-reviews-unlabeled-local-text-files", "held-out", "perplexity"): 70.1,
        ("text-classification", "stanfordnlp/sst2", "validation", "accuracy"): 0.8125,
        ("text-classification", "stanfordnlp/sst2", "validation", "f1"): 0.8,
        ("text-classification", "stanfordnlp/sst2", "test", "accuracy"): 0.79,
        ("text-classification", "stanfordnlp/sst2", "test", "f1"): 0.7812,
    }
    check_card_metadata(card)


def test_card_body_describes_the_adapters_both_phases_results_picture_and_three_ways_to_load(run_dir):
    body = build_model_card(run_dir, repo_id="me/tiny-lora").text
    config = json.loads((run_dir / "config.json").read_text())
    for phrase in (
        "LoRA-adapted text classifier",
        "| LoRA rank `r` | 4 |",
        "| `lora_alpha` | 8 (scaling 2) |",
        "| rsLoRA | no: scaling = alpha / r |",
        "`self.query`, `self.value`",  # the auto targets, by their last two name parts
        "(8 layers)",
        "1,234 of 56,789 (2.17%) in the last phase",
        "### Phase 1: pretrain",
        "movie reviews, unlabeled (local text files)",
        "masked language modelling",
        "### Phase 2: finetune",
        "stanfordnlp/sst2",
        "sequence classification, cross-entropy",
        f"**Trainable groups:** {', '.join(config['phase_trainable']['finetune'])}",
        "| batch size per device | 16 |",
        "| optimizer steps | 120 |",
        "| learning rate (highest logged; the configured peak may be higher) | 0.001 |",
        "| finetune | test | accuracy | 0.79 |",
        "| pretrain | held-out | perplexity | 70.1 |",
        "![Training and evaluation loss of each phase](loss_curve.png)",
        'import lora_hf',
        'AutoModelForSequenceClassification.from_pretrained("me/tiny-lora")',
        'AutoModelForSequenceClassification.from_pretrained("me/tiny-lora", trust_remote_code=True)',
        "lora-hf merge me/tiny-lora merged/",
        "base_model_name_or_path=",
        "## Limitations",
    ):
        assert phrase in body, phrase
    assert "test_samples_per_second" not in body and "| finetune | test | samples_per_second" not in body


def test_a_base_without_a_hub_id_stays_out_of_the_metadata_and_the_body_says_why(tmp_path):
    bases = save_bases(tmp_path / "bases", hub_id=None)
    run = save_run(tmp_path / "run", bases["bert"], results=None)
    card = build_model_card(run, license="mit")
    assert "base_model" not in card.data.to_dict()
    assert card.data.license == "mit"
    assert f"loaded from the local directory `{bases['bert']}`, whose config records no Hub id" in card.text
    assert "No evaluation results were recorded" in card.text and "model-index" not in card.data.to_dict()
    check_card_metadata(card)


@pytest.mark.parametrize("name, expected", [
    ("bert-base-uncased", "bert-base-uncased"),
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("/no/such/dir", None),
    ("./relative/dir", None),
    (None, None),
])
def test_hub_base_model_accepts_hub_ids_only(name, expected):
    assert hub_base_model(name)[0] == expected


def test_metadata_check_names_the_bad_field(run_dir):
    card = build_model_card(run_dir)
    card.data.license = "Apache 2"
    with pytest.raises(ValueError, match="`license` 'Apache 2' is not a Hub license id"):
        check_card_metadata(ModelCard(str(card)))
    card.data.license, card.data.base_model = "mit", "/home/me/base"
    with pytest.raises(ValueError, match="`base_model` must be a Hub model id"):
        check_card_metadata(ModelCard(str(card)))


def test_a_full_finetune_directory_gets_no_card_and_no_error(tmp_path, bases):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(bases["bert"], num_labels=2).save_pretrained(tmp_path)
    assert write_model_card(tmp_path, RESULTS) is None
    assert not (tmp_path / "README.md").exists()


def test_a_card_edited_by_hand_is_kept_unless_overwrite_is_asked(run_dir, tmp_path, capsys):
    from lora_hf.cli import main as cli

    mine = tmp_path / "run"
    shutil.copytree(run_dir, mine)
    write_model_card(mine)
    regenerated = (mine / "README.md").read_text()
    assert write_model_card(mine).read_text() == regenerated  # a generated card is simply regenerated
    (mine / "README.md").write_text("# My own card\n")
    with pytest.raises(FileExistsError, match="edited by hand"):
        write_model_card(mine)
    assert cli(["card", str(mine)]) != 0 and "--overwrite" in capsys.readouterr().err
    assert (mine / "README.md").read_text() == "# My own card\n"
    assert cli(["card", str(mine), "--overwrite"]) == 0
    assert (mine / "README.md").read_text() == regenerated


def test_the_template_ships_in_the_wheel_and_renders_from_an_installed_copy(tmp_path, run_dir):
    # Build from a copy: an in-tree build would write build/ and egg-info into the shared checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "tests", "build", "*.egg-info", "__pycache__", ".*"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True, env=env, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("lora_hf-*.whl")
    import zipfile

    assert "lora_hf/model_cards/lora_model_card.md" in zipfile.ZipFile(wheel).namelist()
    # Installed into a folder of its own that this interpreter imports first: a nested venv with
    # --system-site-packages would see the base interpreter's packages, not those of a venv running the tests.
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True, env=env, timeout=300)
    model_dir = tmp_path / "model"
    shutil.copytree(run_dir, model_dir)
    script = textwrap.dedent(f"""
        import json, lora_hf
        from lora_hf.hub import template_path, write_model_card
        path = write_model_card({str(model_dir)!r})
        print(json.dumps({{"module": lora_hf.__file__, "template": str(template_path()), "card": open(path).read()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                          env={**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["module"].startswith(str(site)) and report["template"].startswith(str(site)), report
    assert report["template"].endswith("lora_hf/model_cards/lora_model_card.md")
    assert "base_model: hf-internal-testing/tiny-random-bert" in report["card"] and "### Phase 2: finetune" in report["card"]


def test_a_checkout_finds_the_template_in_the_top_level_folder():
    assert template_path() == REPO / "model_cards" / "lora_model_card.md"


# ----- push -------------------------------------------------------------------------------------
EXPECTED_FILES = {
    "config.json", "model.safetensors", "configuration_lora.py", "lora_layers.py", "checkpoint_lora.py", "loading_lora.py", "phases_lora.py", "modeling_lora.py",
    "README.md", "loss_curve.png", "all_results.json", "run_record.json", "tokenizer.json", "tokenizer_config.json",
}


def test_push_uploads_config_weights_code_card_and_picture_in_one_commit(run_dir, hub):
    push_to_hub(run_dir, "me/tiny-lora", private=True, token="hf_test")
    assert hub.repos == [{"repo_id": "me/tiny-lora", "token": "hf_test", "private": True, "exist_ok": True, "repo_type": "model"}]
    (commit,) = hub.commits
    assert set(commit["files"]) == EXPECTED_FILES
    for name in EXPECTED_FILES - {"README.md"}:
        assert commit["files"][name] == (run_dir / name).read_bytes(), name
    card = ModelCard(commit["files"]["README.md"].decode())
    assert 'from_pretrained("me/tiny-lora", trust_remote_code=True)' in card.text  # rendered for the repo
    assert card.data.model_name == "tiny-lora" and len(hub.validated) == 1


def test_pushed_files_load_with_trust_remote_code_where_lora_hf_is_absent(run_dir, hub, tmp_path):
    push_to_hub(run_dir, "me/tiny-lora")
    folder = hub.write(tmp_path / "repo")
    expected = logits(LoraForSequenceClassification.from_pretrained(run_dir))
    got = run_without_lora_hf(f"""
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print(json.dumps(model(torch.tensor({inputs().tolist()})).logits.tolist()))
    """)
    torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=TOL)


def test_an_adapter_only_repo_whose_base_is_unreachable_names_the_base_and_the_override(run_dir, bases, hub, tmp_path):
    push_to_hub(run_dir, "me/tiny-lora", base_model_id="someone/tiny-base")
    folder = hub.write(tmp_path / "repo")
    assert json.loads((folder / "config.json").read_text())["base_model_name_or_path"] == "someone/tiny-base"
    assert hub_base_model("someone/tiny-base")[0] == ModelCard((folder / "README.md").read_text()).data.base_model
    with pytest.raises(OSError) as caught:  # HF_HUB_OFFLINE=1: the Hub id cannot be fetched
        LoraForSequenceClassification.from_pretrained(folder)
    message = str(caught.value)
    assert "'someone/tiny-base'" in message and 'base_model_name_or_path="/path/to/base"' in message
    model = LoraForSequenceClassification.from_pretrained(folder, base_model_name_or_path=bases["bert"])
    torch.testing.assert_close(logits(model), logits(LoraForSequenceClassification.from_pretrained(run_dir)), rtol=0, atol=0)


def test_model_push_to_hub_saves_the_current_weights_and_takes_the_extras_from_its_directory(run_dir, hub):
    model = LoraForSequenceClassification.from_pretrained(run_dir)
    with torch.no_grad():
        model.backbone.classifier.bias.add_(1.0)  # an edit after loading: the upload must hold it
    model.push_to_hub("me/tiny-lora", private=False, commit_message="edited head", source_dir=run_dir)
    (commit,) = hub.commits
    assert set(commit["files"]) == EXPECTED_FILES and commit["message"] == "edited head"
    assert hub.repos[0]["private"] is False
    from safetensors.torch import load

    saved = load(commit["files"]["model.safetensors"])
    torch.testing.assert_close(saved["backbone.classifier.bias"], model.backbone.classifier.bias.detach())


def test_a_hand_written_card_is_pushed_as_it_is(run_dir, hub, tmp_path):
    own = shutil.copytree(run_dir, tmp_path / "own")
    (own / "README.md").write_text("---\nlicense: mit\n---\n# My words\n")
    push_to_hub(own, "me/tiny-lora")
    assert hub.commits[0]["files"]["README.md"] == b"---\nlicense: mit\n---\n# My words\n"
    assert hub.validated == []


@pytest.mark.parametrize("repo_id", ["a/b/c", "has space/x", "/abs/path", ""])
def test_push_refuses_a_malformed_repo_id_before_any_upload(run_dir, hub, repo_id):
    with pytest.raises(ValueError, match="is not a Hub repo id"):
        push_to_hub(run_dir, repo_id)
    assert hub.repos == [] and hub.commits == []


# ----- pipelines --------------------------------------------------------------------------------
def test_text_classification_pipeline_loads_the_directory_with_lora_hf(run_dir):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(run_dir))
    assert isinstance(classify.model, LoraForSequenceClassification)
    model = LoraForSequenceClassification.from_pretrained(run_dir)
    encoded = classify.tokenizer("w1 w2 w3", return_tensors="pt")
    with torch.no_grad():
        probs = model(**encoded).logits.softmax(-1)[0]
    (best,) = classify("w1 w2 w3")
    assert best["label"] == model.config.id2label[int(probs.argmax())]
    assert best["score"] == pytest.approx(float(probs.max()), abs=TOL)


def test_text_classification_pipeline_with_trust_remote_code_needs_no_lora_hf(run_dir):
    model = LoraForSequenceClassification.from_pretrained(run_dir)
    from transformers import AutoTokenizer

    with torch.no_grad():
        probs = model(**AutoTokenizer.from_pretrained(run_dir)("w4 w5", return_tensors="pt")).logits.softmax(-1)[0]
    best = run_without_lora_hf(f"""
        from transformers import pipeline
        classify = pipeline("text-classification", model={str(run_dir)!r}, trust_remote_code=True)
        print(json.dumps(classify("w4 w5")[0]))
    """)
    assert best["label"] == model.config.id2label[int(probs.argmax())]
    assert best["score"] == pytest.approx(float(probs.max()), abs=TOL)
