"""A LoRA model is a transformers model: each case here is one way it was not (issue "Native means native").

Loading in half precision, resizing the vocabulary, labels given to the config or to `from_pretrained`,
models built from a config, the loading arguments of `PreTrainedModel.from_pretrained`, generation
settings, meta-device construction, the backbone's config attributes, `base_model`, and labels through
PEFT export/import.
"""

import copy
import logging as std_logging

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
)
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from lora_hf import LoraConfig, LoraForCausalLM, LoraForMaskedLM, LoraForSequenceClassification, LoraModel
from lora_hf.checkpoint_lora import same_base
from tiny_backbones import ATOL, inputs, randomize_adapters, tiny_config

X = inputs()


def saved_tensors(directory) -> dict:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def bert_body(tmp_path_factory):
    """A tiny BERT saved without a task head: any label count fits it."""
    from transformers import AutoModel

    path = tmp_path_factory.mktemp("bert_body")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(path)
    return str(path)


def classifier(tiny_bases, **kwargs):
    torch.manual_seed(0)
    base = kwargs.pop("base", tiny_bases["bert"])
    model = LoraForSequenceClassification.from_base_model(base, r=4, **kwargs)
    randomize_adapters(model)
    return model.eval()


# ----- 1. half precision --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"dtype": torch.bfloat16}, {"dtype": torch.float16}, {"torch_dtype": "float16"}, {"dtype": "bfloat16"}])
def test_fp32_adapters_load_in_half_precision(tiny_bases, tmp_path, kwargs):
    model = classifier(tiny_bases)
    model.save_pretrained(tmp_path)
    half = LoraForSequenceClassification.from_pretrained(tmp_path, **kwargs)
    dtype = getattr(torch, str(next(iter(kwargs.values()))).replace("torch.", ""))
    assert {p.dtype for p in half.parameters()} == {dtype}
    with torch.no_grad():  # bf16's bound serves fp16 too, whose mantissa is longer (seen: bf16 4.3e-4, fp16 5.8e-5)
        torch.testing.assert_close(half(X).logits.float(), model(X).logits, atol=ATOL[torch.bfloat16], rtol=0)


def test_half_precision_load_still_refuses_another_base(tiny_bases, tmp_path):
    classifier(tiny_bases).save_pretrained(tmp_path / "adapters")
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(tiny_config("bert")).save_pretrained(tmp_path / "other")
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(ValueError, match="is not the one these adapters were trained on"):
            LoraForSequenceClassification.from_pretrained(tmp_path / "adapters", base_model_name_or_path=str(tmp_path / "other"), dtype=dtype)


def test_fingerprint_is_the_same_in_every_dtype(tiny_bases):
    model = classifier(tiny_bases)
    saved = model.base_fingerprint()
    for dtype in (torch.bfloat16, torch.float16):
        assert same_base(copy.deepcopy(model).to(dtype), saved)


# ----- 2. resize_token_embeddings --------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("bert", LoraForMaskedLM), ("gpt2", LoraForCausalLM)])
def test_added_tokens_stay_tied_and_only_their_rows_are_saved(tiny_bases, tmp_path, name, cls):
    torch.manual_seed(0)
    model = cls.from_base_model(tiny_bases[name], r=4)
    randomize_adapters(model)
    vocab = model.config.vocab_size
    model.resize_token_embeddings(vocab + 5)
    assert model.config.vocab_size == model.backbone.config.vocab_size == vocab + 5
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # the base ties them
    assert not model.get_input_embeddings().weight.requires_grad  # the finetune phase does not train embeddings
    model.save_pretrained(tmp_path)
    tensors = saved_tensors(tmp_path)
    rows = {k: v.shape for k, v in tensors.items() if v.shape[0] in (5,) and v.dim() >= 1 and "lora" not in k}
    assert rows and all(shape[0] == 5 for shape in rows.values()), rows
    assert max(v.numel() for v in tensors.values()) < vocab * model.config.hidden_size  # no whole embedding matrix
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    ids = torch.tensor([[3, vocab + 1, vocab + 4, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


# ----- 3. labels ---------------------------------------------------------------------------------------
def test_labels_given_to_the_lora_config_reach_the_head():
    config = LoraConfig(backbone_config=tiny_config("bert"), num_labels=5, problem_type="multi_label_classification")
    model = LoraForSequenceClassification(config)
    assert model(X).logits.shape[-1] == 5
    assert model.backbone.config.problem_type == "multi_label_classification"
    named = LoraConfig(backbone_config=tiny_config("bert"), id2label={0: "neg", 1: "neu", 2: "pos"})
    assert named.backbone_config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert LoraForSequenceClassification(named)(X).logits.shape[-1] == 3


def test_num_labels_that_differ_from_the_saved_head_raise_unless_ignored(tiny_bases, bert_body, tmp_path):
    model = classifier(tiny_bases, base=bert_body, num_labels=3)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as report:  # where transformers reports loads
        reloaded, info = AutoModelForSequenceClassification.from_pretrained(
            tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
        )
    assert reloaded.config.num_labels == 5 and reloaded(X).logits.shape[-1] == 5
    assert {key for key, _, _ in info["mismatched_keys"]} == {"backbone.classifier.weight", "backbone.classifier.bias"}
    assert "Reinit due to size mismatch" in report.out


# ----- 4. a model built from a config -----------------------------------------------------------------
@pytest.mark.parametrize("build", ["class", "auto"])
def test_a_model_built_from_a_config_saves_a_loadable_directory(tmp_path, build, caplog):
    config = LoraConfig(backbone_config=tiny_config("gpt2"), r=4)
    model = LoraForCausalLM(config) if build == "class" else AutoModelForCausalLM.from_config(config)
    randomize_adapters(model)
    caplog.set_level(std_logging.WARNING)
    model.save_pretrained(tmp_path)
    assert "saving the base weights too (save_base=True)" in caplog.text
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(X).logits, model.eval()(X).logits)


# ----- 5. from_pretrained's arguments --------------------------------------------------------------------
def test_output_loading_info_and_state_dict(tiny_bases, tmp_path):
    model = classifier(tiny_bases)
    model.save_pretrained(tmp_path)
    loaded, info = LoraForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    rebuilt = LoraForSequenceClassification.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(X).logits, model(X).logits)


@pytest.mark.parametrize("layout", ["adapter", "full"])
@pytest.mark.parametrize("kwargs", [{"dtype": "float16"}, {"torch_dtype": torch.bfloat16}, {"dtype": "auto"}])
def test_dtype_applies_to_both_layouts(tiny_bases, tmp_path, layout, kwargs):
    classifier(tiny_bases).save_pretrained(tmp_path, save_base=layout == "full")
    loaded = LoraForSequenceClassification.from_pretrained(tmp_path, **kwargs)
    expected = {"float16": torch.float16, torch.bfloat16: torch.bfloat16, "auto": torch.float32}[next(iter(kwargs.values()))]
    assert {p.dtype for p in loaded.parameters()} == {expected}


@pytest.mark.parametrize("layout", ["adapter", "full"])
def test_attn_implementation_reaches_the_backbone(tiny_bases, tmp_path, layout):
    classifier(tiny_bases).save_pretrained(tmp_path, save_base=layout == "full")
    for implementation in ("eager", "sdpa"):
        loaded = LoraForSequenceClassification.from_pretrained(tmp_path, attn_implementation=implementation)
        assert loaded.backbone.config._attn_implementation == implementation
        assert loaded.config._attn_implementation == implementation


@pytest.mark.parametrize("layout", ["adapter", "full"])
def test_from_pretrained_refuses_a_meta_device_context(tiny_bases, tmp_path, layout):
    classifier(tiny_bases).save_pretrained(tmp_path, save_base=layout == "full")
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        LoraForSequenceClassification.from_pretrained(tmp_path)


def test_arguments_that_cannot_apply_fail_clearly(tiny_bases, tmp_path):
    classifier(tiny_bases).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not support `quantization_config`"):
        LoraForSequenceClassification.from_pretrained(tmp_path, quantization_config={"load_in_8bit": True})
    with pytest.raises(ValueError, match="unknown arguments"):
        LoraForSequenceClassification.from_pretrained(tmp_path, no_such_option=1)
    # Config fields (and the backbone's) are overrides, as in transformers.
    assert LoraForSequenceClassification.from_pretrained(tmp_path, output_hidden_states=True)(X).hidden_states is not None


# ----- 6. generation_config.json ---------------------------------------------------------------------------
@pytest.mark.parametrize("save_base", [False, True])
def test_generation_config_is_saved_and_loaded(tiny_bases, tmp_path, save_base):
    torch.manual_seed(0)
    model = LoraForCausalLM.from_base_model(tiny_bases["gpt2"], r=4)
    model.generation_config.max_new_tokens = 7
    model.generation_config.do_sample = True
    model.generation_config.top_k = 3
    model.save_pretrained(tmp_path, save_base=save_base)
    assert (tmp_path / "generation_config.json").is_file()
    loaded = LoraForCausalLM.from_pretrained(tmp_path)
    assert (loaded.generation_config.max_new_tokens, loaded.generation_config.do_sample, loaded.generation_config.top_k) == (7, True, 3)
    assert loaded.backbone.generation_config is loaded.generation_config  # the backbone's generate reads it
    override = LoraForCausalLM.from_pretrained(tmp_path, generation_config=GenerationConfig(max_new_tokens=2))
    assert override.generation_config.max_new_tokens == 2


def test_models_that_cannot_generate_write_no_generation_config(tiny_bases, tmp_path):
    classifier(tiny_bases).save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()


# ----- 7. meta device, then init_weights -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_meta_construction_then_init_weights_initialises_everything(name):
    config = LoraConfig(backbone_config=tiny_config(name), r=4)
    cls = LoraForMaskedLM if name == "bert" else LoraForCausalLM
    reference = cls(copy.deepcopy(config))
    with torch.device("meta"):
        model = cls(copy.deepcopy(config))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor.fill_(12345)
    model.init_weights()
    buffers = dict(reference.named_buffers())
    for key, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[key]), key
    for key, param in model.named_parameters():
        assert torch.isfinite(param).all(), key
    for key, param in model.named_parameters():
        if key.endswith("lora_B"):
            assert not param.any(), key  # B starts at zero: the model equals its base
    assert torch.isfinite(model(X).logits).all()


# ----- 8. the backbone's config attributes ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_backbone_text_config_attributes_read_through(name):
    backbone = tiny_config(name)
    config = LoraConfig(backbone_config=backbone, r=4)
    for attribute in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers"):
        assert getattr(config, attribute) == getattr(backbone, attribute), attribute
    config.num_attention_heads = 2  # one value, the backbone's: never a copy that can disagree
    assert backbone.num_attention_heads == 2 and "num_attention_heads" not in config.to_dict()
    assert config.r == 4 and config.to_dict()["r"] == 4
    reloaded = LoraConfig.from_dict(config.to_dict())
    assert reloaded.num_attention_heads == 2 and reloaded.hidden_size == backbone.hidden_size
    with pytest.raises(AttributeError):
        config.no_such_attribute


def test_output_flags_set_on_the_lora_config_reach_the_model():
    config = LoraConfig(backbone_config=tiny_config("bert"), r=4)
    config.output_hidden_states = True
    model = LoraModel(config)
    assert len(model(X).hidden_states) == 3


# ----- 9. base_model --------------------------------------------------------------------------------------
def test_base_model_is_the_backbone(tiny_bases):
    model = classifier(tiny_bases)
    assert model.base_model is model.backbone
    assert model.base_model_prefix == "backbone"


# ----- 10. labels through PEFT --------------------------------------------------------------------------
def test_label_names_survive_peft_export_and_import(tiny_bases, bert_body, tmp_path):
    from lora_hf.peft_interop import export_main, import_main

    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model = classifier(tiny_bases, base=bert_body, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model.save_pretrained(tmp_path / "lora")
    assert export_main([str(tmp_path / "lora"), str(tmp_path / "peft")]) == 0
    assert import_main([str(tmp_path / "peft"), str(tmp_path / "back"), "--head", "LoraForSequenceClassification"]) == 0
    back = LoraForSequenceClassification.from_pretrained(tmp_path / "back")
    assert back.config.id2label == id2label and back.backbone.config.id2label == id2label
    with torch.no_grad():
        assert torch.allclose(back(X).logits, model(X).logits, atol=ATOL[torch.float32])


def test_transformers_loads_a_peft_export_with_its_labels(tiny_bases, bert_body, tmp_path):
    pytest.importorskip("peft")
    from lora_hf.peft_interop import peft_label_kwargs

    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model = classifier(tiny_bases, base=bert_body, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model.save_peft_adapter(tmp_path / "peft")
    labels = peft_label_kwargs(tmp_path / "peft")
    assert labels["id2label"] == id2label
    logging.set_verbosity_error()
    try:
        theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "peft", **labels)
    finally:
        logging.set_verbosity_warning()
    assert theirs.config.id2label == id2label
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(X).logits, model(X).logits, atol=ATOL[torch.float32])
