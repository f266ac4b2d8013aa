"""The lora_hf checkpoint format: what a save holds, the base fingerprint, the load plan, and staged writes.

`modeling_lora.py` keeps the model classes and merging, `phases_lora.py` the groups and phases; the models'
`save_pretrained` and `from_pretrained` (through `loading_lora.py`) call into this file. It travels with a saved model's code (`CODE_FILES`), so it imports only
torch, safetensors, transformers and the other travelling files.
"""

import base64
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from transformers.utils import logging

from .lora_layers import LoraLayer, full_tensor, lora_layers, unwrapped_name, weight_shape, zero3_gathered

logger = logging.get_logger(__name__)

__all__ = ["LoadPlan", "plan_load", "load_saved_tensors", "collect_tensors", "write_model_dir", "base_fingerprint", "same_base",
           "CheckpointMismatchError", "atomic_write", "atomic_write_text", "atomic_write_all", "WEIGHTS_NAME", "CONFIG_NAME", "CODE_FILES"]


WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# The modules saved beside config.json for `trust_remote_code`.
CODE_FILES = ("configuration_lora.py", "lora_layers.py", "checkpoint_lora.py", "loading_lora.py", "phases_lora.py", "modeling_lora.py")
GENERATION_CONFIG_NAME = "generation_config.json"
# Loading reports go to the logger transformers' own load reports use, so the same log settings apply to them.
LOAD_REPORT = logging.get_logger("transformers.modeling_utils")


class CheckpointMismatchError(ValueError, RuntimeError):
    """Saved tensors do not fit the model (transformers raises RuntimeError for size mismatches; lora_hf always raised ValueError)."""


# ----- key names ---------------------------------------------------------------------------------
def _key_conversions(model: nn.Module, keys) -> dict:
    """`{live key: checkpoint key}` for the `keys` transformers renames when it saves the backbone (GPT-NeoX's `lm_head`
    is `embed_out` in its checkpoints); saves use the checkpoint names, as `PreTrainedModel.save_pretrained` does.
    Reads module classes only, never the state dict: under FSDP that is a collective, and saves write on one rank."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without key conversions: the live names are the checkpoint names
        return {}
    live = {k: torch.empty(0) for k in keys}  # one distinct object per key, to follow each through the renaming
    by_object = {id(t): k for k, t in live.items()}
    try:
        saved = revert_weight_conversion(model, dict(live))
    except (RuntimeError, ValueError):  # a conversion that splits or merges tensors (experts) needs their values
        return {}
    return {by_object[id(t)]: k for k, t in saved.items() if id(t) in by_object and by_object[id(t)] != k}


def to_checkpoint_keys(model: nn.Module, tensors: dict) -> dict:
    renames = _key_conversions(model, tensors)
    return {renames.get(k, k): v for k, v in tensors.items()}


def from_checkpoint_keys(model: nn.Module, state: dict, own_keys) -> dict:
    """Saved keys to live ones; files saved with the live names (lora_hf 0.1.0) load unchanged."""
    back = {saved: live for live, saved in _key_conversions(model, own_keys).items()}
    return {back.get(k, k): v for k, v in state.items()}


# ----- the base fingerprint --------------------------------------------------------------------
def _fingerprint_samples(model) -> tuple:
    """`(names digest, samples)`: the wrapped layers' names and shapes, and a strided sample of their base weights."""
    digest = hashlib.sha256()
    prefix = model.base_prefix()
    layers = sorted(lora_layers(model.backbone))
    per_layer = max(4, 256 // max(1, len(layers)))
    samples = []
    for name, layer in layers:
        weight = layer.weight.detach()
        if weight.device.type == "meta":
            return None, None
        if layer.merged:
            weight = weight.float() - layer.delta_weight_fp32()
        flat = weight.reshape(-1)
        samples.append(flat[:: max(1, flat.numel() // per_layer)][:per_layer].float().cpu())
        if prefix and name.startswith(prefix + "."):
            name = name[len(prefix) + 1 :]
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
    return digest.hexdigest()[:16], torch.cat(samples) if samples else torch.zeros(0)

def base_fingerprint(model) -> str | None:
    """Identifies the base weights the adapters modify, whatever dtype or device they are loaded in.

    `v2:<digest of the wrapped layers' names and shapes>:<a strided sample of their weights, as bfloat16>`;
    `same_base` compares the samples to within bfloat16 rounding, so fp32, fp16 and bf16 loads of one base
    match and another base (or a fine-tuned one) does not.
    """
    digest, samples = _fingerprint_samples(model)
    if digest is None:
        return None
    data = base64.b64encode(samples.to(torch.bfloat16).view(torch.int16).numpy().tobytes()).decode()
    return f"v2:{digest}:{data}"

def same_base(model, expected: str) -> bool:
    """Whether the loaded base is the one `expected` (a saved `base_fingerprint`) was taken from."""
    digest, samples = _fingerprint_samples(model)
    if digest is None:  # offloaded weights: nothing to compare
        return True
    if not expected.startswith("v2:"):
        return _fingerprint_v1(model) == expected  # saved by lora_hf 0.1.0: exact, fp32 only
    try:
        _, saved_digest, data = expected.split(":", 2)
        raw = base64.b64decode(data.encode(), validate=True)
        saved = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16).float()
    except (ValueError, RuntimeError):
        raise ValueError(f"`base_fingerprint` in config.json is malformed: {short_fingerprint(expected)!r}.") from None
    if saved_digest != digest or saved.shape != samples.shape:
        return False
    # bfloat16 keeps 8 significant bits: a value rounded once (bf16) or twice (fp16, then bf16 here) is within 2**-8.
    return bool(torch.all((samples - saved).abs() <= 2**-6 * saved.abs() + 1e-6))

def _fingerprint_v1(model) -> str:
    """The fingerprint lora_hf 0.1.0 saved: a hash of rounded fp32 samples (changes with the load dtype)."""
    digest = hashlib.sha256()
    prefix = model.base_prefix()
    for name, layer in sorted(lora_layers(model.backbone)):
        weight = layer.weight.detach()
        if layer.merged:
            weight = weight - layer.delta_weight()
        flat = weight.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
        if prefix and name.startswith(prefix + "."):
            name = name[len(prefix) + 1 :]
        digest.update(f"{name}:{tuple(weight.shape)}:".encode())
        digest.update(sample.numpy().round(5).tobytes())
    return digest.hexdigest()[:16]


# ----- save --------------------------------------------------------------------------------------
def collect_tensors(model, state_dict: dict | None, save_base: bool) -> tuple:
    """`(tensors, full_state, new_rows)` a save of `model` writes: the adapter-only set (`adapter_state_keys`) or,
    with `save_base`, every tensor. Sharded tensors (FSDP2's DTensors) are gathered here, on every rank in the same
    order: the collective needs them all, so every rank calls this and one writes (`write_model_dir`)."""
    full_state = state_dict if state_dict is not None else model.state_dict()
    new_rows = {}
    if save_base:
        # named_parameters() lists a tied weight once: save it once, re-tied on load.
        keep = {unwrapped_name(n) for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers() if n in full_state}
    else:
        keep = set(model.adapter_state_keys())
        new_rows = {k: rows for k, rows in new_token_rows(model).items() if k in full_state}
    tensors = {k: full_tensor(v).detach().contiguous() for k, v in sorted(full_state.items()) if k in keep}
    for key, rows in new_rows.items():  # tokens added to the base's vocabulary: their rows only
        tensors[key] = tensors.get(key, full_tensor(full_state[key]).detach())[-rows:].contiguous()
    return tensors, full_state, new_rows


def write_model_dir(model, save_directory, tensors: dict, full_state: dict, new_rows: dict, save_base: bool) -> None:
    """Write `model.safetensors`, the code files, the generation config and `config.json` (last), each staged and renamed."""
    for name, layer in lora_layers(model):
        # A merged layer's weight holds W + scale * B @ A, and lora_A / lora_B are saved too: save W,
        # or the loaded (unmerged) model would add the update twice.
        key = f"{unwrapped_name(name)}.weight"
        if layer.merged and key in tensors and full_state[key].data_ptr() == layer.weight.data_ptr():
            tensors[key] = (layer.weight.float() - layer.delta_weight_fp32()).to(layer.weight.dtype).detach()
    tensors = to_checkpoint_keys(model, tensors)
    architecture = model.lora_class().__name__
    metadata = {"format": "pt", "lora_hf_format": "full" if save_base else "adapter", "base_prefix": model.base_prefix(),
                "architecture": architecture}
    if new_rows:
        metadata["lora_hf_new_rows"] = json.dumps(new_rows, sort_keys=True)
    # Serialised in memory, then written by Python: a full disk is then an OSError with its errno (safetensors'
    # own writer reports it only inside a message). Costs one copy of the file in memory: kilobytes for adapters.
    files = [(WEIGHTS_NAME, lambda tmp: write_bytes(tmp, save(tensors, metadata=metadata)))]
    here = Path(__file__).parent
    files += [(name, lambda tmp, src=here / name: shutil.copyfile(src, tmp)) for name in CODE_FILES]
    if model.can_generate() and model.generation_config is not None:
        files.append((GENERATION_CONFIG_NAME, lambda tmp: model.generation_config.to_json_file(tmp, use_diff=True)))
    model.config.architectures = [architecture]
    model.config.auto_map = model.auto_map_entries()
    if isinstance(model.dtype, torch.dtype):
        model.config.dtype = model.dtype  # as transformers records it: `dtype="auto"` loads it back
    files.append((CONFIG_NAME, lambda tmp: model.config.to_json_file(tmp, use_diff=True)))
    atomic_write_all(Path(save_directory), files)  # weights first, config last


def vocab_row_keys(model) -> list:
    """Names of the tensors with one row per token: the input and output embeddings (tied ones once) and the output bias."""
    modules = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    ids = {id(p) for m in modules for p in m.parameters(recurse=False) if p is not None}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def new_token_rows(model) -> dict:
    """`{key: rows}`: the vocabulary tensors an adapter-only save holds only the added rows of (see `resize_token_embeddings`)."""
    base_vocab = model.config.base_vocab_size
    if base_vocab is None:
        return {}
    full = set(model.adapter_state_keys())
    params = dict(model.named_parameters())
    return {k: params[k].shape[0] - base_vocab for k in vocab_row_keys(model) if k not in full and params[k].shape[0] > base_vocab}


def reinitialize(model, keys: list) -> None:
    """Draw the tensors `keys` anew with the backbone's initialiser (a head whose size changed)."""
    modules = {k.rsplit(".", 1)[0] for k in keys}
    with torch.no_grad():
        for name in sorted(modules):
            module = model.get_submodule(name)
            for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
                if hasattr(tensor, "_is_hf_initialized"):
                    del tensor._is_hf_initialized
            module._is_hf_initialized = False
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(model.config.init_lora_weights)
            else:
                model.backbone._init_weights(module)
            module._is_hf_initialized = True


# ----- the load plan -------------------------------------------------------------------------------
@dataclass
class LoadPlan:
    """Where each saved tensor goes, decided from keys, shapes and dtypes alone (no tensor is read).

    `targets`: saved key -> model key it loads into; `dropped`: the saved head of another head class;
    `unexpected`: saved keys the model has no place for; `mismatched`: `"key: saved ..., model ..."` for
    shapes or dtypes that differ; `reinit`: `(saved key, model key, saved shape, model shape)` re-initialised
    under `ignore_mismatched_sizes` instead.
    """

    targets: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    reinit: list = field(default_factory=list)


def split_key(key: str, prefix: str) -> tuple:
    """`("body", name inside the base model)` or `("head", name)`: how a key of one head class finds its place in another."""
    rest = key[len("backbone.") :] if key.startswith("backbone.") else key
    if not prefix:
        return "body", rest
    if rest.startswith(prefix + "."):
        return "body", rest[len(prefix) + 1 :]
    return "head", rest


def plan_load(saved: dict, own: dict, saved_prefix: str, own_prefix: str, head_switch: bool = False,
              new_rows: dict | None = None, ignore_mismatched_sizes: bool = False) -> LoadPlan:
    """Map a file's tensors onto a model's: `saved` and `own` are `{key: (shape, dtype)}`.

    Keys are compared inside the base model (`bert.` for a BERT head, `backbone.bert.` in a lora_hf model), so a
    masked-LM save loads into a classifier; with `head_switch` the saved head is dropped. `new_rows` names tensors
    saved as their last rows only (tokens added to the base's vocabulary).

    Example:
        >>> plan_load({"backbone.bert.q.lora_A": ((4, 8), torch.float32)}, {"backbone.bert.q.lora_A": ((4, 8), torch.float32)},
        ...           "bert", "bert").targets
        {'backbone.bert.q.lora_A': 'backbone.bert.q.lora_A'}
    """
    new_rows = new_rows or {}
    own_by_place = {split_key(k, own_prefix): k for k in own}
    plan = LoadPlan()
    for key, (saved_shape, saved_dtype) in saved.items():
        place = split_key(key, saved_prefix)
        target = own_by_place.get(place)
        if target is None or (place[0] == "head" and head_switch):
            (plan.dropped if place[0] == "head" and head_switch else plan.unexpected).append(key)
            continue
        shape, dtype = own[target]
        shape, saved_shape = tuple(shape), tuple(saved_shape)
        if key in new_rows:  # the rows past the base's vocabulary only
            shape = (min(new_rows[key], shape[0]),) + shape[1:]
        same_kind = dtype.is_floating_point == saved_dtype.is_floating_point
        if shape != saved_shape or not same_kind:
            if ignore_mismatched_sizes and same_kind:
                plan.reinit.append((key, target, saved_shape, shape))
            else:
                what = f"saved {saved_shape}, model {shape}" if shape != saved_shape else f"saved dtype {saved_dtype}, model {dtype}"
                plan.mismatched.append(f"{key}: {what}")
            continue
        plan.targets[key] = target
    return plan


def _listed(keys: list) -> str:
    return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"


def _refuse_unfit(model, plan: LoadPlan, state: dict, own: dict, loose: bool) -> None:
    """Stop before any tensor is copied: keys the model lacks (unless `loose`), shape/dtype mismatches, NaN/Inf."""
    name = type(model).__name__
    if loose and plan.unexpected:
        LOAD_REPORT.warning(f"Some weights of the checkpoint were not used when initializing {name}: {plan.unexpected[:8]}")
    if (plan.unexpected and not loose) or plan.mismatched:
        raise CheckpointMismatchError(
            f"The checkpoint does not fit {name}: "
            + (f"unexpected tensors {_listed(plan.unexpected)}; " if plan.unexpected else "")
            + (f"shape/dtype mismatches {_listed(plan.mismatched)}; " if plan.mismatched else "")
            + "the tensors must match config.json (r, target_modules, num_labels) and the base model's shapes"
            + ("; pass `ignore_mismatched_sizes=True` to re-initialise the tensors whose shapes differ." if plan.mismatched else ".")
        )
    non_finite = [key for key, target in plan.targets.items()
                  if isinstance(own[target], nn.Parameter) and state[key].is_floating_point() and not torch.isfinite(state[key]).all()]
    if non_finite:
        raise ValueError(f"The checkpoint holds NaN/Inf values in {_listed(non_finite)}: the run that saved it diverged. Load an earlier checkpoint.")


def _fresh_and_missing(model, plan: LoadPlan, own: dict, strict_full: bool, head_switch: bool, loose: bool) -> list:
    """Record what starts fresh (a new head, re-initialised tensors) and refuse what a save must hold but lacks.
    Returns the fresh keys."""
    loaded = set(plan.targets.values())
    required = set(own) if strict_full else model.new_parameter_names() | _trained_names(model)
    reinit_targets = {target for _, target, _, _ in plan.reinit}
    required -= reinit_targets
    fresh = []
    if head_switch:
        # A new head (and base tensors the old class never had, such as BERT's pooler) start fresh. A full
        # save holds every base tensor its class had: there, only adapters and trained groups must be found.
        kept = model.group_parameter_names("lora") | _trained_names(model)
        own_prefix = model.base_prefix()
        fresh = sorted(k for k in required - loaded
                       if split_key(k, own_prefix)[0] == "head" or k in model.newly_initialized_keys or (strict_full and k not in kept))
        required -= set(fresh)
    params = {n for n, _ in model.named_parameters()}
    # Saved with the adapters from now on, or every load of an adapter save would draw them anew.
    model.newly_initialized_keys = sorted(set(model.newly_initialized_keys) | {k for k in set(fresh) | reinit_targets if k in params})
    missing = sorted(k for k in required - loaded if not is_tied_copy(model, k, loaded))
    if missing and loose:
        LOAD_REPORT.warning(f"Some weights of {type(model).__name__} were not initialized from the checkpoint and are newly initialized: {missing[:8]}")
        model.newly_initialized_keys = sorted(set(model.newly_initialized_keys) | (set(missing) & params))
    elif missing:
        raise ValueError(
            f"The checkpoint lacks tensors {type(model).__name__} needs: {_listed(missing)}. "
            "It was saved from another configuration (r, target_modules or trained groups differ)."
        )
    return fresh


def _trained_names(model) -> set:
    names = set()
    for group in model.config.trained_groups:
        names |= model.group_parameter_names(group)
    return names


def _copy_planned(plan: LoadPlan, state: dict, own: dict, new_rows: dict) -> None:
    targets = {key: own[target] for key, target in plan.targets.items()}
    with torch.no_grad(), zero3_gathered(list(targets.values()), modified=True):
        for key, target in targets.items():
            if key in new_rows:  # the rows past the base's vocabulary only
                target[target.shape[0] - new_rows[key]:].copy_(state[key])
            else:
                target.copy_(state[key])


def load_saved_tensors(model, state: dict, metadata: dict, strict_full: bool, ignore_mismatched_sizes: bool = False,
                       loose: bool = False) -> dict:
    """Load saved tensors into `model` along `plan_load`; refuse anything missing or left over.

    `loose` (a file lora_hf did not write) loads what fits and reports the rest instead, as transformers does.
    Returns transformers' loading info: `missing_keys` (initialised here, not loaded), `unexpected_keys`,
    `mismatched_keys` (re-initialised under `ignore_mismatched_sizes`) and `error_msgs`.
    """
    own_prefix = model.base_prefix()
    own = model.state_dict(keep_vars=True)
    state = from_checkpoint_keys(model, state, own)
    own_class = model.lora_class().__name__
    saved_class = metadata.get("architecture") or (model.config.architectures or [own_class])[0]
    head_switch = saved_class != own_class
    new_rows = read_new_rows(metadata)
    # A file rewritten by another tool loses its metadata: read its keys as this class's own.
    plan = plan_load({k: (tuple(t.shape), t.dtype) for k, t in state.items()}, {k: (tuple(weight_shape(t)), t.dtype) for k, t in own.items()},
                     metadata.get("base_prefix", own_prefix), own_prefix, head_switch, new_rows, ignore_mismatched_sizes)
    _refuse_unfit(model, plan, state, own, loose)
    fresh = _fresh_and_missing(model, plan, own, strict_full, head_switch, loose)
    _copy_planned(plan, state, own, new_rows)
    reinit_targets = {target for _, target, _, _ in plan.reinit}
    _report(model, plan, fresh, saved_class, reinit_targets)
    model.config.architectures = [own_class]
    # Re-apply the phase: loading replaced no Parameter, but keep requires_grad explicit.
    model.apply_phase(model.active_phase)
    loaded = set(plan.targets.values())
    missing_keys = set(model.newly_initialized_keys) | (set(own) - loaded - reinit_targets if strict_full else set())
    return {
        "missing_keys": {k for k in missing_keys if not is_tied_copy(model, k, loaded)},
        "unexpected_keys": set(plan.dropped) | set(plan.unexpected),
        "mismatched_keys": {(key, saved, shape) for key, _, saved, shape in plan.reinit},
        "error_msgs": [],
    }


def _report(model, plan: LoadPlan, fresh: list, saved_class: str, reinit_targets: set) -> None:
    if plan.reinit:
        reinitialize(model, sorted(reinit_targets))
        LOAD_REPORT.warning(
            f"Some weights of {type(model).__name__} were not initialized from the checkpoint and are newly initialized "
            "because the shapes did not match:\n"
            + "\n".join(f"- {key}: found shape {saved} in the checkpoint and {shape} in the model instantiated" for key, _, saved, shape in plan.reinit)
            + "\nReinit due to size mismatch: you should probably TRAIN this model on a down-stream task."
        )
    if plan.dropped or fresh:
        logger.warning(
            f"Dropped the saved {saved_class} head ({len(plan.dropped)} tensors); newly initialised "
            f"in {type(model).__name__}, to be trained: {fresh}."
        )


def read_safetensors(path, tensors: bool = True) -> tuple:
    """`(state, metadata)` of a safetensors file; with `tensors=False`, `state` maps each key to None (the header only).
    A corrupt file is an `OSError` naming it. safetensors never unpickles, so any file may be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) if tensors else None for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise OSError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    return state, metadata


def read_new_rows(metadata: dict) -> dict:
    """`{key: rows}`: tensors saved as only their last `rows` rows (tokens added to the base's vocabulary)."""
    try:
        rows = json.loads(metadata.get("lora_hf_new_rows", "{}"))
    except ValueError:
        rows = None
    if not isinstance(rows, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in rows.values()):
        raise ValueError(f"The weights' metadata `lora_hf_new_rows` must map tensor names to row counts, got {metadata.get('lora_hf_new_rows')!r}.")
    return rows


def short_fingerprint(fingerprint: str | None) -> str:
    return str(fingerprint).rsplit(":", 1)[0] if fingerprint else str(fingerprint)


def is_tied_copy(model: nn.Module, key: str, loaded: set) -> bool:
    """True for a tied alias (GPT-2 `lm_head.weight`) whose source tensor was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(params[other] is params[key] for other in loaded if other in params)


# ----- writing files ---------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """Write `path` through `write(staged_path)`, fsync, then rename: readers see the old file or the new one, never half.

    Example:
        >>> atomic_write(Path("out/config.json"), lambda tmp: Path(tmp).write_text("{}"))
    """
    path = Path(path)
    atomic_write_all(path.parent, [(path.name, write)])


def atomic_write_text(path, text: str) -> None:
    """`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_all(directory, files: list) -> None:
    """Write each `(name, write)` through `write(staged_path)`, then rename them all into `directory`, in order.

    Nothing is renamed before every file is written, so a failed write (disk full) leaves all the
    previous files as they were; each rename is atomic, so readers never see half a file. Files are
    staged in a private `.lora_hf-save-<pid>-*` folder and fsynced before any rename; the folders of saves
    whose process died are removed first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".lora_hf-save-*"):
        if not _pid_alive(stale.name.split("-")[2]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".lora_hf-save-{os.getpid()}-"))
    try:
        for name, write in files:
            _write_staged(staging / name, write, directory)
        for i, (name, _) in enumerate(files):
            try:
                os.replace(staging / name, directory / name)
            except OSError as err:
                done = ", ".join(n for n, _ in files[:i]) or "nothing"
                raise OSError(err.errno, f"Could not rename the new {name} into {str(directory)!r} ({err.strerror or err}); replaced so far: {done}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _write_staged(path: Path, write, directory: Path) -> None:
    try:
        write(str(path))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # temporary files are created 0600; give the file the usual permissions
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(
            err.errno, f"Could not write {path.name} in {str(directory)!r} ({os.strerror(err.errno)}); the files already there are unchanged"
        ) from None


def write_bytes(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
