"""The core: config, layers, the six heads on six backbones, phases, merge, save/load, remote code, PEFT parity.

Tolerances: fp32 outputs and gradients 1e-5 absolute (PEFT parity, merge round trip); exact (0) where
the same arithmetic runs twice (save/load of the same tensors, step 0 against the base).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    OPTConfig,
)

import lora_hf
from lora_hf import LoraConfig, LoraForCausalLM, LoraForMaskedLM, LoraForSequenceClassification, LoraModel
from lora_hf.lora_layers import LoraEmbedding, LoraLinear, lora_layers
from tiny_backbones import AUTO_TARGETS, BACKBONES, DECODERS, VOCAB, tiny_config

ATOL = 1e-5


def inputs(batch=2, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def randomize_adapters(model, seed=0):
    """B starts at zero (the model equals its base); give A and B values so the update shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def seq_cls(name, **lora_kwargs):
    torch.manual_seed(0)
    return LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config(name), r=4, lora_alpha=8, **lora_kwargs)).eval()


# ----- config ---------------------------------------------------------------------------------
def test_config_nests_the_backbone_config_and_round_trips_through_json(tmp_path):
    config = LoraConfig(backbone_config=tiny_config("gpt2"), r=4, lora_alpha=8, target_modules=["c_attn"], use_rslora=True)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "lora" and saved["backbone_config"]["model_type"] == "gpt2"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LoraConfig and type(loaded.backbone_config).__name__ == "GPT2Config"
    assert (loaded.r, loaded.lora_alpha, loaded.target_modules, loaded.use_rslora) == (4, 8, ["c_attn"], True)
    assert loaded.phase_trainable == {"pretrain": ["lora", "embeddings"], "finetune": ["lora", "head"]}


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scaling_is_alpha_over_r_or_over_sqrt_r(use_rslora, expected):
    model = LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("bert"), r=4, lora_alpha=16, use_rslora=use_rslora))
    assert {layer.scaling for _, layer in lora_layers(model)} == {expected}


@pytest.mark.parametrize(
    "kwargs, field",
    [({"r": 0}, "`r`"), ({"lora_alpha": 0}, "`lora_alpha`"), ({"lora_dropout": 1.0}, "`lora_dropout`"),
     ({"phase_trainable": {"warmup": ["lora"]}}, "phase"), ({"phase_trainable": {"finetune": ["loras"]}}, "group"),
     ({"init_lora_weights": "xavier"}, "`init_lora_weights`")],
)
def test_bad_config_values_name_the_field_and_the_allowed_values(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        LoraConfig(backbone_config=tiny_config("bert"), **kwargs)
    assert repr(next(iter(kwargs.values())))[:6] in str(err.value) or "allowed" in str(err.value)


def test_a_target_matching_nothing_lists_the_candidates():
    with pytest.raises(ValueError) as err:
        LoraForSequenceClassification(LoraConfig(backbone_config=tiny_config("gpt2"), target_modules=["q_proj"]))
    message = str(err.value)
    assert "'q_proj'" in message and "c_attn" in message and "c_fc" in message


# ----- layers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_auto_targets_pick_every_attention_projection(name):
    model = seq_cls(name)
    per_layer = sorted({n.split(".layer.0.")[-1].split(".layers.0.")[-1].split(".h.0.")[-1] for n in model.lora_module_names if ".0." in n})
    assert per_layer == AUTO_TARGETS[name]
    assert len(model.lora_module_names) == 2 * len(AUTO_TARGETS[name])  # both layers


def test_explicit_targets_work_on_another_architecture():
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=37, num_attention_heads=4,
                       max_position_embeddings=40, word_embed_proj_dim=32)
    model = LoraForCausalLM(LoraConfig(backbone_config=config, r=2, target_modules=["fc1", "re:.*self_attn\\.v_proj"]))
    assert len(model.lora_module_names) == 4
    out = model(inputs(), labels=inputs())
    out.loss.backward()
    assert all(layer.lora_B.grad.abs().sum() > 0 for _, layer in lora_layers(model))


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_conv1d_and_embedding_merge_then_unmerge_restore_outputs(dtype, atol):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    for base, x in ((torch.nn.Linear(8, 6), torch.randn(3, 8)), (Conv1D(6, 8), torch.randn(3, 8)), (torch.nn.Embedding(10, 6), torch.tensor([[1, 4, 9]]))):
        layer_class = LoraEmbedding if isinstance(base, torch.nn.Embedding) else LoraLinear
        layer = layer_class(base.to(dtype), r=2, lora_alpha=4).to(dtype)
        with torch.no_grad():
            layer.lora_A.normal_()
            layer.lora_B.normal_()
        x = x.to(dtype) if x.is_floating_point() else x
        before = layer(x)
        layer.merge()
        layer.merge()  # idempotent
        merged = layer(x)
        layer.unmerge()
        layer.unmerge()
        torch.testing.assert_close(merged, before, rtol=0, atol=atol * before.abs().max().item())
        torch.testing.assert_close(layer(x), before, rtol=0, atol=atol * before.abs().max().item())
        assert layer.weight.dtype == dtype


# ----- heads and backbones --------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_every_head_returns_the_backbone_output_with_a_loss(name):
    heads = [lora_hf.LoraForSequenceClassification, lora_hf.LoraForTokenClassification, lora_hf.LoraModel]
    heads += [LoraForCausalLM] if name in DECODERS else [LoraForMaskedLM, lora_hf.LoraForQuestionAnswering]
    x = inputs()
    for head in heads:
        model = head(LoraConfig(backbone_config=tiny_config(name), r=2))
        labels = {
            "LoraForSequenceClassification": {"labels": torch.tensor([0, 1])},
            "LoraForTokenClassification": {"labels": torch.zeros_like(x)},
            "LoraForCausalLM": {"labels": x},
            "LoraForMaskedLM": {"labels": x},
            "LoraForQuestionAnswering": {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])},
            "LoraModel": {},
        }[head.__name__]
        out = model(input_ids=x, **labels)
        assert type(out).__module__.startswith("transformers.modeling_outputs")
        if labels:
            assert torch.isfinite(out.loss)
        else:
            assert out.last_hidden_state.shape[:2] == x.shape


@pytest.mark.parametrize("name", DECODERS)
def test_generate_with_the_kv_cache_equals_generate_without(name):
    torch.manual_seed(0)
    model = LoraForCausalLM(LoraConfig(backbone_config=tiny_config(name), r=2)).eval()
    randomize_adapters(model)
    x = inputs(batch=1, length=4)
    cached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, uncached)


def test_import_registers_config_and_every_auto_class():
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_MASKED_LM_MAPPING,
        MODEL_FOR_QUESTION_ANSWERING_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
        MODEL_MAPPING,
    )

    assert type(AutoConfig.for_model("lora")) is LoraConfig
    assert MODEL_MAPPING[LoraConfig] is LoraModel
    assert MODEL_FOR_CAUSAL_LM_MAPPING[LoraConfig] is LoraForCausalLM
    assert MODEL_FOR_MASKED_LM_MAPPING[LoraConfig] is LoraForMaskedLM
    assert MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[LoraConfig] is LoraForSequenceClassification
    assert MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[LoraConfig] is lora_hf.LoraForTokenClassification
    assert MODEL_FOR_QUESTION_ANSWERING_MAPPING[LoraConfig] is lora_hf.LoraForQuestionAnswering


# ----- from a base model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    paths = {}
    for name in BACKBONES:
        torch.manual_seed(0)
        auto = AutoModelForCausalLM if name in DECODERS else AutoModelForSequenceClassification
        auto.from_config(tiny_config(name)).save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.mark.parametrize("name", BACKBONES)
def test_from_base_model_equals_the_base_at_step_zero(saved_bases, name):
    auto, lora_class = (AutoModelForCausalLM, LoraForCausalLM) if name in DECODERS else (AutoModelForSequenceClassification, LoraForSequenceClassification)
    base = auto.from_pretrained(saved_bases[name]).eval()
    model = lora_class.from_base_model(saved_bases[name], r=4).eval()
    x = inputs()
    torch.testing.assert_close(model(x).logits, base(x).logits, rtol=0, atol=0)
    assert model.config.base_model_name_or_path == saved_bases[name]


# ----- groups, phases, tied weights, checkpointing -------------------------------------------
def test_phases_train_exactly_their_groups():
    model = LoraForMaskedLM(LoraConfig(backbone_config=tiny_config("bert"), r=2))
    model.set_phase("pretrain")
    groups = model.parameter_groups()
    assert all(n.endswith(("lora_A", "lora_B")) or "embeddings" in n for n in groups["trainable"])
    assert any("word_embeddings" in n for n in groups["trainable"])
    assert not any("cls.predictions.decoder.weight" in n for n in groups["trainable"] + groups["fixed"])  # tied: listed once
    model.set_phase("finetune")
    trainable = model.parameter_groups()["trainable"]
    assert any(n.startswith("backbone.cls.") for n in trainable) and not any("word_embeddings" in n for n in trainable)
    with pytest.raises(ValueError, match="Unknown phase 'warmup'"):
        model.set_phase("warmup")


def test_trainable_counts_match_peft_and_print_like_peft(capsys):
    import peft

    torch.manual_seed(0)
    ours = LoraModel(LoraConfig(backbone_config=tiny_config("bert"), r=4, target_modules=["query", "value"]))
    ours.set_phase("finetune")  # a bare model has no head: LoRA only
    theirs = peft.get_peft_model(AutoModel.from_config(tiny_config("bert")), peft.LoraConfig(r=4, target_modules=["query", "value"]))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    ours.print_trainable_parameters()
    trainable, total = ours.get_nb_trainable_parameters()
    assert capsys.readouterr().out.strip() == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


@pytest.mark.parametrize("name, lm_head", [("gpt2", "lm_head"), ("bert", "cls.predictions.decoder")])
def test_tied_weights_stay_tied_when_embeddings_train_and_are_saved_once(name, lm_head, tmp_path):
    lm_class = LoraForCausalLM if name in DECODERS else LoraForMaskedLM
    model = lm_class(LoraConfig(backbone_config=tiny_config(name), r=2))
    model.set_phase("pretrain")
    embeddings = model.get_input_embeddings().weight
    head = model.backbone.get_submodule(lm_head).weight
    assert head is embeddings and embeddings.requires_grad
    x = inputs()
    model(x, labels=x).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert model.backbone.get_submodule(lm_head).weight is model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    assert model.get_nb_trainable_parameters()[1] == total
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert sum(k.endswith("word_embeddings.weight") or k.endswith("wte.weight") for k in keys) == 1
    assert not any(k.endswith(f"{lm_head}.weight") for k in keys)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_reaches_the_adapters_of_a_frozen_backbone(use_reentrant):
    config = tiny_config("bert")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = LoraForSequenceClassification(LoraConfig(backbone_config=config, r=2, phase_trainable={"finetune": ["lora"]}))
        randomize_adapters(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model(inputs(), labels=torch.tensor([0, 1])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[1].values())
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=0, atol=ATOL)


# ----- merge ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
def test_merge_then_unmerge_restores_outputs(name):
    model = seq_cls(name)
    randomize_adapters(model)
    x = inputs()
    before = model(x).logits
    model.merge_adapter()
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=ATOL)
    model.unmerge_adapter()
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=ATOL)


def test_merge_and_unload_returns_a_plain_model_that_loads_without_lora_hf(tmp_path):
    model = seq_cls("bert")
    randomize_adapters(model)
    x = inputs()
    expected = model(x).logits
    plain = model.merge_and_unload()
    assert type(plain) is BertForSequenceClassification
    assert not any("lora" in n for n, _ in plain.named_parameters())
    plain.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
    reloaded = run_without_lora_hf(f"""
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r}).eval()
        print(json.dumps(model(torch.tensor({x.tolist()})).logits.tolist()))
    """)
    torch.testing.assert_close(torch.tensor(reloaded), expected, rtol=0, atol=ATOL)


# ----- save and load --------------------------------------------------------------------------
def run_without_lora_hf(code: str):
    """Run `code` in a fresh interpreter where `import lora_hf` fails; return the JSON it prints."""
    script = "import sys, json, torch\nsys.modules['lora_hf'] = None\n" + textwrap.dedent(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_save_writes_only_non_base_tensors_and_reloads_identically(saved_bases, tmp_path):
    model = LoraForSequenceClassification.from_base_model(saved_bases["bert"], r=4, target_modules=["query", "value"])
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "lora" and config["base_model_name_or_path"] == saved_bases["bert"]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_lora.LoraForSequenceClassification"
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.adapter_state_keys())
    assert all(k.endswith(("lora_A", "lora_B")) or ".classifier." in k for k in keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "configuration_lora.py", "lora_layers.py", "model.safetensors", "modeling_lora.py"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(reloaded) is LoraForSequenceClassification
    x = inputs()
    torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits, rtol=0, atol=0)


def test_save_base_writes_a_self_contained_directory(saved_bases, tmp_path):
    import shutil

    base_copy = tmp_path / "base"
    shutil.copytree(saved_bases["gpt2"], base_copy)
    model = LoraForCausalLM.from_base_model(str(base_copy), r=2).eval()
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "full", save_base=True)
    shutil.rmtree(base_copy)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    x = inputs()
    torch.testing.assert_close(reloaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_loading_refuses_missing_tensors(saved_bases, tmp_path):
    from safetensors.torch import load_file, save_file

    model = LoraForSequenceClassification.from_base_model(saved_bases["bert"], r=2)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = sorted(k for k in state if k.endswith("lora_B"))[0]
    del state[dropped]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt", "lora_hf_format": "adapter", "base_prefix": "bert"})
    with pytest.raises(ValueError, match="lacks tensors") as err:
        LoraForSequenceClassification.from_pretrained(tmp_path)
    assert dropped in str(err.value)


def test_trust_remote_code_loads_where_lora_hf_is_not_installed(saved_bases, tmp_path):
    model = LoraForSequenceClassification.from_base_model(saved_bases["roberta"], r=4)
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "repo")
    x = inputs()
    expected = model.eval()(x).logits
    logits = run_without_lora_hf(f"""
        try:
            import lora_hf
            raise SystemExit("lora_hf is importable")
        except ImportError:
            pass
        import os
        os.environ["HF_MODULES_CACHE"] = {str(tmp_path / "modules")!r}
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "repo")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print(json.dumps(model(torch.tensor({x.tolist()})).logits.tolist()))
    """)
    torch.testing.assert_close(torch.tensor(logits), expected, rtol=0, atol=ATOL)


def test_real_minilm_from_base_model_save_and_load(tmp_path):
    from lora_hf.training import default_base_model

    path = default_base_model()
    plain = AutoModel.from_pretrained(path).eval()
    bare = LoraModel.from_base_model(path, r=8, target_modules=["query", "value"]).eval()
    x = torch.tensor([[101, 7592, 2088, 2003, 2307, 102]])
    torch.testing.assert_close(bare(x).last_hidden_state, plain(x).last_hidden_state, rtol=0, atol=0)

    model = LoraForSequenceClassification.from_base_model(path, r=8, target_modules=["query", "value"], num_labels=2)
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 1_000_000
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits, rtol=0, atol=0)


# ----- same numbers as PEFT -------------------------------------------------------------------
@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("name", BACKBONES)
def test_logits_and_adapter_gradients_equal_peft(name, use_rslora):
    import peft

    config = tiny_config(name)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config).eval()
    twin = AutoModelForSequenceClassification.from_config(config).eval()
    twin.load_state_dict(base.state_dict())
    targets = AUTO_TARGETS[name]
    ours = LoraForSequenceClassification(LoraConfig(backbone_config=config, r=4, lora_alpha=8, use_rslora=use_rslora, target_modules=targets), backbone=base).eval()
    theirs = peft.get_peft_model(twin, peft.LoraConfig(r=4, lora_alpha=8, use_rslora=use_rslora, target_modules=targets,
                                                       fan_in_fan_out=name == "gpt2", lora_dropout=0.0)).eval()
    randomize_adapters(ours)
    peft_root = theirs.base_model.model
    with torch.no_grad():
        for module_name, layer in lora_layers(ours.backbone):
            target = peft_root.get_submodule(module_name)
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
    x, labels = inputs(), torch.tensor([0, 1])
    out_ours, out_theirs = ours(x, labels=labels), theirs(input_ids=x, labels=labels)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=ATOL)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for module_name, layer in lora_layers(ours.backbone):
        target = peft_root.get_submodule(module_name)
        torch.testing.assert_close(layer.lora_A.grad, target.lora_A["default"].weight.grad, rtol=0, atol=ATOL)
        torch.testing.assert_close(layer.lora_B.grad, target.lora_B["default"].weight.grad, rtol=0, atol=ATOL)
