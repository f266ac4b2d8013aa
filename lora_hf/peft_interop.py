"""PEFT's adapter format in both directions, and the `lora-hf export-peft` / `lora-hf import-peft` commands.

PEFT's LoRA adapter is two files: `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` (r, in) / `lora_B.weight` (out, r) (`lora_embedding_A` /
`lora_embedding_B` for embeddings), and whole modules listed in `modules_to_save` (the task head)
as `base_model.model.<module>.<param>`. lora_hf's `lora_A`/`lora_B` have the same shapes and the
same meaning (GPT-2's Conv1D included: both keep A as (r, in) and set `fan_in_fan_out`), so the
conversion renames keys; it needs no `peft` at runtime.

Example:
    >>> model.save_peft_adapter("peft-out")                       # then peft.PeftModel.from_pretrained(base, "peft-out")
    >>> LoraForSequenceClassification.from_peft_adapter("peft-out")
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save
from transformers.utils import logging

from .checkpoint_lora import atomic_write_all, read_safetensors, write_bytes
from .loading_lora import HUB_KWARGS, quiet_transformers
# Re-exported: callers imported the merge from here before it had a module of its own.
from .merge import merge_main, merge_to_plain
from .model_dir import MODEL_DIR_HELP, check_output_dir, command_parser, copy_tokenizer_files, load_model_dir, run_command
from .modeling_lora import HEAD_CLASSES, LoraPreTrainedModel, head_class

logger = logging.get_logger(__name__)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "merge_to_plain",
    "save_peft_adapter",
    "load_peft_adapter",
    "merge_main",
    "export_main",
    "import_main",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# The modules PEFT's task models add to `modules_to_save` by themselves (peft_model.py, PeftModelFor*).
PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}
# PEFT features lora_hf has no counterpart for: an adapter using one cannot be imported faithfully.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "a LoRA bias",
    "use_qalora": "QALoRA",
    "layers_to_transform": "`layers_to_transform`",
    "layer_replication": "`layer_replication`",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "`target_parameters` (LoRA on bare parameters)",
    "alora_invocation_tokens": "aLoRA",
    "rank_pattern": "per-module ranks (`rank_pattern`)",
    "alpha_pattern": "per-module alphas (`alpha_pattern`)",
}
# Inits that change the base weights (PiSSA, OLoRA, LoftQ, ...): the adapter is relative to a modified base.
_PLAIN_INITS = (True, False, None, "gaussian")


# ----- lora_hf -> PEFT --------------------------------------------------------------------------
def _lora_modules(backbone) -> dict:
    """`{name: layer}` for the LoRA layers of `backbone`, by shape of the object rather than class:
    a model loaded with trust_remote_code has its own copies of lora_hf's classes."""
    return {
        name: module
        for name, module in backbone.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.Parameter) and hasattr(module, "scaling")
    }


def _peft_wrapped_modules(backbone, modules_to_save) -> list:
    # PEFT wraps every module whose name *ends with* an entry, as a plain string (peft/utils/other.py
    # `_set_trainable`): `classifier` also wraps DistilBERT's `pre_classifier`. Each wrapped module's
    # whole state must be in the file, or PEFT's loader fails on the missing key.
    names = [name for name, _ in backbone.named_modules(remove_duplicate=False) if name]
    return sorted({name for name in names if any(name.endswith(entry) for entry in modules_to_save)})


def save_peft_adapter(model: LoraPreTrainedModel, save_directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write `model`'s adapters in PEFT's format: `peft.PeftModel.from_pretrained(base, save_directory)` gives the same outputs.

    Tensors lora_hf trained besides the adapters (the task head, embeddings in a pretrain phase, ...)
    go to `modules_to_save` as whole modules. Raises `ValueError` for what PEFT cannot express: a
    trained weight or bias of a module that also carries LoRA.
    """
    arch = type(model).__name__
    # By name: a model loaded as remote code is an instance of its own copy of the class.
    if arch not in {c.__name__ for c in HEAD_CLASSES}:
        raise ValueError(f"save_peft_adapter needs one of lora_hf's model classes {sorted(c.__name__ for c in HEAD_CLASSES)}, got {arch}.")
    backbone = model.backbone
    lora = _lora_modules(backbone)
    if not lora:
        raise ValueError(f"{arch} has no LoRA layers (was it merged and unloaded?); there is no adapter to export.")
    modules_to_save, wrapped = _modules_to_save(backbone, lora, _trained_modules(model, lora), model.peft_task_type)
    tensors = _peft_tensors(backbone, lora, wrapped)
    adapter_config = _adapter_config(model, lora, modules_to_save, base_model_name_or_path)
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise OSError(f"`save_directory` {str(out)!r} is a file; pass a directory.")
    out.mkdir(parents=True, exist_ok=True)
    # PEFT saves no labels; the head's names and count travel in the file's metadata (PEFT ignores it), read back by
    # `load_peft_adapter` and by `peft_label_kwargs` for transformers' own loading.
    metadata = {"format": "pt"}
    labels = _labels_of(model)
    if labels:
        metadata["lora_hf_labels"] = json.dumps(labels, sort_keys=True)
    atomic_write_all(out, [(ADAPTER_WEIGHTS_NAME, lambda tmp: write_bytes(tmp, save(tensors, metadata=metadata))),
                           (ADAPTER_CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"))])
    return out


def _trained_modules(model, lora: dict) -> set:
    """The backbone modules owning a non-LoRA tensor an adapter-only save would hold; `ValueError` if one also carries LoRA."""
    backbone = model.backbone
    # Every non-LoRA tensor an adapter-only save would hold, under each name it has (tied weights have two).
    aliases = {}
    for name, param in backbone.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    params = dict(backbone.named_parameters(remove_duplicate=False))
    extra_modules = set()
    for key in model.adapter_state_keys():
        if key.endswith((".lora_A", ".lora_B")):
            continue
        name = key[len("backbone.") :]
        for alias in aliases.get(id(params[name]), [name]) if name in params else [name]:
            owner = alias.rpartition(".")[0]
            if owner in lora:
                raise ValueError(
                    f"`{alias}` was trained and belongs to a module that also carries LoRA ({owner}); PEFT cannot save a "
                    "module as both a LoRA target and `modules_to_save`. Export the merged model (`lora-hf merge`) instead."
                )
            extra_modules.add(owner)
    return extra_modules


def _modules_to_save(backbone, lora: dict, extra_modules: set, task_type: str | None) -> tuple:
    """`(modules_to_save for the config, every module PEFT will wrap and save whole)`, checked against PEFT's suffix matching."""
    task_heads = list(PEFT_TASK_HEADS.get(task_type, ()))
    wrapped = _peft_wrapped_modules(backbone, sorted(extra_modules) + task_heads)
    # A module inside another wrapped one (RoBERTa's classifier.dense inside `classifier`) is saved with its
    # parent; naming it too would make PEFT wrap it a second time, inside the first wrapper.
    wrapped = [name for name in wrapped if not any(name.startswith(other + ".") for other in wrapped)]
    modules_to_save = sorted(extra_modules & set(wrapped))
    if _peft_wrapped_modules(backbone, modules_to_save + task_heads) != wrapped:
        raise ValueError(f"PEFT's suffix matching of `modules_to_save` {modules_to_save} would wrap other modules than {wrapped}.")
    for name in wrapped:
        inside = [m for m in lora if m == name or m.startswith(name + ".")]
        if inside:
            raise ValueError(f"PEFT would save module `{name}` whole, but it holds LoRA layers {inside[:4]}; export the merged model instead.")
    return modules_to_save, wrapped


def _peft_tensors(backbone, lora: dict, wrapped: list) -> dict:
    """The adapter file's tensors under PEFT's names: the LoRA pairs, then each wrapped module's whole state."""
    tensors = {}
    for name, layer in sorted(lora.items()):
        if type(layer).__name__ == "LoraEmbedding":
            tensors[f"{PEFT_PREFIX}{name}.lora_embedding_A"] = layer.lora_A
            tensors[f"{PEFT_PREFIX}{name}.lora_embedding_B"] = layer.lora_B
        else:
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B
    for name in wrapped:
        for key, value in backbone.get_submodule(name).state_dict().items():
            tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    # Clones: a tied weight appears under two keys, and safetensors refuses tensors that share memory.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def _adapter_config(model, lora: dict, modules_to_save: list, base_model_name_or_path: str | None) -> dict:
    """PEFT's `adapter_config.json` for `model`'s adapters, with the PEFT features lora_hf lacks switched off."""
    config = model.config
    return {
        "peft_type": "LORA",
        "task_type": model.peft_task_type,
        "base_model_name_or_path": base_model_name_or_path or config.base_model_name_or_path,
        "revision": None,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        # Full module names: exact, where suffixes such as `c_proj` would also catch GPT-2's MLP.
        "target_modules": sorted(lora),
        "fan_in_fan_out": any(getattr(layer, "fan_in_fan_out", False) for layer in lora.values()),
        "bias": "none",
        "modules_to_save": modules_to_save or None,
        "init_lora_weights": "gaussian" if config.init_lora_weights == "gaussian" else True,
        "inference_mode": True,
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


# ----- PEFT -> lora_hf --------------------------------------------------------------------------
def read_peft_adapter(peft_dir) -> tuple:
    """`(adapter_config: dict, tensors: dict)` of a PEFT LoRA adapter directory, checked for what lora_hf can hold."""
    peft_dir = Path(peft_dir)
    if not peft_dir.is_dir():
        raise OSError(f"{str(peft_dir)!r} is not a directory; pass a directory written by PEFT's `save_pretrained`.")
    config_file, weights_file = peft_dir / ADAPTER_CONFIG_NAME, peft_dir / ADAPTER_WEIGHTS_NAME
    if not config_file.is_file():
        raise OSError(f"{str(peft_dir)!r} has no {ADAPTER_CONFIG_NAME}: it is not a PEFT adapter directory.")
    if not weights_file.is_file():
        pickled = " (only the pickled adapter_model.bin, which lora_hf does not load)" if (peft_dir / "adapter_model.bin").is_file() else ""
        raise OSError(f"{str(peft_dir)!r} has no {ADAPTER_WEIGHTS_NAME}{pickled}; save the adapter with safetensors.")
    try:
        adapter_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise OSError(f"{config_file} is not readable JSON ({err}).") from None
    if not isinstance(adapter_config, dict):
        raise ValueError(f"{config_file} holds a JSON {type(adapter_config).__name__}, not an object of config fields.")
    if adapter_config.get("peft_type") != "LORA":
        raise ValueError(f"{config_file} has `peft_type` {adapter_config.get('peft_type')!r}; lora_hf imports LoRA adapters ('LORA') only.")
    for field, what in _UNSUPPORTED.items():
        if adapter_config.get(field):
            raise ValueError(f"The adapter uses {what} (`{field}` = {adapter_config[field]!r}), which lora_hf cannot represent.")
    if adapter_config.get("bias", "none") != "none":
        raise ValueError(f"The adapter trains biases (`bias` = {adapter_config['bias']!r}); lora_hf imports adapters with `bias` 'none' only.")
    if adapter_config.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise ValueError(
            f"The adapter was initialised with `init_lora_weights` = {adapter_config['init_lora_weights']!r}, which changes the "
            "base weights; lora_hf imports adapters trained on an unmodified base only."
        )
    tensors = read_safetensors(weights_file)[0]
    outside = [k for k in tensors if not k.startswith(PEFT_PREFIX)]
    if outside:
        raise ValueError(f"{weights_file} has keys outside `{PEFT_PREFIX}` ({outside[:4]}); it is not a LoRA adapter of a transformers model.")
    return adapter_config, tensors


_LORA_KEY = re.compile(r"(?P<module>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<emb>[AB]))")


def _split_tensors(tensors: dict) -> tuple:
    """`({module: {"A": t, "B": t}}, {name: tensor})`: LoRA pairs by module, and every other tensor by its base name."""
    lora, others = {}, {}
    for key, tensor in tensors.items():
        name = key[len(PEFT_PREFIX) :]
        found = _LORA_KEY.fullmatch(name)
        if found:
            lora.setdefault(found["module"], {})[found["ab"] or found["emb"]] = tensor
        elif ".lora_" in name:
            raise ValueError(f"Unrecognised LoRA tensor `{key}`; expected `<module>.lora_A.weight`/`lora_B.weight` or `lora_embedding_A`/`B`.")
        else:
            others[name] = tensor
    incomplete = [m for m, pair in lora.items() if set(pair) != {"A", "B"}]
    if incomplete:
        raise ValueError(f"The adapter has lora_A without lora_B (or the reverse) for {incomplete[:4]}.")
    return lora, others


def _labels_of(model) -> dict:
    """The head's labels (`id2label`, `label2id`, `problem_type`) as config.json writes them; empty for LM heads."""
    if type(model).__name__ not in ("LoraForSequenceClassification", "LoraForTokenClassification"):
        return {}
    config = model.config
    labels = {"id2label": {str(k): v for k, v in (config.id2label or {}).items()}, "label2id": dict(config.label2id or {})}
    if config.problem_type:
        labels["problem_type"] = config.problem_type
    return labels


def peft_label_kwargs(peft_dir) -> dict:
    """The labels `save_peft_adapter` recorded, as keyword arguments for transformers' own loading of the adapter.

    PEFT's format has no place for them, so transformers builds the head with the base's label count unless told:

    Example:
        >>> AutoModelForSequenceClassification.from_pretrained("demo-peft", **peft_label_kwargs("demo-peft"))
    """
    metadata = read_safetensors(Path(peft_dir) / ADAPTER_WEIGHTS_NAME, tensors=False)[1]
    if "lora_hf_labels" not in metadata:
        return {}
    try:
        labels = json.loads(metadata["lora_hf_labels"])
        labels["id2label"] = {int(k): str(v) for k, v in labels["id2label"].items()}
        labels["label2id"] = {str(k): int(v) for k, v in labels["label2id"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"The `lora_hf_labels` metadata of {peft_dir}/{ADAPTER_WEIGHTS_NAME} is malformed.") from None
    return {k: v for k, v in labels.items() if k in ("id2label", "label2id", "problem_type")}


def _label_kwargs(model_class, base, others: dict, kwargs: dict, peft_dir=None) -> dict:
    """The saved labels (lora_hf's export records them), else `num_labels` from the saved head's shape when the
    base's own config has another count (PEFT does not save it)."""
    if "num_labels" in kwargs or "id2label" in kwargs or not others:
        return {}
    recorded = peft_label_kwargs(peft_dir) if peft_dir is not None else {}
    if recorded:
        return recorded
    from transformers import AutoConfig

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}  # as from_base_model passes them for the same base
    base_config = AutoConfig.from_pretrained(base, **hub)
    counts = [base_config.num_labels] + sorted({t.shape[0] for t in others.values() if t.dim() == 2} - {base_config.num_labels})
    for count in counts:
        candidate = AutoConfig.from_pretrained(base, num_labels=count, **hub)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in model_class.backbone_auto_class.from_config(candidate).state_dict().items()}
        if all(shapes.get(k) == tuple(t.shape) for k, t in others.items()):
            return {} if count == base_config.num_labels else {"num_labels": count}
    return {}


def load_peft_adapter(model_class: type, peft_dir: str | Path, base_model_name_or_path: str | None = None,
                      **kwargs) -> LoraPreTrainedModel:
    """A `model_class` (a lora_hf class) holding the PEFT adapter in `peft_dir` on its base model.

    The base comes from the adapter's `base_model_name_or_path` unless `base_model_name_or_path=`
    points elsewhere; `kwargs` go to `from_base_model` (e.g. `num_labels`, `dtype`). The modules PEFT
    saved whole (`modules_to_save`: the head, ...) are loaded and kept with the adapters on save.
    """
    adapter_config, tensors = read_peft_adapter(peft_dir)
    base = base_model_name_or_path or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"The adapter in {str(peft_dir)!r} names no base model (`base_model_name_or_path` is empty); pass "
            "`base_model_name_or_path=` with the base model's Hub id or local directory."
        )
    lora, others = _split_tensors(tensors)
    if not lora:
        raise ValueError(f"{str(peft_dir)!r} holds no LoRA tensors.")
    options = _lora_options(adapter_config, lora)
    model = _model_on_base(model_class, base, peft_dir, others, options, kwargs)
    _copy_adapter(model, lora, others, base)
    random = sorted(k for k in model.newly_initialized_keys if k[len("backbone.") :] not in others)
    if random:
        logger.warning(
            f"The base model {base!r} lacks {random[:6]}{' ...' if len(random) > 6 else ''} and the adapter does not hold "
            "them either: they start random, so outputs differ from PEFT's model on that base. Use a base that has them."
        )
    _keep_saved_modules(model, others)
    return model.eval()


def _lora_options(adapter_config: dict, lora: dict) -> dict:
    """`from_base_model`'s LoRA arguments for the adapter; `ValueError` if its tensors disagree on the rank."""
    ranks = {pair["A"].shape[0] for pair in lora.values()}
    r = adapter_config.get("r", next(iter(ranks)))
    if ranks != {r}:
        raise ValueError(f"The adapter's tensors have ranks {sorted(ranks)} but its config says `r` = {r!r}; lora_hf holds one rank.")
    return {
        "r": r,
        "lora_alpha": adapter_config.get("lora_alpha", 8),
        "lora_dropout": adapter_config.get("lora_dropout", 0.0),
        "target_modules": sorted(lora),
        "use_rslora": bool(adapter_config.get("use_rslora", False)),
        "init_lora_weights": "gaussian" if adapter_config.get("init_lora_weights") == "gaussian" else "kaiming",
    }


def _model_on_base(model_class, base: str, peft_dir, others: dict, options: dict, kwargs: dict):
    """`model_class` built on `base` with the adapter's LoRA options and head size; `OSError` naming the base if it cannot load."""
    try:
        label_kwargs = _label_kwargs(model_class, base, others, kwargs, peft_dir)
        # The base's load report would call the head "newly initialized"; the adapter supplies it (checked below).
        with quiet_transformers():
            return model_class.from_base_model(base, **options, **label_kwargs, **kwargs)
    except OSError as err:
        raise OSError(
            f"Could not load the base model {base!r} of the adapter in {str(peft_dir)!r} ({str(err).splitlines()[0]}). "
            "Point to a local copy with `base_model_name_or_path=\"/path/to/base\"`."
        ) from None


def _copy_adapter(model, lora: dict, others: dict, base: str) -> None:
    """Copy the LoRA pairs and PEFT's whole-module tensors into `model`; `ValueError` listing every one that does not fit."""
    backbone = model.backbone
    own = dict(backbone.state_dict(keep_vars=True))
    problems = []
    with torch.no_grad():
        for module, pair in lora.items():
            layer = backbone.get_submodule(module)
            for side, target in (("A", layer.lora_A), ("B", layer.lora_B)):
                if tuple(pair[side].shape) != tuple(target.shape):
                    problems.append(f"{module} lora_{side}: adapter {tuple(pair[side].shape)}, base {tuple(target.shape)}")
                else:
                    target.copy_(pair[side])
        for name, tensor in others.items():
            if name not in own:
                problems.append(f"{name}: no such tensor in {type(backbone).__name__}")
            elif tuple(own[name].shape) != tuple(tensor.shape):
                problems.append(f"{name}: adapter {tuple(tensor.shape)}, base {tuple(own[name].shape)}")
            else:
                own[name].copy_(tensor)
    if problems:
        raise ValueError(f"The adapter does not fit the base model {base!r}: {problems[:6]}{' ...' if len(problems) > 6 else ''}.")


def _keep_saved_modules(model, others: dict) -> None:
    """Record PEFT's whole-module tensors as trained groups, so the adapter-only save keeps them (and requires them)."""
    if not others:
        return
    names = {f"backbone.{n}" for n in others}
    head = model.group_parameter_names("head")
    groups = []
    if names & head:
        groups.append("head")
    rest = sorted({n.rpartition(".")[0] for n in names - head})
    if rest:
        groups.append("re:^(?:" + "|".join(re.escape(m) for m in rest) + r")\.")
    model.mark_trained(groups)


# ----- the commands -----------------------------------------------------------------------------
def export_main(argv: list | None = None) -> int:
    parser = command_parser(
        "export-peft",
        "Write the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors), loadable with "
        "peft.PeftModel.from_pretrained(base, OUT). The tokenizer beside the model is copied too.",
        "  lora-hf export-peft runs/demo demo-peft\n"
        "  python -c \"from peft import PeftModel; ...; PeftModel.from_pretrained(base, 'demo-peft')\"",
        io={"source": ("model_dir", MODEL_DIR_HELP),
            "output_dir": "Where to write the PEFT adapter (new or empty directory).",
            "base_model_name_or_path": "Load the base from here instead of the path in config.json; also recorded in "
                                       "adapter_config.json (use a Hub id there to share the adapter)."},
    )

    def action(args):
        out = check_output_dir(args.output_dir, args.model_dir, args.overwrite)
        model = load_model_dir(args.model_dir, args.base_model_name_or_path)
        save_peft_adapter(model, out, args.base_model_name_or_path)
        copy_tokenizer_files(args.model_dir, out)
        print(f"Wrote the PEFT adapter to {out}")
        labels = peft_label_kwargs(out)
        if labels:
            auto = type(model).backbone_auto_class.__name__  # the head's Auto class, declared on it
            print(f"transformers loads it with its {len(labels['id2label'])} labels: "
                  f"{auto}.from_pretrained({str(out)!r}, **lora_hf.peft_interop.peft_label_kwargs({str(out)!r}))")

    return run_command("export-peft", parser, argv, action)


def _class_for(adapter_config: dict, base: str | None, head: str | None):
    if head:
        return head_class(head)
    task_type = adapter_config.get("task_type")
    by_task = {cls.peft_task_type: cls for cls in HEAD_CLASSES if cls.peft_task_type}
    if task_type in by_task:
        return by_task[task_type]
    if task_type not in (None, ""):
        raise ValueError(f"The adapter has `task_type` {task_type!r}, which no lora_hf class serves; choose one with --head.")
    # No task type: the plain PeftModel, on whatever the base model is; its class name says the head
    # (BertForMaskedLM: "ForMaskedLM" as in AutoModelForMaskedLM; GPT-2's LMHeadModel is a causal LM).
    from transformers import AutoConfig

    architecture = ((AutoConfig.from_pretrained(base).architectures or [""])[0]) if base else ""
    for cls in HEAD_CLASSES:
        suffix = cls.backbone_auto_class.__name__.removeprefix("AutoModel")
        if suffix and architecture.endswith(suffix) or (cls.pipeline_tag == "text-generation" and architecture.endswith("LMHeadModel")):
            return cls
    return head_class("LoraModel")


def import_main(argv: list | None = None) -> int:
    parser = command_parser(
        "import-peft",
        "Turn a PEFT LoRA adapter directory into a lora_hf model directory (adapter-only save; the base is loaded from "
        "the adapter's base_model_name_or_path). The class follows the adapter's task_type unless --head says otherwise.",
        "  lora-hf import-peft my-peft-adapter my-lora\n"
        "  lora-hf import-peft my-peft-adapter my-lora --base_model_name_or_path ./bert-base-uncased --head LoraForMaskedLM",
        io={"source": ("peft_dir", "A directory with adapter_config.json and adapter_model.safetensors."),
            "output_dir": "Where to write the lora_hf model (new or empty directory).",
            "base_model_name_or_path": "Load the base from here instead of the adapter's base_model_name_or_path."},
    )
    parser.add_argument("--head", choices=sorted(cls.__name__ for cls in HEAD_CLASSES), help="The lora_hf class to build (default: from the adapter's task_type).")

    def action(args):
        adapter_config, _ = read_peft_adapter(args.peft_dir)
        out = check_output_dir(args.output_dir, args.peft_dir, args.overwrite)
        base = args.base_model_name_or_path or adapter_config.get("base_model_name_or_path")
        model_class = _class_for(adapter_config, base, args.head)
        model = load_peft_adapter(model_class, args.peft_dir, base_model_name_or_path=args.base_model_name_or_path)
        model.save_pretrained(out)
        copy_tokenizer_files(args.peft_dir, out)
        print(f"Wrote the lora_hf model ({model_class.__name__}) to {out}")

    return run_command("import-peft", parser, argv, action)
