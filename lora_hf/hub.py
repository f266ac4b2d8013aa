"""Model cards and the Hub: `write_model_card`, `push_to_hub`, and the `lora-hf card` / `lora-hf push` commands.

The card is rendered from `model_cards/lora_model_card.md` with huggingface_hub's
`ModelCard.from_template`; its metadata goes through `ModelCardData` and `EvalResult`. A push
uploads config, weights, the three modelling files, the card, the loss picture (and the tokenizer
and results when present) in one commit.

Example:
    >>> write_model_card("runs/demo")                        # runs/demo/README.md
    >>> push_to_hub("runs/demo", "me/minilm-vader-lora", private=True)
"""

import argparse
import copy
import json
import math
import re
import tempfile
from importlib import resources
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

from .checkpoint_lora import atomic_write_text, read_safetensors
from .configuration_lora import PHASES, is_encoder
from .loading_lora import quiet_transformers
from .model_dir import check_model_dir, model_class, run_command, tokenizer_files
from .checkpoint_lora import CODE_FILES, CONFIG_NAME, GENERATION_CONFIG_NAME, WEIGHTS_NAME
from .run_dir import LOSS_PICTURE, RECORD_NAME, RESULTS_NAME

logger = logging.get_logger(__name__)

__all__ = [
    "TEMPLATE_NAME",
    "template_path",
    "hub_base_model",
    "build_model_card",
    "write_model_card",
    "check_card_metadata",
    "hub_files",
    "push_to_hub",
    "card_main",
    "push_main",
]

TEMPLATE_NAME = "lora_model_card.md"
CARD_NAME = "README.md"
# Marks a card this module rendered; a README.md without it was written by a person and is pushed as it is.
GENERATED_MARK = "lora_hf:generated-card"

FINETUNE_OBJECTIVES = {
    "classification": "sequence classification, cross-entropy over the labels",
    "regression": "regression, mean squared error",
    "token-classification": "token classification, cross-entropy on the first sub-token of each word",
    "causal-lm": "causal language modelling (next-token cross-entropy)",
}
# Metric keys that describe the run, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos", "wall_seconds")
# License ids the Hub accepts (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
    cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
    cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0
    lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
    openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3
    llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
    """.split()
)


# ----- the template -----------------------------------------------------------------------------
def template_path() -> Path:
    """The card template: shipped in the wheel as `lora_hf.model_cards`, or the repository's `model_cards/` in a checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / TEMPLATE_NAME).is_file():
            return folder / TEMPLATE_NAME
    try:
        shipped = resources.files("lora_hf.model_cards") / TEMPLATE_NAME
        if shipped.is_file():
            return Path(str(shipped))
    except (ModuleNotFoundError, TypeError):
        pass
    raise OSError(f"The model card template {TEMPLATE_NAME} is missing from {here / 'model_cards'} and {here.parent / 'model_cards'}; reinstall lora_hf.")


# ----- what the card says -----------------------------------------------------------------------
def _looks_like_hub_id(name) -> bool:
    if not isinstance(name, str) or not name or name.startswith(("/", ".", "~")) or "\\" in name or ":" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_base_model(base_model_name_or_path) -> tuple:
    """`(hub_id or None, note)`: the Hub id of the base model for the card's `base_model`, and how it was found.

    A base loaded from a local directory counts when its own README loads it by one Hub id (the packaged
    MiniLM's: "sentence-transformers/all-MiniLM-L6-v2"), else when its config records a Hub id as `_name_or_path`.
    The README goes first: `_name_or_path` may name the model it was trained from (MiniLM's config says
    "nreimers/MiniLM-L6-H384-uncased"). Otherwise there is no id and the note says why.
    """
    name = base_model_name_or_path
    if not name:
        return None, "The config names no base model."
    local = Path(str(name)).expanduser()
    if local.is_dir():
        try:
            recorded = json.loads((local / CONFIG_NAME).read_text()).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        named = _readme_hub_id(local)
        if named:
            return named, (
                f"The base was loaded from the local directory `{name}`, whose own README loads it as `{named}`: "
                "the `base_model` given here."
            )
        if _looks_like_hub_id(recorded):
            return recorded, (
                f"The base was loaded from the local directory `{name}`; its config records `{recorded}` as its origin, "
                "which is the `base_model` given here."
            )
        return None, (
            f"The base was loaded from the local directory `{name}`, whose config records no Hub id, so the card "
            "metadata has no `base_model`."
        )
    if _looks_like_hub_id(str(name)):
        return str(name), ""
    return None, f"`{name}` is neither a Hub id nor a directory here, so the card metadata has no `base_model`."


def _readme_hub_id(local: Path) -> str | None:
    """The one Hub id a model directory's README loads itself by (`from_pretrained('id')`, `SentenceTransformer('id')`)."""
    try:
        text = (local / CARD_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = {m for m in re.findall(r"(?:from_pretrained|SentenceTransformer)\(\s*['\"]([^'\"]+)['\"]", text) if _looks_like_hub_id(m) and "/" in m}
    return found.pop() if len(found) == 1 else None


def _base_license(base_model_name_or_path) -> str | None:
    """The license in a local base model's own card, if it has one."""
    if not base_model_name_or_path:
        return None
    readme = Path(str(base_model_name_or_path)).expanduser() / CARD_NAME
    if not readme.is_file():
        return None
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.get("license")
    except Exception:  # a malformed base card only costs us the license default
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,d}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _count_parameters(config, encoder: bool) -> dict:
    """Per phase: `(trainable, total)` from weightless (meta) copies of the model each phase trains; {} if none can be built.

    The finetune phase trains the saved class; the pretrain phase its language-model sibling.
    """
    import torch

    from . import modeling_lora

    final = model_class(config)
    classes = {"pretrain": modeling_lora.LoraForMaskedLM if encoder else modeling_lora.LoraForCausalLM, "finetune": final}
    counts = {}
    try:
        for phase in config.phase_trainable:
            with torch.device("meta"), quiet_transformers():
                model = classes.get(phase, final)(copy.deepcopy(config))
            names = model.phase_parameter_names(phase)
            params = dict(model.named_parameters())
            counts[phase] = (sum(p.numel() for n, p in params.items() if n in names), sum(p.numel() for p in params.values()))
            if classes.get(phase, final) is final:
                counts["lora"] = sum(p.numel() for n, p in params.items() if n.endswith((".lora_A", ".lora_B")))
                counts["layers"] = sorted(getattr(model, "lora_module_names", []))
                counts["groups"] = [g for g in config.trained_groups if g != "lora" and model.group_parameter_names(g)]
    except Exception as err:  # a card must not fail because a count could not be made
        logger.warning(f"Could not count the parameters for the model card ({type(err).__name__}: {err}).")
    return counts


def _share(trainable: int, total: int) -> str:
    return f"{trainable:,d} of {total:,d} ({100 * trainable / total:.2f}%)" if total else f"{trainable:,d}"


def _target_summary(layers: list, targets) -> str:
    if not layers:
        return f"`{targets}`"
    leaves = sorted({name.rsplit(".", 1)[-1] if "." in name else name for name in layers})
    suffixes = sorted({".".join(name.split(".")[-2:]) for name in layers})
    shown = suffixes if len(suffixes) <= 8 else leaves
    rule = "`auto` (every attention projection): " if targets == "auto" else ""
    return f"{rule}{', '.join(f'`{s}`' for s in shown)} ({len(layers)} layers)"


def _metric_rows(phase: str, metrics: dict) -> list:
    rows = []
    for key, value in sorted(metrics.items() if isinstance(metrics, dict) else []):
        found = re.fullmatch(r"(eval|test)_(.+)", key)
        if not found or found.group(2).endswith(_NOT_METRICS) or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        split = {"eval": "validation" if phase == "finetune" else "held-out", "test": "test"}[found.group(1)]
        rows.append({"phase": phase, "split": split, "metric": found.group(2), "value": round(float(value), 4)})
    return rows


def _hyperparameters(phase_dir: Path, recorded: dict) -> list:
    state = _read_json(phase_dir / "trainer_state.json") or {}
    values = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    if state:
        rates = [h["learning_rate"] for h in state.get("log_history", []) if isinstance(h.get("learning_rate"), (int, float))]
        epochs = state.get("epoch")  # as run: --max_steps may stop before num_train_epochs
        values.update({
            "batch size per device": state.get("train_batch_size"),
            "epochs": round(epochs, 2) if isinstance(epochs, (int, float)) else state.get("num_train_epochs"),
            "optimizer steps": state.get("global_step"),
        })
        if rates and not any(name.startswith("learning rate") for name in recorded):
            # Logged every --logging_steps, the schedule's peak may fall between two logs: say so.
            values["learning rate (highest logged; the configured peak may be higher)"] = max(rates)
    values.update(recorded)
    return [(name, _fmt(value)) for name, value in values.items() if value is not None]


# What the card's `pipeline(...)` example feeds each task.
PIPELINE_EXAMPLES = {"text-classification": "This film was a delight.", "token-classification": "Ada Lovelace wrote in London.",
                     "text-generation": "The film was"}


def _label_names(config, results: dict) -> list | None:
    """The class names the head predicts, when they are names (not transformers' LABEL_0, LABEL_1 defaults)."""
    if results.get("task") == "regression" or getattr(config, "problem_type", None) == "regression":
        return None
    names = [str(config.id2label[i]) for i in sorted(config.id2label or {})]
    return names if names and names != [f"LABEL_{i}" for i in range(len(names))] else None


def _read_run_record(model_dir: Path):
    """The run's structured record; directories trained before it had its own file kept it in `all_results.json`."""
    record = _read_json(model_dir / RECORD_NAME)
    if isinstance(record, dict):
        return record
    legacy = _read_json(model_dir / RESULTS_NAME)
    return legacy if isinstance(legacy, dict) and any(isinstance(legacy.get(p), dict) for p in ("pretrain", "finetune")) else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "custom"


def _card_inputs(model_dir: Path, results: dict | None, repo_id: str | None, license: str | None, datasets: dict | None) -> tuple:
    """`(ModelCardData, template variables)` for the lora_hf model saved in `model_dir`."""
    config = check_model_dir(model_dir)
    if results is None:
        results = _read_run_record(model_dir)
    results = results if isinstance(results, dict) else {}
    arch = (config.architectures or ["LoraModel"])[0]
    head = model_class(config)
    pipeline_tag = head.pipeline_tag
    backbone = config.backbone_config
    # As training decides: masked-LM pretraining where the architecture has a masked-LM head.
    encoder = is_encoder(backbone)
    base_model, base_note = hub_base_model(config.base_model_name_or_path)
    keys, metadata = read_safetensors(model_dir / WEIGHTS_NAME, tensors=False)
    saved_format, n_tensors = metadata.get("lora_hf_format", "adapter"), len(keys)
    adapter_only = saved_format != "full"
    size_mb = (model_dir / WEIGHTS_NAME).stat().st_size / 2**20
    weights_description = (
        f"the adapters and the other trained tensors only ({n_tensors} tensors, {size_mb:.2f} MiB): the base weights load from the base model"
        if adapter_only
        else f"every weight ({n_tensors} tensors, {size_mb:.1f} MiB): no base model is needed"
    )
    counts = _count_parameters(config, encoder)

    # Datasets: what the caller or the training run recorded, per phase; Hub ids also go to the metadata.
    recorded = results.get("datasets") if isinstance(results.get("datasets"), dict) else {}
    datasets = {k: v for k, v in {**recorded, **(datasets or {})}.items() if isinstance(v, str) and v}
    phases, eval_rows, eval_results = [], [], []
    # Without a record or phase states (a model trained with a plain Trainer), the saved head's phase is the one
    # its trained groups came from; a phase the caller names data for has run too.
    unrecorded = not results and not any((model_dir / phase / "trainer_state.json").is_file() for phase in PHASES)
    for phase in PHASES:
        ran = bool(results.get(phase)) or (model_dir / phase / "trainer_state.json").is_file() or phase in (datasets or {})
        ran = ran or (unrecorded and phase == "finetune" and bool(config.trained_groups))
        groups = list(config.phase_trainable.get(phase, []))
        if phase == "pretrain":
            objective = "masked language modelling on unlabeled text" if encoder else "causal language modelling on unlabeled text"
        else:
            objective = FINETUNE_OBJECTIVES.get(results.get("task"), f"the {pipeline_tag or 'task'} objective of `{arch}`")
        trainable = _share(*counts[phase]) if phase in counts else ""
        recorded_hyper = results.get("hyperparameters") if isinstance(results.get("hyperparameters"), dict) else {}
        hyper = _hyperparameters(model_dir / phase, recorded_hyper.get(phase))
        phases.append({"name": phase, "ran": ran, "data": datasets.get(phase), "objective": objective, "groups": groups,
                       "trainable": trainable, "hyperparameters": hyper})
        rows = _metric_rows(phase, results.get(phase))
        eval_rows += rows
        task_type = pipeline_tag if phase == "finetune" else ("fill-mask" if encoder else "text-generation")
        data_name = datasets.get(phase) or f"{phase} data (not recorded)"
        data_type = datasets.get(phase) if _looks_like_hub_id(datasets.get(phase)) else _slug(data_name)
        for row in rows:
            if row["metric"] == "loss":
                continue  # a loss is the objective, not a metric the Hub knows
            eval_results.append(EvalResult(
                task_type=task_type or "other", dataset_type=data_type, dataset_name=data_name,
                dataset_split=row["split"], metric_type=row["metric"], metric_value=row["value"],
                metric_name=f"{row['split']} {row['metric']}",
            ))

    if results.get("trainable_params") and results.get("total_params"):
        trainable_summary = _share(results["trainable_params"], results["total_params"]) + " in the last phase (as trained)"
        share = f"{100 * results['trainable_params'] / results['total_params']:.2f}%"
    elif "finetune" in counts:
        trainable_summary = _share(*counts["finetune"]) + " in the finetune phase"
        share = f"{100 * counts['finetune'][0] / counts['finetune'][1]:.2f}%"
    else:
        trainable_summary, share = "", ""
    if counts.get("lora"):
        trainable_summary += f"; the LoRA matrices alone: {counts['lora']:,d}"

    license_note = ""
    if not license:
        license = results.get("license") or _base_license(config.base_model_name_or_path)
        if license:
            license_note = f"The license `{license}` is the base model's; check that the training data allows it too."
        else:
            license = "unknown"
            license_note = "No license was given: set one with `lora-hf card DIR --license <id>` before sharing."
    model_name = (repo_id or "").split("/")[-1] or model_dir.resolve().name
    task_tag = pipeline_tag or "feature-extraction"
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        license=license,
        pipeline_tag=pipeline_tag,
        tags=["lora", "lora_hf", task_tag],
        datasets=sorted({d for d in datasets.values() if _looks_like_hub_id(d)}) or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    # Groups with members only: GPT-2's `head` is its tied embedding matrix, counted under `embeddings`.
    extra_groups = counts.get("groups", [g for g in config.trained_groups if g != "lora"])
    variables = {
        "generated_mark": GENERATED_MARK,
        "model_name": model_name,
        "repo_id": repo_id or str(model_dir),
        "head_description": "a LoRA-adapted text regression model" if results.get("task") == "regression"
        else head.description,
        "architecture": arch,
        "auto_class": head.backbone_auto_class.__name__,
        "backbone_type": backbone.model_type,
        "backbone_summary": f"{getattr(backbone, 'num_hidden_layers', '?')} layers, hidden size {getattr(backbone, 'hidden_size', '?')}",
        "base_model": base_model,
        "base_path": config.base_model_name_or_path,
        "base_note": base_note,
        "r": config.r,
        "lora_alpha": _fmt(config.lora_alpha),
        "scaling": _fmt(config.scaling),
        "use_rslora": config.use_rslora,
        "lora_dropout": config.lora_dropout,
        "target_summary": _target_summary(counts.get("layers", []), config.target_modules),
        "trainable_summary": trainable_summary,
        "trainable_share": share,
        "weights_description": weights_description,
        "adapter_only": adapter_only,
        "extra_groups": [g.replace("re:", "tensors matching ") for g in extra_groups],
        "phases": phases,
        "eval_rows": [{**row, "value": _fmt(row["value"])} for row in eval_rows],
        "loss_picture": LOSS_PICTURE if (model_dir / LOSS_PICTURE).is_file() else None,
        "label_names": _label_names(config, results),
        "pipeline_tag": pipeline_tag if pipeline_tag in PIPELINE_EXAMPLES else None,
        "pipeline_input": PIPELINE_EXAMPLES.get(pipeline_tag),
        "license_note": license_note,
    }
    return card_data, variables


def build_model_card(model_dir, results: dict | None = None, *, repo_id: str | None = None, license: str | None = None,
                     datasets: dict | None = None) -> ModelCard:
    """Render the card of the lora_hf model in `model_dir` (results from `run_record.json` unless given).

    `datasets` maps a phase (`pretrain`, `finetune`) to the data it used: a Hub dataset id also goes
    to the metadata, anything else (a file, a description) to the body only.
    """
    card_data, variables = _card_inputs(Path(model_dir), results, repo_id, license, datasets)
    card = ModelCard.from_template(card_data, template_path=str(template_path()), **variables)
    check_card_metadata(card)
    return card


def _edited_by_hand(card_path: Path) -> bool:
    return card_path.is_file() and GENERATED_MARK not in card_path.read_text(encoding="utf-8", errors="replace")


def write_model_card(model_dir, results: dict | None = None, *, overwrite: bool = False, **kwargs) -> Path | None:
    """Write `README.md` into `model_dir`, reading `run_record.json` there unless `results` are given.

    A directory holding a plain `transformers` model (a `--full_finetune` run) gets no card: the
    function logs why and returns None, so that training never fails on its card. A card edited by
    hand (its generated-card line removed) is kept unless `overwrite=True`.
    """
    model_dir = Path(model_dir)
    raw = _read_json(model_dir / CONFIG_NAME)
    if isinstance(raw, dict) and raw.get("model_type") != "lora":
        logger.warning(f"No model card for {model_dir}: it holds a plain {raw.get('model_type')!r} model, not a lora_hf model.")
        return None
    path = model_dir / CARD_NAME
    if not overwrite and _edited_by_hand(path):
        raise FileExistsError(
            f"{path} was edited by hand (its '{GENERATED_MARK}' line is gone) and is kept; pass overwrite=True "
            "(`lora-hf card --overwrite`) to replace it with a generated card."
        )
    card = build_model_card(model_dir, results, **kwargs)
    atomic_write_text(path, str(card))
    return path


# ----- metadata checks --------------------------------------------------------------------------
def check_card_metadata(card: ModelCard) -> None:
    """Check the card's metadata offline; `ValueError` naming the field.

    `ModelCard.validate()` posts the card to the Hub (`/api/validate-yaml`), so it needs the network.
    This covers what it checks for our fields: the YAML parses back to the same metadata, the
    model-index parses into `EvalResult`s, and ids have the Hub's forms.
    """
    data = card.data.to_dict()
    reparsed = ModelCard(str(card), ignore_metadata_errors=False).data.to_dict()
    if reparsed != data:
        raise ValueError(f"The card's YAML does not parse back to its metadata: {sorted(set(data) ^ set(reparsed))}.")
    base = data.get("base_model")
    for value in [base] if isinstance(base, str) else base or []:
        if not _looks_like_hub_id(value):
            raise ValueError(f"`base_model` must be a Hub model id ('user/name'), got {value!r}.")
    for value in data.get("datasets") or []:
        if not _looks_like_hub_id(value):
            raise ValueError(f"`datasets` must hold Hub dataset ids ('user/name'), got {value!r}.")
    if data.get("license") not in HUB_LICENSES:
        raise ValueError(f"`license` {data.get('license')!r} is not a Hub license id; use one of apache-2.0, mit, ..., or 'other'.")
    if data.get("library_name") != "transformers":
        raise ValueError(f"`library_name` must be 'transformers', got {data.get('library_name')!r}.")
    if not all(isinstance(tag, str) and tag for tag in data.get("tags") or []):
        raise ValueError(f"`tags` must be non-empty strings, got {data.get('tags')!r}.")
    if "model-index" in data:
        name, results = model_index_to_eval_results(data["model-index"])
        if not name or not results or eval_results_to_model_index(name, results) != data["model-index"]:
            raise ValueError("`model-index` does not round-trip through huggingface_hub's EvalResult parser.")
        for result in results:
            if not (result.task_type and result.dataset_type and result.dataset_name and result.metric_type):
                raise ValueError(f"`model-index` result lacks a task, dataset or metric type: {result}.")
            if not isinstance(result.metric_value, (int, float)) or not math.isfinite(result.metric_value):
                raise ValueError(f"`model-index` metric {result.metric_type!r} has a non-finite value {result.metric_value!r}.")


# ----- push -------------------------------------------------------------------------------------
def hub_files(model_dir) -> list:
    """The files of `model_dir` a push uploads besides the card: config, weights, code, and the optional extras."""
    model_dir = Path(model_dir)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, *CODE_FILES) if not (model_dir / name).is_file()]
    if missing:
        raise OSError(f"{str(model_dir)!r} lacks {missing}; save the model again with `save_pretrained` (it writes the code files).")
    optional = [GENERATION_CONFIG_NAME, LOSS_PICTURE, RESULTS_NAME, RECORD_NAME, *tokenizer_files(model_dir)]
    return [CONFIG_NAME, WEIGHTS_NAME, *CODE_FILES, *(name for name in optional if (model_dir / name).is_file())]


def _check_repo_id(repo_id) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a Hub repo id ('name' or 'namespace/name'): {str(err).splitlines()[0]}") from None
    return repo_id


def _validate_online(card: ModelCard) -> None:
    """The Hub's own metadata check; a network failure leaves the offline check as the only one."""
    try:
        card.validate()
    except ValueError:
        raise
    except Exception as err:
        logger.warning(f"Could not reach the Hub to validate the card ({type(err).__name__}); the offline check passed.")


def push_to_hub(model_or_dir, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, base_model_id: str | None = None, revision: str | None = None,
                license: str | None = None, datasets: dict | None = None, source_dir=None):
    """Upload a lora_hf model (a directory or a model object) to `repo_id` in one commit; return the `CommitInfo`.

    The commit holds config.json, model.safetensors, the three modelling files, README.md (rendered
    for `repo_id`, unless the directory's README.md is a hand-edited card) and, when present,
    loss_curve.png, all_results.json, run_record.json, generation_config.json and the tokenizer files.
    `base_model_id` replaces a local `base_model_name_or_path` in the uploaded config.json with a Hub
    id, so that an adapter-only upload loads elsewhere (the base fingerprint still guards the match).
    A model object is saved first; the extras then come from `source_dir` (the directory it was trained
    into or loaded from; default: `model.name_or_path` when that is a directory).
    """
    _check_repo_id(repo_id)
    if base_model_id is not None and not _looks_like_hub_id(base_model_id):
        raise ValueError(f"`base_model_id` must be a Hub model id ('user/name'), got {base_model_id!r}.")
    with tempfile.TemporaryDirectory(prefix="lora_hf-push-") as scratch:
        if isinstance(model_or_dir, (str, Path)):
            model_dir = extras_dir = Path(model_or_dir)
            check_model_dir(model_dir)
            sources = {name: model_dir / name for name in hub_files(model_dir)}
        else:
            model_dir = Path(scratch) / "model"
            model_or_dir.save_pretrained(model_dir)
            sources = {name: model_dir / name for name in hub_files(model_dir)}
            origin = source_dir or getattr(model_or_dir, "name_or_path", None)
            extras_dir = Path(origin) if origin and Path(origin).is_dir() else model_dir
            for name in (LOSS_PICTURE, RESULTS_NAME, RECORD_NAME, *tokenizer_files(extras_dir)):
                if (extras_dir / name).is_file() and name not in sources:
                    sources[name] = extras_dir / name
        # Files go up from disk (weights can be large); only what is rewritten here is held in memory.
        uploads = {name: str(path) for name, path in sources.items()}
        raw_config = json.loads(sources[CONFIG_NAME].read_text())
        if base_model_id is not None:
            raw_config["base_model_name_or_path"] = base_model_id
            uploads[CONFIG_NAME] = (json.dumps(raw_config, indent=2, sort_keys=True) + "\n").encode()
        base = raw_config.get("base_model_name_or_path")
        if _weights_format(sources[WEIGHTS_NAME]) != "full" and base and not _looks_like_hub_id(base):
            logger.warning(
                f"The upload holds adapters only and its base `{base}` is a local path: loading it elsewhere needs "
                "`base_model_name_or_path=` (or push again with `base_model_id=` / `--base_model_id`)."
            )
        existing = extras_dir / CARD_NAME
        if _edited_by_hand(existing):
            uploads[CARD_NAME] = existing.read_bytes()  # a person's card: upload it unchanged
        else:
            card = build_model_card(_card_view(Path(scratch) / "card", sources, uploads, extras_dir), repo_id=repo_id,
                                    license=license, datasets=datasets)
            _validate_online(card)
            uploads[CARD_NAME] = str(card).encode("utf-8")
        return _commit(repo_id, uploads, private=private, token=token, revision=revision,
                       commit_message=commit_message or "Upload lora_hf model (config, weights, modelling code, card)")


def _card_view(folder: Path, sources: dict, uploads: dict, extras_dir: Path) -> Path:
    """A folder that looks like the upload (rewritten config included) plus the phase states the card reports."""
    folder.mkdir()
    for name, path in sources.items():
        if isinstance(uploads[name], bytes):
            (folder / name).write_bytes(uploads[name])
        else:
            (folder / name).symlink_to(Path(path).resolve())
    for phase in PHASES:
        state = extras_dir / phase / "trainer_state.json"
        if state.is_file():
            (folder / phase).mkdir()
            (folder / phase / "trainer_state.json").symlink_to(state.resolve())
    return folder


def _commit(repo_id: str, uploads: dict, *, private, token, revision, commit_message):
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in sorted(uploads.items())]
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.create_commit(
            repo_id=getattr(url, "repo_id", None) or repo_id,
            repo_type="model",
            operations=operations,
            commit_message=commit_message,
            revision=revision,
        )
    except (OSError, ValueError):  # the Hub's HTTP errors are OSErrors
        raise
    except Exception as err:  # the HTTP client's own connection errors are not
        raise OSError(f"Could not upload to {repo_id!r} ({type(err).__name__}: {err}).") from err


def _weights_format(path: Path) -> str:
    return read_safetensors(path, tensors=False)[1].get("lora_hf_format", "adapter")


# ----- the commands -----------------------------------------------------------------------------
def _dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrain_dataset", help="The pretrain phase's data: a Hub dataset id (goes to the metadata) or a description.")
    parser.add_argument("--finetune_dataset", help="The finetune phase's data: a Hub dataset id (goes to the metadata) or a description.")
    parser.add_argument("--license", help="A Hub license id (apache-2.0, mit, ...); default: the base model's, else 'unknown'.")


def _datasets(args) -> dict:
    return {phase: value for phase, value in (("pretrain", args.pretrain_dataset), ("finetune", args.finetune_dataset)) if value}


def card_main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-hf card",
        description="Write README.md, the model card, into a lora_hf model directory (metadata, both phases, eval results, "
        "loss curves, how to load it).",
        epilog="examples:\n  lora-hf card runs/demo\n  lora-hf card runs/demo --finetune_dataset stanfordnlp/sst2 --license mit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", help="A directory written by save_pretrained or lora-hf train.")
    parser.add_argument("--repo_id", help="The Hub repo the card will live in (used in the loading examples).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a README.md that was edited by hand.")
    _dataset_flags(parser)

    def action(args):
        if args.repo_id:
            _check_repo_id(args.repo_id)
        check_model_dir(args.model_dir)
        path = write_model_card(args.model_dir, repo_id=args.repo_id, license=args.license, datasets=_datasets(args),
                                overwrite=args.overwrite)
        print(f"Wrote {path}")

    return run_command("card", parser, argv, action)


def push_main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-hf push",
        description="Upload a lora_hf model directory to the Hub in one commit: config, weights, modelling code, the card "
        "(README.md), the loss picture, results and tokenizer when present. Log in first (`hf auth login`) or pass --token.",
        epilog="examples:\n  lora-hf push runs/demo me/minilm-vader-lora --private\n"
        "  lora-hf push runs/demo me/minilm-vader-lora --base_model_id sentence-transformers/all-MiniLM-L6-v2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", help="A directory written by save_pretrained or lora-hf train.")
    parser.add_argument("repo_id", help="The Hub repo: 'name' or 'namespace/name' (created if missing).")
    parser.add_argument("--private", action="store_true", help="Create the repo private.")
    parser.add_argument("--token", help="A Hub token (default: the one `hf auth login` stored).")
    parser.add_argument("--commit_message", help="The commit message.")
    parser.add_argument("--revision", help="The branch to commit to (default: main).")
    parser.add_argument("--base_model_id", help="A Hub id to record as base_model_name_or_path in the uploaded config "
                        "(for an adapter-only model trained on a local base).")
    _dataset_flags(parser)

    def action(args):
        _check_repo_id(args.repo_id)
        check_model_dir(args.model_dir)
        info = push_to_hub(args.model_dir, args.repo_id, private=args.private or None, token=args.token,
                           commit_message=args.commit_message, base_model_id=args.base_model_id, revision=args.revision,
                           license=args.license, datasets=_datasets(args))
        print(f"Pushed {args.model_dir} to {getattr(info, 'commit_url', args.repo_id)}")

    return run_command("push", parser, argv, action)
