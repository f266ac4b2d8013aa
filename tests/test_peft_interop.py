"""Leaving lora_hf and coming back: the merged plain model, and PEFT's adapter format both ways.

Outputs are compared in fp32 at `ATOL[torch.float32]` (1e-5 absolute): the merged model, PEFT's LoRA layers
and ours run the same arithmetic in a different order. peft is needed by these tests only.
"""

import json

import pytest
import torch
from safetensors import safe_open

import lora_hf
from hub_fixtures import classifier, run_without_lora_hf, tokenizer
from lora_hf import LoraForCausalLM, LoraForMaskedLM, LoraForSequenceClassification
from lora_hf.peft_interop import merge_to_plain, read_peft_adapter
from tiny_backbones import ATOL, inputs, embeddings_in_pretrain, randomize_adapters, tiny_config

peft = pytest.importorskip("peft")

BACKBONES = ("bert", "gpt2")
# Plain-transformers keyword arguments that make the base match the lora_hf model's head.
HEAD_KWARGS = {"bert": {"num_labels": 3}, "gpt2": {"num_labels": 3, "pad_token_id": 0}}
TOL = ATOL[torch.float32]


def plain_classifier(base: str, name: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(123)  # the head PEFT does not get from the file would differ from ours: it must come from the file
    return AutoModelForSequenceClassification.from_pretrained(base, **HEAD_KWARGS[name]).eval()


def out(model, x=None):
    with torch.no_grad():
        return model(inputs() if x is None else x).logits


def peft_saved(model, directory):
    """What PEFT itself writes for `model` (a PeftModel): config and tensor names with shapes."""
    model.save_pretrained(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return config, shapes


# ----- lora_hf -> PEFT --------------------------------------------------------------------------
@pytest.mark.parametrize("use_rslora", [False, True], ids=["alpha-over-r", "rslora"])
@pytest.mark.parametrize("name", BACKBONES)
def test_exported_adapter_loads_in_peft_with_identical_outputs(bases, tmp_path, name, use_rslora):
    model = classifier(bases[name], use_rslora=use_rslora, **HEAD_KWARGS[name])
    model.save_peft_adapter(tmp_path / "peft")
    config, _ = read_peft_adapter(tmp_path / "peft")
    assert config["task_type"] == "SEQ_CLS" and config["use_rslora"] is use_rslora
    assert config["fan_in_fan_out"] is (name == "gpt2")  # GPT-2's Conv1D stores W as (in, out)
    assert config["base_model_name_or_path"] == bases[name]
    head = {"bert": "classifier", "gpt2": "score"}[name]
    assert head in config["modules_to_save"]

    loaded = peft.PeftModel.from_pretrained(plain_classifier(bases[name], name), tmp_path / "peft").eval()
    torch.testing.assert_close(out(loaded), out(model), rtol=0, atol=TOL)
    # Key names and shapes are exactly the ones PEFT writes for the same adapter.
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), framework="pt") as f:
        ours = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    theirs_config, theirs = peft_saved(loaded, tmp_path / "resaved")
    assert ours == theirs
    assert all(k.startswith("base_model.model.") for k in ours)
    assert any(k.endswith(".lora_A.weight") for k in ours) and any(k.endswith(".lora_B.weight") for k in ours)
    for field in ("task_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "base_model_name_or_path"):
        assert theirs_config[field] == config[field], field
    assert set(theirs_config["target_modules"]) == set(config["target_modules"])


def test_exported_causal_lm_adapter_loads_in_peft(bases, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = LoraForCausalLM.from_base_model(bases["gpt2"], r=4, lora_alpha=8)
    randomize_adapters(model, head_scale=0.1)
    model.save_peft_adapter(tmp_path)
    config, _ = read_peft_adapter(tmp_path)
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None  # the tied LM head was not trained
    loaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bases["gpt2"]), tmp_path).eval()
    torch.testing.assert_close(out(loaded), out(model.eval()), rtol=0, atol=TOL)


def test_trained_embeddings_and_lm_head_go_to_modules_to_save(bases, tmp_path):
    """The pretrain phase trains the embeddings, one of them tied to the MLM decoder: PEFT gets both modules."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = LoraForMaskedLM.from_base_model(bases["bert"], r=4, lora_alpha=8, phase_trainable=embeddings_in_pretrain())
    model.set_phase("pretrain")  # lora + embeddings
    randomize_adapters(model)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)  # shared with the tied decoder
    model.save_peft_adapter(tmp_path)
    config, _ = read_peft_adapter(tmp_path)
    assert config["task_type"] is None
    assert {"bert.embeddings.word_embeddings", "cls.predictions.decoder"} <= set(config["modules_to_save"])
    loaded = peft.PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bases["bert"]), tmp_path).eval()
    torch.testing.assert_close(out(loaded), out(model.eval()), rtol=0, atol=TOL)


@pytest.mark.parametrize("name, modules_to_save", [("roberta", None), ("distilbert", ["classifier", "pre_classifier"])])
def test_heads_peft_matches_by_suffix_are_saved_whole_and_once(tmp_path, name, modules_to_save):
    """PEFT's `classifier` entry also wraps DistilBERT's `pre_classifier`, and wraps RoBERTa's two-layer head as one module."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(name)).save_pretrained(tmp_path / "base")
    model = classifier(str(tmp_path / "base"))
    model.save_peft_adapter(tmp_path / "peft")
    assert read_peft_adapter(tmp_path / "peft")[0]["modules_to_save"] == modules_to_save
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    loaded = peft.PeftModel.from_pretrained(plain, tmp_path / "peft").eval()
    torch.testing.assert_close(out(loaded), out(model), rtol=0, atol=TOL)


def test_export_refuses_a_trained_weight_inside_a_lora_module(bases, tmp_path):
    model = classifier(bases["bert"], phase_trainable={"finetune": ["lora", "head", "attention"]})
    model.set_phase("finetune")
    with pytest.raises(ValueError, match=r"`bert\.encoder\.layer\.0\.attention\.\S+` was trained and belongs to a module that also carries LoRA.*lora-hf merge"):
        model.save_peft_adapter(tmp_path)


# ----- PEFT -> lora_hf --------------------------------------------------------------------------
PEFT_TARGETS = {"bert": ["query", "value", "attention.output.dense"], "gpt2": ["c_attn", "c_proj"]}


def peft_classifier(base: str, name: str, use_rslora: bool, directory):
    torch.manual_seed(7)
    peft_config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=PEFT_TARGETS[name],
                                  use_rslora=use_rslora, fan_in_fan_out=name == "gpt2",
                                  init_lora_weights=False)  # False: B random, so the update shows
    model = peft.get_peft_model(plain_classifier(base, name), peft_config)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "modules_to_save" in param_name:
                param.copy_(torch.randn_like(param) * 0.2)
    model.eval().save_pretrained(directory)
    return model


@pytest.mark.parametrize("use_rslora", [False, True], ids=["alpha-over-r", "rslora"])
@pytest.mark.parametrize("name", BACKBONES)
def test_a_peft_adapter_imports_with_identical_outputs_and_survives_a_save(bases, tmp_path, name, use_rslora):
    # PEFT saves the head but not a pooler the base lacks: the BERT case starts from an encoder that has one.
    base = bases["bert_encoder" if name == "bert" else name]
    reference = peft_classifier(base, name, use_rslora, tmp_path / "peft")
    model = LoraForSequenceClassification.from_peft_adapter(tmp_path / "peft", **({"pad_token_id": 0} if name == "gpt2" else {}))
    assert model.config.r == 4 and model.config.lora_alpha == 16 and model.config.use_rslora is use_rslora
    assert model.config.backbone_config.num_labels == 3  # read off the saved head, PEFT does not record it
    torch.testing.assert_close(out(model), out(reference), rtol=0, atol=TOL)
    model.save_pretrained(tmp_path / "lora")
    again = LoraForSequenceClassification.from_pretrained(tmp_path / "lora")
    torch.testing.assert_close(out(again), out(model), rtol=0, atol=0)


def test_import_then_export_gives_back_peft_tensors_unchanged(bases, tmp_path):
    peft_classifier(bases["gpt2"], "gpt2", False, tmp_path / "peft")
    model = LoraForSequenceClassification.from_peft_adapter(tmp_path / "peft", pad_token_id=0)
    model.save_peft_adapter(tmp_path / "back")
    _, before = read_peft_adapter(tmp_path / "peft")
    _, after = read_peft_adapter(tmp_path / "back")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("changes, says", [
    ({"use_dora": True}, "uses DoRA (`use_dora` = True), which lora_hf cannot represent"),
    ({"peft_type": "IA3"}, "`peft_type` 'IA3'; lora_hf imports LoRA adapters ('LORA') only"),
    ({"init_lora_weights": "pissa"}, "`init_lora_weights` = 'pissa', which changes the base weights"),
    ({"rank_pattern": {"query": 8}}, "per-module ranks (`rank_pattern`)"),
    ({"base_model_name_or_path": None}, "names no base model"),
], ids=["dora", "not-lora", "pissa", "rank-pattern", "no-base"])
def test_import_refuses_what_lora_hf_cannot_hold(bases, tmp_path, changes, says):
    peft_classifier(bases["bert"], "bert", False, tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError) as caught:
        LoraForSequenceClassification.from_peft_adapter(tmp_path)
    assert says in str(caught.value)


def test_import_of_an_unreachable_base_names_it_and_the_override(bases, tmp_path):
    peft_classifier(bases["bert"], "bert", False, tmp_path)
    _edit_config(tmp_path, base_model_name_or_path="someone/not-here")
    with pytest.raises(OSError, match=r"'someone/not-here'.*base_model_name_or_path="):
        LoraForSequenceClassification.from_peft_adapter(tmp_path)
    model = LoraForSequenceClassification.from_peft_adapter(tmp_path, base_model_name_or_path=bases["bert"])
    assert model.config.base_model_name_or_path == bases["bert"]


def test_import_refuses_a_pickled_only_adapter(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(OSError, match="only the pickled adapter_model.bin, which lora_hf does not load"):
        LoraForSequenceClassification.from_peft_adapter(tmp_path)


# ----- merge ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_merged_directory_loads_with_plain_transformers_and_matches(bases, tmp_path, name):
    model = classifier(bases[name], **HEAD_KWARGS[name])
    model.save_pretrained(tmp_path / "lora")
    if name == "bert":
        tokenizer().save_pretrained(tmp_path / "lora")
    merge_to_plain(tmp_path / "lora", tmp_path / "merged")
    files = sorted(p.name for p in (tmp_path / "merged").iterdir())
    assert not any(f.endswith(".py") for f in files) and "model.safetensors" in files
    assert ("tokenizer.json" in files) is (name == "bert")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == name and "auto_map" not in config
    got = run_without_lora_hf(f"""
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "merged")!r}).eval()
        assert type(model).__module__.startswith("transformers.models."), type(model).__module__
        print(json.dumps(model(torch.tensor({inputs().tolist()})).logits.tolist()))
    """)
    torch.testing.assert_close(torch.tensor(got), out(model), rtol=0, atol=TOL)
