"""How `from_pretrained` loads a lora_hf model: its arguments, the base model under an adapter-only save, and placement.

Travels with a saved model's code (`CODE_FILES`); imports only torch, transformers and the other travelling files.
"""

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from .checkpoint_lora import WEIGHTS_NAME, base_fingerprint, load_saved_tensors, read_safetensors, same_base, short_fingerprint
from .configuration_lora import LoraConfig
from .lora_layers import lora_layers, zero3_gathered

logger = logging.get_logger(__name__)

__all__ = ["load_pretrained", "load_base_model", "check_base_weights", "quiet_transformers", "HUB_KWARGS"]

_CONFIG_OVERRIDES = ("num_labels", "id2label", "label2id", "problem_type")
# from_pretrained's arguments, as PreTrainedModel.from_pretrained documents them: what goes to the base's load,
# to the Hub, what does not apply to safetensors-only LoRA checkpoints, and what cannot apply here (and why).
_BACKBONE_LOAD_KWARGS = ("attn_implementation", "experts_implementation", "low_cpu_mem_usage", "max_memory", "offload_folder",
                         "offload_buffers", "disable_mmap")
# from_base_model passes these to the base's from_pretrained.
BASE_LOAD_KWARGS = _BACKBONE_LOAD_KWARGS + ("dtype", "torch_dtype", "device_map", "ignore_mismatched_sizes")
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_IGNORED_LOAD_KWARGS = ("trust_remote_code", "_from_auto", "_from_pipeline", "code_revision", "weights_only", "tqdm_class",
                        "adapter_name", "adapter_kwargs", "_commit_hash")
_UNSUPPORTED_LOAD_KWARGS = {
    "quantization_config": "LoRA layers here wrap nn.Linear/Conv1D weights; quantized bases are not supported.",
    "gguf_file": "lora_hf reads safetensors only.",
    "variant": "lora_hf writes one model.safetensors, without variants.",
    "distributed_config": "load the model, then shard it with accelerate / the Trainer (FSDP, DeepSpeed).",
    "tp_plan": "tensor parallelism is not supported for LoRA layers.",
    "tp_size": "tensor parallelism is not supported for LoRA layers.",
    "device_mesh": "tensor parallelism is not supported for LoRA layers.",
    "use_kernels": "hub kernels would replace the layers LoRA wraps.",
    "kernel_config": "hub kernels would replace the layers LoRA wraps.",
    "key_mapping": "lora_hf checkpoints use the model's own keys.",
    "fusion_config": "fused layers would replace the layers LoRA wraps.",
}


@contextlib.contextmanager
def quiet_transformers():
    """transformers' logging at ERROR for the block, restored after (errors still show)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


@dataclass
class _LoadOptions:
    """`from_pretrained`'s keyword arguments, sorted by where they go."""

    device_map: object
    dtype: object
    hub: dict
    backbone: dict
    generation_config: object
    overrides: dict


def _sort_load_kwargs(cls, kwargs: dict) -> _LoadOptions:
    from transformers.integrations.accelerate import check_and_set_device_map

    if kwargs.pop("use_safetensors", None) is False:
        raise ValueError("`use_safetensors=False`: lora_hf reads safetensors only.")
    for name, why in _UNSUPPORTED_LOAD_KWARGS.items():
        if kwargs.pop(name, None) not in (None, False, {}, ""):
            raise ValueError(f"{cls.__name__}.from_pretrained does not support `{name}`: {why}")
    for ignored in _IGNORED_LOAD_KWARGS:
        kwargs.pop(ignored, None)
    return _LoadOptions(
        # Refuses a meta-device context as transformers does, and turns a device context into a device map.
        device_map=check_and_set_device_map(kwargs.pop("device_map", None)),
        dtype=resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)),
        hub={k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs},
        backbone={k: kwargs.pop(k) for k in _BACKBONE_LOAD_KWARGS if k in kwargs},
        generation_config=kwargs.pop("generation_config", None),
        overrides=kwargs,  # what is left: config fields, as transformers passes leftover kwargs to the config
    )


def _apply_overrides(cls, config: LoraConfig, options: _LoadOptions, path) -> None:
    for key, value in options.overrides.items():
        if key not in _CONFIG_OVERRIDES and not hasattr(config, key):
            raise ValueError(
                f"{cls.__name__}.from_pretrained got unknown arguments: {sorted(options.overrides)} (neither loading arguments "
                "nor fields of the config or its backbone_config)."
            )
        setattr(config, key, value)
    if options.backbone.get("attn_implementation") is not None:
        config._attn_implementation = options.backbone["attn_implementation"]
    if options.backbone.get("experts_implementation") is not None:
        config._experts_implementation = options.backbone["experts_implementation"]
    if path is not None:
        config._name_or_path = str(path)  # model.name_or_path, as transformers sets it


def _read_weights(cls, path, config: LoraConfig, state_dict: dict | None, base: str | None, hub_kwargs: dict) -> tuple:
    """`(state, metadata, format, loose)`: the tensors to load and how to read them."""
    if state_dict is not None:  # the model's own state dict, in place of the file's tensors
        state, metadata = dict(state_dict), {"lora_hf_format": "full", "base_prefix": prefix_of(cls, config), "architecture": cls.__name__}
        if path is not None:
            metadata = read_safetensors(resolve_file(path, WEIGHTS_NAME, hub_kwargs))[1] or metadata
    elif path is None:
        raise ValueError(f"{cls.__name__}.from_pretrained needs a directory or Hub id, or `config=` with `state_dict=`.")
    else:
        state, metadata = read_safetensors(resolve_file(path, WEIGHTS_NAME, hub_kwargs))
    fmt = metadata.get("lora_hf_format")
    loose = fmt is None  # not written by lora_hf: load what fits and report the rest, as transformers does
    if loose:
        fmt = "adapter" if (base or config.base_model_name_or_path) else "full"
        metadata = {**metadata, "base_prefix": prefix_of(cls, config), "architecture": cls.__name__}
    if fmt not in ("adapter", "full"):
        raise ValueError(f"The weights of {str(path)!r} have `lora_hf_format` {fmt!r} in their metadata; lora_hf writes 'adapter' or 'full'.")
    return state, metadata, fmt, loose


def load_pretrained(cls, path, config=None, base_model_name_or_path: str | None = None, ignore_base_mismatch: bool = False,
                    ignore_mismatched_sizes: bool = False, output_loading_info: bool = False, state_dict: dict | None = None,
                    **kwargs):
    """`cls.from_pretrained(path, ...)` (see `LoraPreTrainedModel.from_pretrained`): the model, and its loading info if asked."""
    options = _sort_load_kwargs(cls, kwargs)
    config = config_for_loading(cls, path, config, options.hub)
    _apply_overrides(cls, config, options, path)
    state, metadata, fmt, loose = _read_weights(cls, path, config, state_dict, base_model_name_or_path, options.hub)
    if fmt == "full":
        model = cls(config)
        if options.dtype not in (None, "auto"):
            model.to(options.dtype)
        elif options.dtype == "auto":
            model.to(saved_dtype(state, config))
    else:
        model = build_on_base(cls, path, config, base_model_name_or_path, ignore_base_mismatch, ignore_mismatched_sizes,
                              options.dtype, options.device_map, options.backbone, options.hub)
    info = load_saved_tensors(model, state, metadata, strict_full=fmt == "full", ignore_mismatched_sizes=ignore_mismatched_sizes, loose=loose)
    if fmt == "full":
        place(model, options.device_map, options.backbone.get("max_memory"))
    load_generation_config(model, path, options.generation_config, options.hub)
    model.eval()
    return (model, info) if output_loading_info else model


def config_for_loading(cls, path, config, hub_kwargs: dict) -> LoraConfig:
    """The config a `cls.from_pretrained` call loads into: read from `path` (or `config=`), never the caller's object."""
    if config is None or isinstance(config, (str, os.PathLike)):
        source = config if config is not None else path
        if source is None:
            raise ValueError(f"{cls.__name__}.from_pretrained needs a directory or Hub id, or `config=`.")
        check_local_path(source)
        return LoraConfig.from_pretrained(source, **hub_kwargs)
    if getattr(config, "model_type", None) != LoraConfig.model_type:
        raise ValueError(f"`config` must be a LoraConfig (model_type 'lora'), got {type(config).__name__} (model_type {config.model_type!r}).")
    if not isinstance(config, LoraConfig):
        # The same class loaded from another copy of this file (remote code loads each module on its own).
        return LoraConfig.from_dict(config.to_dict())
    return copy.deepcopy(config)  # never mutate the caller's config


def build_on_base(cls, path, config, base_model_name_or_path, ignore_base_mismatch, ignore_mismatched_sizes,
                   dtype, device_map, load_kwargs, hub_kwargs):
    """Load the base an adapter-only save names, in the dtype and on the devices asked for, and wrap it."""
    base = base_model_name_or_path or config.base_model_name_or_path
    if not base:
        raise ValueError(
            f"{path!r} holds adapters only and its config names no base model; pass "
            "`base_model_name_or_path=` with the base model's Hub id or local directory."
        )
    base_config = config.backbone_config
    vocab_size = base_config.get_text_config().vocab_size
    resized = config.base_vocab_size is not None and config.base_vocab_size != base_config.get_text_config().vocab_size
    if resized:  # the base checkpoint has its own vocabulary size; the added rows come from our file
        base_config = copy.deepcopy(base_config)
        base_config.get_text_config().vocab_size = config.base_vocab_size
    extra = {k: v for k, v in load_kwargs.items() if k not in ("experts_implementation",) and v is not None}
    if dtype is not None:
        extra["dtype"] = dtype
    if device_map is not None:
        extra["device_map"] = device_map
    # The head and other tensors the base lacks come from our file: the base's load report
    # ("newly initialized") would be wrong, so keep it quiet.
    with quiet_transformers():
        try:
            check_base_weights(base)
            backbone, info = cls.backbone_auto_class.from_pretrained(
                base, config=base_config, output_loading_info=True, ignore_mismatched_sizes=ignore_mismatched_sizes,
                use_safetensors=True, **extra, **base_hub_kwargs(hub_kwargs),
            )
        except OSError as err:
            raise OSError(
                f"Could not load the base model {base!r} that the adapters in {str(path)!r} "
                f"were trained on ({err}). Point to a local copy with `base_model_name_or_path=\"/path/to/base\"`."
            ) from None
        except RuntimeError as err:  # transformers refuses base tensors whose shapes differ from the saved backbone config
            raise ValueError(
                f"The base model {base!r} does not fit the adapters in {str(path)!r}: its tensor "
                f"shapes differ from those of the base they were trained on{_size_differences(base, base_config, hub_kwargs)} "
                f"({str(err).splitlines()[0]}). Load the base they were trained on; `ignore_base_mismatch` cannot bridge shapes."
            ) from None
    model = cls(config, backbone=backbone)
    model.set_newly_initialized(info)
    if base_model_name_or_path:
        config.base_model_name_or_path = str(base_model_name_or_path)
    expected = config.base_fingerprint
    if expected and not ignore_base_mismatch:
        with zero3_gathered([layer.weight for _, layer in lora_layers(model.backbone)]):
            same = same_base(model, expected)
            found = None if same else base_fingerprint(model)
        if not same:
            raise ValueError(
                f"The base model {base!r} is not the one these adapters were trained on (fingerprint "
                f"{short_fingerprint(found)} != saved {short_fingerprint(expected)}). Load the right "
                "base, or pass `ignore_base_mismatch=True` to load anyway."
            )
    if resized:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def load_generation_config(model, path, generation_config, hub_kwargs: dict) -> None:
    """The saved generation settings (`generation_config.json`), or the `generation_config` argument."""
    if not model.can_generate():
        return
    if generation_config is None and path is not None:
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(path, **hub_kwargs)
        except OSError:  # saved before lora_hf wrote one, or by a model that cannot generate
            return
    if generation_config is not None:
        model.generation_config = generation_config


def resolve_file(name_or_path, filename: str, hub_kwargs: dict) -> str:
    subfolder = hub_kwargs.get("subfolder") or ""
    local = Path(name_or_path) / subfolder / filename
    if Path(name_or_path).is_dir():
        if not local.is_file():
            raise OSError(f"{str(name_or_path)!r} has no {filename}; is it a directory written by `save_pretrained`?")
        return str(local)
    from huggingface_hub import hf_hub_download  # a dependency of transformers

    return hf_hub_download(str(name_or_path), filename, **hub_kwargs)


def check_base_weights(name_or_path, subfolder: str = "") -> None:
    """Refuse a local base directory whose weights are not safetensors, naming its files: nothing is unpickled."""
    directory = Path(name_or_path) / subfolder
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl"))
    found = f"holds its weights as {others}" if others else "holds no weights file"
    raise OSError(
        f"The base model directory {str(directory)!r} {found}, and lora_hf reads safetensors only (no pickle is loaded, "
        "not even with weights_only): save the base with `save_pretrained(..., safe_serialization=True)` from a copy you "
        "trust, or pass its Hub id."
    )


def check_local_path(name_or_path) -> None:
    text = str(name_or_path)
    looks_local = isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local and not os.path.exists(text):
        raise OSError(f"{text!r} does not exist; pass a directory written by `save_pretrained` or a Hub repo id ('user/name').")


def _size_differences(base, saved_config, hub_kwargs: dict) -> str:
    """`" (hidden_size 64, trained on 32)"`: the integer config fields where `base` differs from the saved backbone."""
    from transformers import AutoConfig

    try:
        own = AutoConfig.from_pretrained(base, **base_hub_kwargs(hub_kwargs)).to_dict()
    except (OSError, ValueError):
        return ""
    saved = saved_config.to_dict()
    diffs = [
        f"{k} {v}, trained on {saved[k]}"
        for k, v in sorted(own.items())
        if isinstance(v, int) and not isinstance(v, bool) and isinstance(saved.get(k), int) and saved[k] != v
    ]
    return f" ({'; '.join(diffs[:6])})" if diffs else ""


def base_hub_kwargs(hub_kwargs: dict) -> dict:
    # The subfolder and revision belong to the adapter repo, not to the base model's.
    return {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "force_download", "local_files_only", "token")}


def resolve_dtype(dtype, torch_dtype):
    """`dtype` (or the older `torch_dtype`) as a torch dtype, `"auto"`, or None, as transformers reads it."""
    value = dtype if dtype is not None else torch_dtype
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise ValueError(f"`dtype` must be a torch dtype, the name of one ('bfloat16') or 'auto', got {value!r}.")


def saved_dtype(state: dict, config) -> torch.dtype:
    """`dtype="auto"`: the config's dtype, else that of the first floating tensor saved, as transformers does."""
    if isinstance(getattr(config, "dtype", None), torch.dtype):
        return config.dtype
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.get_default_dtype())


def place(model: nn.Module, device_map, max_memory) -> None:
    """Put a model built here (the full layout) where `device_map` says: one device, or dispatched by accelerate."""
    if device_map is None:
        return
    if isinstance(device_map, dict) and len({str(d) for d in device_map.values()}) == 1:
        model.to(next(iter(device_map.values())))
        return
    from transformers.integrations.accelerate import accelerate_dispatch, infer_auto_device_map  # accelerate underneath

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=set(model._no_split_modules))
    if "disk" in set(map(str, device_map.values())):
        raise ValueError("`device_map` offloads to disk: save the adapter-only layout, whose base loads with any device_map.")
    accelerate_dispatch(model, None, device_map, None, None, False)


def prefix_of(cls, config) -> str:
    """The attribute a `cls` backbone keeps its base model under (`bert`), as `base_prefix` reads it off a model."""
    with torch.device("meta"):
        skeleton = cls.backbone_auto_class.from_config(copy.deepcopy(config.backbone_config))
    prefix = getattr(skeleton, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(skeleton, prefix, None), nn.Module) else ""


def load_base_model(cls, base_model_name_or_path: str, lora: dict, backbone_kwargs: dict):
    """`cls.from_base_model(...)`: the pretrained base with fresh adapters (`lora`: the LoRA fields of `LoraConfig`)."""
    from transformers import AutoConfig

    hub_kwargs = {k: backbone_kwargs.pop(k) for k in HUB_KWARGS if k in backbone_kwargs}
    load_kwargs = {k: backbone_kwargs.pop(k) for k in BASE_LOAD_KWARGS if k in backbone_kwargs}
    backbone_config, unused = AutoConfig.from_pretrained(
        base_model_name_or_path, return_unused_kwargs=True, **hub_kwargs, **backbone_kwargs
    )
    if unused:
        raise ValueError(f"`from_base_model` got arguments that are neither LoRA, loading nor config fields: {sorted(unused)}.")
    config = LoraConfig(
        backbone_config=backbone_config,
        base_model_name_or_path=str(base_model_name_or_path),
        **lora,
        id2label=backbone_config.id2label,
        label2id=backbone_config.label2id,
        problem_type=backbone_config.problem_type,
    )
    cls.check_target_modules(config)
    check_base_weights(base_model_name_or_path, hub_kwargs.get("subfolder") or "")
    # transformers' load report (a table of MISSING keys, "this checkpoint seem corrupted") reads as an
    # error for what is a plain fact here: the base lacks a head, which is created below. One line says so.
    with quiet_transformers():
        backbone, info = cls.backbone_auto_class.from_pretrained(
            base_model_name_or_path, config=backbone_config, output_loading_info=True, use_safetensors=True, **hub_kwargs, **load_kwargs
        )
    model = cls(config, backbone=backbone)
    model.set_newly_initialized(info)
    if model.newly_initialized_keys:
        logger.warning(
            f"{base_model_name_or_path} has no weights for {', '.join(_module_roots(model.newly_initialized_keys))}: "
            f"{cls.__name__} starts them fresh (random, {sum(model.get_parameter(k).numel() for k in model.newly_initialized_keys):,} "
            "parameters) and saves them with the adapters; a phase must train them (group `head`) before they mean anything."
        )
    with zero3_gathered([layer.weight for _, layer in lora_layers(model.backbone)]):
        config.base_fingerprint = model.base_fingerprint()
    return model


def _module_roots(keys: list) -> list:
    """The fewest module paths covering `keys`: `backbone.cls.predictions.transform.dense.weight` and
    `backbone.cls.predictions.bias` give `cls.predictions`."""
    modules = sorted({k.removeprefix("backbone.").rsplit(".", 1)[0] for k in keys})
    return [m for m in modules if not any(m.startswith(other + ".") for other in modules)]
