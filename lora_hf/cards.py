"""The model card: `build_model_card` renders it, `write_model_card` writes it into a model directory.

The card is rendered from `model_cards/lora_model_card.md` with huggingface_hub's
`ModelCard.from_template`; its metadata goes through `ModelCardData` and `EvalResult`. Each part of
the card (parameters, phases and their evaluation results, hyperparameters, usage) is gathered by its
own function from the saved model directory and its run record; `card_metadata` checks the metadata.

Example:
    >>> write_model_card("runs/demo")                        # runs/demo/README.md
"""

import copy
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .card_metadata import CARD_NAME, GENERATED_MARK, base_license, check_card_metadata, edited_by_hand, hub_base_model, looks_like_hub_id
from .checkpoint_lora import CONFIG_NAME, WEIGHTS_NAME, atomic_write_text, read_safetensors
from .configuration_lora import PHASES, LoraConfig, is_encoder
from .loading_lora import quiet_transformers
from .model_dir import check_model_dir, model_class
from .modeling_lora import language_model_class
from .run_dir import LOSS_PICTURE, RECORD_NAME, RESULTS_NAME

logger = logging.get_logger(__name__)

__all__ = [
    "TEMPLATE_NAME",
    "GENERATED_MARK",
    "template_path",
    "weights_format",
    "build_model_card",
    "edited_by_hand",
    "write_model_card",
]

TEMPLATE_NAME = "lora_model_card.md"
FINETUNE_OBJECTIVES = {
    "classification": "sequence classification, cross-entropy over the labels",
    "regression": "regression, mean squared error",
    "token-classification": "token classification, cross-entropy on the first sub-token of each word",
    "causal-lm": "causal language modelling (next-token cross-entropy)",
}
# Metric keys that describe the run, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos", "wall_seconds")
# What the card's `pipeline(...)` example feeds each task.
PIPELINE_EXAMPLES = {"text-classification": "This film was a delight.", "token-classification": "Ada Lovelace wrote in London.",
                     "text-generation": "The film was"}


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


def _count_parameters(config) -> dict:
    """Per phase: `(trainable, total)` from weightless (meta) copies of the model each phase trains; {} if none can be built.

    The finetune phase trains the saved class; the pretrain phase its language-model sibling.
    """
    import torch

    final = model_class(config)
    classes = {"pretrain": language_model_class(config.backbone_config), "finetune": final}
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


# ----- the parts of the card --------------------------------------------------------------------
@dataclass
class _SavedRun:
    """What every part of the card reads: the saved model, its run record, its datasets and its parameter counts."""

    directory: Path
    config: LoraConfig
    results: dict
    datasets: dict
    head: type
    counts: dict

    @property
    def architecture(self) -> str:
        return (self.config.architectures or ["LoraModel"])[0]

    @property
    def pipeline_tag(self) -> str | None:
        return self.head.pipeline_tag

    @property
    def encoder(self) -> bool:
        """As training decides: masked-LM pretraining where the architecture has a masked-LM head."""
        return is_encoder(self.config.backbone_config)


def _saved_run(model_dir: Path, results: dict | None, datasets: dict | None) -> _SavedRun:
    config = check_model_dir(model_dir)
    if results is None:
        results = _read_run_record(model_dir)
    results = results if isinstance(results, dict) else {}
    head = model_class(config)
    # Datasets: what the caller or the training run recorded, per phase; Hub ids also go to the metadata.
    recorded = results.get("datasets") if isinstance(results.get("datasets"), dict) else {}
    datasets = {k: v for k, v in {**recorded, **(datasets or {})}.items() if isinstance(v, str) and v}
    return _SavedRun(model_dir, config, results, datasets, head, _count_parameters(config))


def weights_format(metadata: dict) -> str:
    """`full` or `adapter`, from a saved model.safetensors' metadata; files without the key hold adapters only."""
    return metadata.get("lora_hf_format", "adapter")


def _weights_summary(model_dir: Path) -> tuple:
    """`(adapter_only, what the weights file holds)` in the card's words."""
    keys, metadata = read_safetensors(model_dir / WEIGHTS_NAME, tensors=False)
    adapter_only, n_tensors = weights_format(metadata) != "full", len(keys)
    size_mb = (model_dir / WEIGHTS_NAME).stat().st_size / 2**20
    return adapter_only, (
        f"the adapters and the other trained tensors only ({n_tensors} tensors, {size_mb:.2f} MiB): the base weights load from the base model"
        if adapter_only
        else f"every weight ({n_tensors} tensors, {size_mb:.1f} MiB): no base model is needed"
    )


def _objective(run: _SavedRun, phase: str) -> str:
    if phase == "pretrain":
        return "masked language modelling on unlabeled text" if run.encoder else "causal language modelling on unlabeled text"
    return FINETUNE_OBJECTIVES.get(run.results.get("task"), f"the {run.pipeline_tag or 'task'} objective of `{run.architecture}`")


def _eval_results(run: _SavedRun, phase: str, rows: list) -> list:
    """The phase's metric rows as the `EvalResult`s of the card's model-index."""
    task_type = run.pipeline_tag if phase == "finetune" else language_model_class(run.config.backbone_config).pipeline_tag
    data_name = run.datasets.get(phase) or f"{phase} data (not recorded)"
    data_type = run.datasets.get(phase) if looks_like_hub_id(run.datasets.get(phase)) else _slug(data_name)
    return [
        EvalResult(
            task_type=task_type or "other", dataset_type=data_type, dataset_name=data_name,
            dataset_split=row["split"], metric_type=row["metric"], metric_value=row["value"],
            metric_name=f"{row['split']} {row['metric']}",
        )
        for row in rows
        if row["metric"] != "loss"  # a loss is the objective, not a metric the Hub knows
    ]


def _phases(run: _SavedRun) -> tuple:
    """`(phase entries, evaluation table rows, EvalResults)`: what each phase trained on, how, and what it measured."""
    results, states = run.results, {phase: run.directory / phase / "trainer_state.json" for phase in PHASES}
    # Without a record or phase states (a model trained with a plain Trainer), the saved head's phase is the one
    # its trained groups came from; a phase the caller names data for has run too.
    unrecorded = not results and not any(state.is_file() for state in states.values())
    recorded_hyper = results.get("hyperparameters") if isinstance(results.get("hyperparameters"), dict) else {}
    phases, eval_rows, eval_results = [], [], []
    for phase in PHASES:
        ran = bool(results.get(phase)) or states[phase].is_file() or phase in run.datasets
        ran = ran or (unrecorded and phase == "finetune" and bool(run.config.trained_groups))
        phases.append({
            "name": phase, "ran": ran, "data": run.datasets.get(phase), "objective": _objective(run, phase),
            "groups": list(run.config.phase_trainable.get(phase, [])),
            "trainable": _share(*run.counts[phase]) if phase in run.counts else "",
            "hyperparameters": _hyperparameters(run.directory / phase, recorded_hyper.get(phase)),
        })
        rows = _metric_rows(phase, results.get(phase))
        eval_rows += rows
        eval_results += _eval_results(run, phase, rows)
    return phases, eval_rows, eval_results


def _trainable_summary(run: _SavedRun) -> tuple:
    """`(summary, share)`: the trainable parameters as the run recorded them, else as counted on the finetune model."""
    results, counts = run.results, run.counts
    if results.get("trainable_params") and results.get("total_params"):
        summary = _share(results["trainable_params"], results["total_params"]) + " in the last phase (as trained)"
        share = f"{100 * results['trainable_params'] / results['total_params']:.2f}%"
    elif "finetune" in counts:
        summary = _share(*counts["finetune"]) + " in the finetune phase"
        share = f"{100 * counts['finetune'][0] / counts['finetune'][1]:.2f}%"
    else:
        summary, share = "", ""
    if counts.get("lora"):
        summary += f"; the LoRA matrices alone: {counts['lora']:,d}"
    return summary, share


def _license(license: str | None, run: _SavedRun) -> tuple:
    """`(license id, note for the card)`: the given license, else the run's or the base model's, else 'unknown'."""
    if license:
        return license, ""
    license = run.results.get("license") or base_license(run.config.base_model_name_or_path)
    if license:
        return license, f"The license `{license}` is the base model's; check that the training data allows it too."
    return "unknown", "No license was given: set one with `lora-hf card DIR --license <id>` before sharing."


def _parameter_variables(run: _SavedRun) -> dict:
    """The template's model table: backbone, LoRA settings, targets, trainable parameters and the weights file."""
    config, backbone = run.config, run.config.backbone_config
    trainable_summary, share = _trainable_summary(run)
    adapter_only, weights_description = _weights_summary(run.directory)
    # Groups with members only: GPT-2's `head` is its tied embedding matrix, counted under `embeddings`.
    extra_groups = run.counts.get("groups", [g for g in config.trained_groups if g != "lora"])
    return {
        "head_description": "a LoRA-adapted text regression model" if run.results.get("task") == "regression"
        else run.head.description,
        "architecture": run.architecture,
        "backbone_type": backbone.model_type,
        "backbone_summary": f"{getattr(backbone, 'num_hidden_layers', '?')} layers, hidden size {getattr(backbone, 'hidden_size', '?')}",
        "r": config.r,
        "lora_alpha": _fmt(config.lora_alpha),
        "scaling": _fmt(config.scaling),
        "use_rslora": config.use_rslora,
        "lora_dropout": config.lora_dropout,
        "target_summary": _target_summary(run.counts.get("layers", []), config.target_modules),
        "trainable_summary": trainable_summary,
        "trainable_share": share,
        "weights_description": weights_description,
        "adapter_only": adapter_only,
        "extra_groups": [g.replace("re:", "tensors matching ") for g in extra_groups],
    }


def _usage_variables(run: _SavedRun) -> dict:
    """The template's how-to-use part: the Auto class, the labels, the pipeline example and the loss picture."""
    pipeline_tag = run.pipeline_tag
    return {
        "auto_class": run.head.backbone_auto_class.__name__,
        "label_names": _label_names(run.config, run.results),
        "pipeline_tag": pipeline_tag if pipeline_tag in PIPELINE_EXAMPLES else None,
        "pipeline_input": PIPELINE_EXAMPLES.get(pipeline_tag),
        "loss_picture": LOSS_PICTURE if (run.directory / LOSS_PICTURE).is_file() else None,
    }


def _card_inputs(model_dir: Path, results: dict | None, repo_id: str | None, license: str | None, datasets: dict | None) -> tuple:
    """`(ModelCardData, template variables)` for the lora_hf model saved in `model_dir`."""
    run = _saved_run(model_dir, results, datasets)
    base_model, base_note = hub_base_model(run.config.base_model_name_or_path)
    phases, eval_rows, eval_results = _phases(run)
    license, license_note = _license(license, run)
    model_name = (repo_id or "").split("/")[-1] or model_dir.resolve().name
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        license=license,
        pipeline_tag=run.pipeline_tag,
        tags=["lora", "lora_hf", run.pipeline_tag or "feature-extraction"],
        datasets=sorted({d for d in run.datasets.values() if looks_like_hub_id(d)}) or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    variables = {
        "generated_mark": GENERATED_MARK,
        "model_name": model_name,
        "repo_id": repo_id or str(model_dir),
        "base_model": base_model,
        "base_path": run.config.base_model_name_or_path,
        "base_note": base_note,
        "phases": phases,
        "eval_rows": [{**row, "value": _fmt(row["value"])} for row in eval_rows],
        "license_note": license_note,
        **_parameter_variables(run),
        **_usage_variables(run),
    }
    return card_data, variables


def build_model_card(model_dir: str | Path, results: dict | None = None, *, repo_id: str | None = None, license: str | None = None,
                     datasets: dict | None = None) -> ModelCard:
    """Render the card of the lora_hf model in `model_dir` (results from `run_record.json` unless given).

    `datasets` maps a phase (`pretrain`, `finetune`) to the data it used: a Hub dataset id also goes
    to the metadata, anything else (a file, a description) to the body only.
    """
    card_data, variables = _card_inputs(Path(model_dir), results, repo_id, license, datasets)
    card = ModelCard.from_template(card_data, template_path=str(template_path()), **variables)
    check_card_metadata(card)
    return card


def write_model_card(model_dir: str | Path, results: dict | None = None, *, overwrite: bool = False, **kwargs) -> Path | None:
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
    if not overwrite and edited_by_hand(path):
        raise FileExistsError(
            f"{path} was edited by hand (its '{GENERATED_MARK}' line is gone) and is kept; pass overwrite=True "
            "(`lora-hf card --overwrite`) to replace it with a generated card."
        )
    card = build_model_card(model_dir, results, **kwargs)
    atomic_write_text(path, str(card))
    return path


