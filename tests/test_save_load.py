"""Saving and loading: adapter-only files, self-contained saves, Auto classes, clear refusals, a head switch,
remote code where lora_hf is not installed, real MiniLM, and safetensors only (nothing is unpickled)."""

import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from lora_hf import LoraForMaskedLM, LoraForSequenceClassification, LoraModel
from lora_hf.lora_layers import lora_layers
from tiny_backbones import ATOL, BACKBONES, CHECKPOINT_NAMES, inputs, minilm_path, embeddings_in_pretrain, randomize_adapters, read_json, run_without_lora_hf, task_classes, tiny_config

CODE_FILES = ["configuration_lora.py", "lora_layers.py", "checkpoint_lora.py", "loading_lora.py", "phases_lora.py", "modeling_lora.py"]


def saved_keys(directory):
    with safe_open(directory / "model.safetensors", "pt") as f:
        return set(f.keys())


def trained(model, seed=0):
    """Adapters with values, and a changed head: what a finetune phase leaves behind."""
    randomize_adapters(model, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_" not in name:
                param.add_(0.1)
    return model.eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_adapter_save_holds_only_non_base_tensors_and_auto_reload_is_identical(tiny_bases, name, tmp_path):
    auto, lora_class = task_classes(name)
    model = trained(lora_class.from_base_model(tiny_bases[name], r=4))
    model.save_pretrained(tmp_path)
    generation = ["generation_config.json"] if model.can_generate() else []  # as transformers saves a generative model
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", "model.safetensors"] + CODE_FILES + generation)
    config = read_json(tmp_path / "config.json")
    assert config["model_type"] == "lora" and config["base_model_name_or_path"] == tiny_bases[name]
    assert config["architectures"] == [lora_class.__name__]
    assert config["auto_map"]["AutoConfig"] == "configuration_lora.LoraConfig"
    assert config["auto_map"][auto.__name__] == f"modeling_lora.{lora_class.__name__}"
    head = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    # Saved under the names the backbone's own checkpoints use (GPT-NeoX's LM head is `embed_out` there).
    expected = {CHECKPOINT_NAMES.get(name, {}).get(k, k) for k in lora | head}
    assert lora and saved_keys(tmp_path) == expected  # head: empty for GPT-2, whose LM head is the tied wte
    reloaded = auto.from_pretrained(tmp_path)
    assert type(reloaded) is lora_class
    assert reloaded.name_or_path == str(tmp_path)  # as transformers records it; cards and push read it
    x = inputs()
    assert torch.equal(reloaded(x).logits, model(x).logits)


def test_save_base_is_self_contained_and_loads_after_the_base_is_deleted(tiny_bases, tmp_path):
    shutil.copytree(tiny_bases["gpt2"], tmp_path / "base")
    auto, lora_class = task_classes("gpt2")
    model = trained(lora_class.from_base_model(str(tmp_path / "base"), r=2))
    model.save_pretrained(tmp_path / "full", save_base=True)
    assert saved_keys(tmp_path / "full") == {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers() if n in model.state_dict()}
    shutil.rmtree(tmp_path / "base")
    reloaded = auto.from_pretrained(tmp_path / "full")
    x = inputs()
    assert torch.equal(reloaded(x).logits, model(x).logits)


@pytest.mark.parametrize("save_base", [False, True])
def test_saving_a_merged_model_saves_the_unmerged_weights(tiny_bases, tmp_path, save_base):
    """The file holds W and B @ A apart; a merged W would get the update added a second time on load."""
    _, lora_class = task_classes("bert")
    phases = {"finetune": ["lora", "head", "attention"]}  # the merged weights themselves are saved too
    model = trained(lora_class.from_base_model(tiny_bases["bert"], r=2, phase_trainable=phases))
    x = inputs()
    expected = model(x).logits
    model.merge_adapter()
    model.save_pretrained(tmp_path, save_base=save_base)
    assert all(layer.merged for _, layer in lora_layers(model))  # saving leaves the model as it was
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded(x).logits, expected, rtol=0, atol=ATOL[torch.float32])


def test_missing_tensors_are_refused_by_name(tiny_bases, tmp_path):
    model = LoraForSequenceClassification.from_base_model(tiny_bases["bert"], r=2)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = "backbone.bert.encoder.layer.1.attention.self.value.lora_B"
    del state[dropped]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt", "lora_hf_format": "adapter", "base_prefix": "bert"})
    with pytest.raises(ValueError, match="lacks tensors") as err:
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert dropped in str(err.value)


def test_unexpected_and_misshapen_tensors_are_refused_by_name(tiny_bases, tmp_path):
    model = LoraForSequenceClassification.from_base_model(tiny_bases["bert"], r=2)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["backbone.bert.encoder.layer.0.attention.self.query.lora_C"] = torch.zeros(2, 32)
    key = "backbone.bert.encoder.layer.0.attention.self.key.lora_A"
    state[key] = torch.zeros(3, 32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt", "lora_hf_format": "adapter", "base_prefix": "bert"})
    with pytest.raises(ValueError, match="does not fit LoraForSequenceClassification") as err:
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    message = str(err.value)
    assert "unexpected tensors ['backbone.bert.encoder.layer.0.attention.self.query.lora_C']" in message
    assert f"{key}: saved (3, 32), model (2, 32)" in message


@pytest.mark.parametrize("save_base", [False, True])
def test_a_masked_lm_save_loads_into_sequence_classification_with_its_adapters_and_embeddings_and_a_new_head(tmp_path, save_base):
    """The new head, and BERT's pooler that a masked LM never had, start fresh; both travel with later saves."""
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(tiny_config("bert")).save_pretrained(tmp_path / "base")
    mlm = LoraForMaskedLM.from_base_model(str(tmp_path / "base"), r=2, phase_trainable=embeddings_in_pretrain())
    mlm.set_phase("pretrain")
    trained(mlm)
    mlm.save_pretrained(tmp_path / "pretrained", save_base=save_base)
    assert any("word_embeddings" in k for k in saved_keys(tmp_path / "pretrained"))

    classifier = LoraForSequenceClassification.from_pretrained(tmp_path / "pretrained")
    ours = classifier.state_dict()
    for key, value in mlm.state_dict().items():
        if "lora_" in key or "embeddings" in key:
            assert torch.equal(ours[key], value), key
    assert classifier.config.architectures == ["LoraForSequenceClassification"]
    fresh = {f"backbone.{m}.{p}" for m in ("classifier", "bert.pooler.dense") for p in ("weight", "bias")}
    assert fresh <= set(classifier.newly_initialized_keys)
    classifier.set_phase("finetune")
    assert {n for n, p in classifier.named_parameters() if p.requires_grad and "lora_" not in n} == {"backbone.classifier.weight", "backbone.classifier.bias"}
    x = inputs()
    assert classifier(x).logits.shape == (2, 2)
    classifier.save_pretrained(tmp_path / "classifier")  # the new head and the embeddings travel with it
    assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier")(x).logits, classifier.eval()(x).logits)


def test_trust_remote_code_loads_where_lora_hf_is_not_importable(tiny_bases, tmp_path):
    """One lora_hf-free interpreter loads a classifier and a causal LM from their saved code and runs them."""
    classifier = trained(LoraForSequenceClassification.from_base_model(tiny_bases["roberta"], r=4))
    classifier.save_pretrained(tmp_path / "classifier")
    causal_lm = trained(task_classes("gpt2")[1].from_base_model(tiny_bases["gpt2"], r=2))
    causal_lm.save_pretrained(tmp_path / "causal_lm")
    x = inputs()
    child = run_without_lora_hf(f"""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        classifier = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "classifier")!r}, trust_remote_code=True)
        causal_lm = AutoModelForCausalLM.from_pretrained({str(tmp_path / "causal_lm")!r}, trust_remote_code=True)
        for model, name in ((classifier, "LoraForSequenceClassification"), (causal_lm, "LoraForCausalLM")):
            assert type(model).__name__ == name and type(model).__module__.startswith("transformers_modules."), type(model)
        x = torch.tensor({x.tolist()})
        generated = causal_lm.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False, pad_token_id=0)
        save_file({{"logits": classifier(x).logits.contiguous(), "generated": generated.contiguous()}}, OUT)
    """, tmp_path)
    assert torch.equal(child["logits"], classifier(x).logits)
    expected = causal_lm.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert expected.shape == (2, 12) and torch.equal(child["generated"], expected)


def test_loading_unpickles_nothing(tiny_bases, tmp_path, monkeypatch):
    model = trained(LoraForSequenceClassification.from_base_model(tiny_bases["bert"], r=2))
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "full", save_base=True)
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    x = inputs()
    for directory in ("adapter", "full"):
        assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path / directory)(x).logits, model(x).logits)


def test_real_minilm_steps_from_its_base_and_its_adapter_file_is_under_1_mb(tmp_path):
    path = minilm_path()
    plain = AutoModel.from_pretrained(path).eval()
    bare = LoraModel.from_base_model(path, r=8, target_modules=["query", "value"]).eval()
    x = torch.tensor([[101, 7592, 2088, 2003, 2307, 102]])
    assert torch.equal(bare(x).last_hidden_state, plain(x).last_hidden_state)

    model = trained(LoraForSequenceClassification.from_base_model(path, r=8, target_modules=["query", "value"], num_labels=2))
    assert len(model.lora_module_names) == 12
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 1_000_000
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert torch.equal(reloaded(x).logits, model(x).logits)


def test_gpt_neox_saves_its_lm_head_under_the_checkpoint_name_and_live_names_still_load(tiny_bases, tmp_path):
    """transformers saves GPT-NeoX's `lm_head` as `embed_out` (its conversion mapping); lora_hf does the same, and a
    file with the live name (as lora_hf 0.1.0 wrote it) loads to the same model."""
    from safetensors.torch import load_file, save_file

    auto, lora_class = task_classes("gpt_neox")
    model = trained(lora_class.from_base_model(tiny_bases["gpt_neox"], r=4))
    model.save_pretrained(tmp_path / "new")
    keys = saved_keys(tmp_path / "new")
    assert "backbone.embed_out.weight" in keys and "backbone.lm_head.weight" not in keys
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    with safe_open(tmp_path / "new" / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    tensors = load_file(tmp_path / "new" / "model.safetensors")
    tensors["backbone.lm_head.weight"] = tensors.pop("backbone.embed_out.weight")
    save_file(tensors, tmp_path / "old" / "model.safetensors", metadata=metadata)
    x = inputs()
    for directory in ("new", "old"):
        assert torch.equal(auto.from_pretrained(tmp_path / directory)(x).logits, model(x).logits), directory
