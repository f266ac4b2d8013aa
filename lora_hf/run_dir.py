"""What a `lora-hf train` output directory holds, and whether a new run may write into or continue it.

    <output_dir>/pretrain/     phase 1: checkpoint-N/, run_arguments.json (first), phase_results.json (last)
    <output_dir>/finetune/     phase 2, the same files
    <output_dir>/              the final model, tokenizer, all_results.json, run_record.json, loss_curve.png, README.md

A phase whose `phase_results.json` exists is finished: a resumed run reads it back instead of training.
A phase's `run_arguments.json` lets a resumed run refuse to continue it with other arguments.

Example:
    >>> out = check_run_dir("runs/demo", overwrite=False, resume="true")
    >>> resume_point("true", out / "finetune")  # its last complete checkpoint, or None
"""

import dataclasses
import enum
import hashlib
import json
import re
import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .checkpoint_lora import atomic_write_all, atomic_write_text
from .configuration_lora import PHASES
from .data import DataError
from .model_dir import TOKENIZER_FILES, check_output_dir
from .card_metadata import CARD_NAME, edited_by_hand
from .checkpoint_lora import CODE_FILES, CONFIG_NAME, GENERATION_CONFIG_NAME, WEIGHTS_NAME
from .report import plot_loss_curves

logger = logging.get_logger(__name__)

__all__ = ["RESULTS_NAME", "RECORD_NAME", "PHASE_DONE", "PHASE_ARGUMENTS", "PREDICTIONS_NAME", "check_run_dir", "resume_point",
           "phase_arguments", "check_reusable", "clear_previous_run", "finished_phase", "write_json", "publish_final"]

RESULTS_NAME = "all_results.json"  # flat, as run_glue.py writes it
RECORD_NAME = "run_record.json"  # the structured record: both phases, data, hyperparameters (read by the model card)
PHASE_DONE = "phase_results.json"
PHASE_ARGUMENTS = "run_arguments.json"
PREDICTIONS_NAME = "predict_results.txt"
LOSS_PICTURE = "loss_curve.png"
# What the top directory gets from the last phase's directory.
PUBLISHED = (CONFIG_NAME, WEIGHTS_NAME, *CODE_FILES, GENERATION_CONFIG_NAME, PREDICTIONS_NAME)
# `--resume_from_checkpoint` values that mean "the last complete checkpoint", as the Trainer reads them.
_LAST = ("True", "true", "1", "last")
# Arguments that change no trained weight and no reported metric: a resumed run may change them.
_BOOKKEEPING = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "disable_tqdm", "report_to", "run_name", "project",
                "push_to_hub", "local_rank", "ddp_timeout", "skip_memory_metrics", "include_num_input_tokens_seen",
                "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
                "torch_empty_cache_steps", "enable_jit_checkpoint"}
_BOOKKEEPING_PREFIXES = ("logging_", "log_", "hub_", "trackio_", "save_")
# Arguments the pretrain phase does not read: changing them on resume keeps a finished pretrain phase.
_FINETUNE_ONLY = {"num_train_epochs", "max_steps", "skip_finetune", "merge_between_phases", "full_finetune", "task", "label_column",
                  "validation_file", "test_file", "max_eval_samples", "do_predict", "load_best_model_at_end",
                  "metric_for_best_model", "greater_is_better", "finetune_trainable"}


# ----- may the run write here ------------------------------------------------------------------
def check_run_dir(output_dir: str, overwrite: bool, resume: str | None) -> Path:
    """`--output_dir` as a `Path`: a directory that is empty, or that the run is told to overwrite or resume."""
    out = check_output_dir(
        output_dir, overwrite=bool(overwrite or resume), name="`--output_dir`", error=DataError,
        not_empty_hint=("pass `--resume_from_checkpoint true` to continue that run or `--overwrite_output_dir` to train "
                        "again from scratch (what the earlier run wrote there is removed)"),
    )
    if resume and resume not in _LAST:
        phases = [(out / phase).resolve() for phase in PHASES]
        if not any(Path(resume).resolve().is_relative_to(phase) for phase in phases):
            # Each phase resumes only from its own checkpoints: another path would be ignored.
            raise DataError(
                f"`--resume_from_checkpoint` {resume!r} is not a checkpoint of this run's phases ({str(out / 'pretrain')!r}, "
                f"{str(out / 'finetune')!r}); pass one of their checkpoint folders, or `true` for the last complete one."
            )
    return out


def resume_point(wanted: str | None, phase_dir: Path) -> str | None:
    """What `--resume_from_checkpoint` means for one phase: a checkpoint path inside it, its last complete checkpoint, or none."""
    if not wanted:
        return None
    if wanted not in _LAST:
        if not Path(wanted).resolve().is_relative_to(phase_dir.resolve()):
            return None
        if not _is_complete_checkpoint(Path(wanted)):
            raise DataError(
                f"`--resume_from_checkpoint` {wanted!r} is not a complete checkpoint (it needs model.safetensors and a "
                "readable trainer_state.json); pass an earlier one, or `true` for the last complete one."
            )
        return wanted
    if not phase_dir.is_dir():
        return None
    steps = {int(m.group(1)): p for p in phase_dir.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()}
    for step in sorted(steps, reverse=True):
        if _is_complete_checkpoint(steps[step]):
            return str(steps[step])
        logger.warning(f"Skipping {steps[step]}: incomplete, the run stopped while writing it. Its steps are trained again.")
    return None


def _is_complete_checkpoint(path: Path) -> bool:
    # The Trainer writes trainer_state.json last into a checkpoint: when it parses, everything before it is whole.
    # Weights must be safetensors: a checkpoint holding only pickled weights is never loaded.
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / WEIGHTS_NAME).is_file()


# ----- may a phase be continued ----------------------------------------------------------------
def phase_arguments(phase: str, base: str, *groups) -> dict:
    """The arguments that shape what `phase` trains and reports, with their digest, as recorded in `<phase>/run_arguments.json`."""
    values = {}
    for group in groups:
        for f in dataclasses.fields(group):
            name = f.name
            if not f.init or name in _BOOKKEEPING or name.startswith(_BOOKKEEPING_PREFIXES):
                continue
            if phase == "pretrain" and name in _FINETUNE_ONLY:
                continue
            values[name] = _plain(getattr(group, name))
    values["model_name_or_path"] = base
    values = json.loads(json.dumps(values, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "arguments": values}


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def check_reusable(phase_dir: Path, wanted: dict) -> None:
    """Refuse to continue a phase that an earlier run trained with other arguments (or recorded none)."""
    recorded_file = phase_dir / PHASE_ARGUMENTS
    if not recorded_file.is_file():
        if (phase_dir / PHASE_DONE).is_file() or any(phase_dir.glob("checkpoint-*")):
            raise DataError(
                f"{str(phase_dir)!r} holds a {phase_dir.name} phase without a record of its arguments ({PHASE_ARGUMENTS}), so it "
                "cannot be continued safely; pass `--overwrite_output_dir` to train again or a new `--output_dir`."
            )
        return
    try:
        recorded = json.loads(recorded_file.read_text())
        old = recorded["arguments"]
        same = recorded["digest"] == wanted["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{str(recorded_file)!r} is not readable; pass `--overwrite_output_dir` to train again.") from None
    if same:
        return
    new = wanted["arguments"]
    changed = [f"`{k}` {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    raise DataError(
        f"The {phase_dir.name} phase in {str(phase_dir)!r} was trained with other arguments ({'; '.join(changed[:6]) or 'digest differs'}); "
        "`--resume_from_checkpoint` continues only a run with the same arguments. Pass `--overwrite_output_dir` to train "
        "again from scratch, or a new `--output_dir`."
    )


def clear_previous_run(out: Path) -> None:
    """`--overwrite_output_dir`: remove what an earlier run wrote there, so that none of it is reused or published."""
    for phase in PHASES:
        if (out / phase).is_dir():
            shutil.rmtree(out / phase)
    for name in (RESULTS_NAME, RECORD_NAME, *PUBLISHED, LOSS_PICTURE, *TOKENIZER_FILES):
        (out / name).unlink(missing_ok=True)
    card = out / CARD_NAME
    if card.is_file() and not edited_by_hand(card):
        card.unlink()  # a generated card describes the old run; a card the user wrote stays


def finished_phase(phase_dir: Path) -> dict | None:
    """The results an earlier run recorded for a finished phase, or None."""
    done = phase_dir / PHASE_DONE
    return json.loads(done.read_text()) if done.is_file() else None


# ----- writing ---------------------------------------------------------------------------------
def write_json(path: Path, payload: dict) -> None:
    """Write `payload` as sorted, indented JSON (atomically: readers never see half a file)."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def publish_final(final_dir: Path, out: Path, tokenizer: PreTrainedTokenizerBase, results: dict, histories: dict) -> None:
    """Copy the last phase's model to the top directory, with results, the loss picture and the card."""
    items = [item for item in final_dir.iterdir() if item.is_file() and item.name in PUBLISHED]
    atomic_write_all(out, [(item.name, lambda tmp, source=item: shutil.copyfile(source, tmp)) for item in items])
    tokenizer.save_pretrained(out)
    plot_loss_curves(histories, out / LOSS_PICTURE)
    write_json(out / RECORD_NAME, results)
    write_json(out / RESULTS_NAME, flat_results(results))
    from .cards import write_model_card  # here, not at the top: cards reads this module's file names

    try:
        write_model_card(out, results)
    except FileExistsError as err:  # the user's own card in the output directory stays
        logger.warning(str(err))


def flat_results(results: dict) -> dict:
    """`all_results.json` as the HF example scripts write it: the final phase's `train_*`, `eval_*` and `test_*` metrics
    at the top level, the pretrain phase's (when a finetune phase followed it) as `pretrain_train_*`, `pretrain_eval_*`."""
    final = results.get("finetune") or results.get("pretrain") or {}
    flat = dict(final)
    if results.get("finetune") and results.get("pretrain"):
        flat.update({f"pretrain_{key}": value for key, value in results["pretrain"].items()})
    return flat
