"""Checks `lora-hf train` runs before it loads data or trains, so that a wrong flag fails in seconds, in one line.

Example:
    >>> check_integrations(training_args)  # `--report_to wandb` without wandb installed: DataError now, not after phase 1
    >>> backbone_config = check_base_model("bert-base-uncased")
"""

import os
from pathlib import Path

from datasets import DatasetDict
from transformers import AutoConfig, PretrainedConfig, TrainingArguments
from transformers.utils import logging

from .data import DataArguments, DataError
from .loading_lora import check_base_weights
from .tasks import TASKS, Task

logger = logging.get_logger(__name__)

__all__ = ["check_integrations", "hub_repo_id", "check_base_model", "check_predict"]


def check_integrations(args: TrainingArguments) -> None:
    """`--report_to` and `--push_to_hub` fail here, before any data or model is loaded, not after the first phase."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_reporting_integration_callbacks

    names = [name for name in (args.report_to or []) if name != "none"]
    for name in names:
        if name != "all" and name not in INTEGRATION_TO_CALLBACK:
            raise DataError(f"`--report_to` {name!r} is not an integration transformers knows; choose from {['none', 'all', *INTEGRATION_TO_CALLBACK]}.")
    for name in names:
        for callback in get_reporting_integration_callbacks(name):
            try:
                callback()  # each callback checks at construction that its package is installed
            except (RuntimeError, ImportError) as err:
                reason = " ".join(str(err).split())
                raise DataError(f"`--report_to {name}` cannot be used: {reason} (or pass `--report_to none`).") from None
    if args.push_to_hub:
        _check_hub_push(args)


def hub_repo_id(args: TrainingArguments) -> str:
    """The Hub repo `--push_to_hub` writes: `--hub_model_id`, else the output directory's name."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def _check_hub_push(args: TrainingArguments) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import validate_repo_id

    repo_id = hub_repo_id(args)
    try:
        validate_repo_id(repo_id)
    except Exception as err:
        raise DataError(f"`--push_to_hub`: {repo_id!r} is not a Hub repo id ({' '.join(str(err).split())[:200]}); pass `--hub_model_id user/name`.") from None
    if _hub_offline():
        raise DataError("`--push_to_hub` needs the Hub, but HF_HUB_OFFLINE=1 is set; train without it and run `lora-hf push DIR REPO` later.")
    try:
        HfApi().whoami(token=args.hub_token)
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(
            f"`--push_to_hub`: the Hub ({constants.ENDPOINT}) cannot be reached or you are not logged in ({type(err).__name__}: {reason}); "
            "log in with `hf auth login` or pass `--hub_token`, or push later with `lora-hf push DIR REPO`."
        ) from None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def check_base_model(base: str) -> PretrainedConfig:
    """The backbone config of `--model_name_or_path`, once it is known to be a directory or a Hub model with safetensors weights."""
    if base.startswith(("/", ".", "~")) and not os.path.isdir(base):
        raise DataError(f"`--model_name_or_path` {base!r} is not a directory; pass a local model directory or a Hub id ('user/name').")
    _check_hub_model(base)
    check_base_weights(base)
    return AutoConfig.from_pretrained(base)


def _check_hub_model(base: str) -> None:
    """A Hub id that is neither cached nor reachable fails at once, not after transformers' download retries (~30 s)."""
    if os.path.isdir(base):
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        if isinstance(try_to_load_from_cache(base, "config.json"), str):
            return
    except Exception:  # not a valid repo id: transformers says so below
        return
    if _hub_offline():
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids downloading it; pass a local model directory, or unset HF_HUB_OFFLINE."
        )
    try:
        HfApi().model_info(base, timeout=10)
    except RepositoryNotFoundError:
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory nor a model on the Hub ({constants.ENDPOINT}); if it is "
            "private or gated, log in first (`hf auth login`)."
        ) from None
    except Exception as err:  # connection refused, DNS, timeout: httpx and requests raise their own types
        raise DataError(
            f"`--model_name_or_path` {base!r} is not a local directory and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(err).__name__}); pass a local model directory, or set HF_HUB_OFFLINE=1 to use the cache."
        ) from None


def check_predict(args: TrainingArguments, task_data: DatasetDict | None, task: Task | None, data_args: DataArguments) -> None:
    """`--do_predict` needs a test split the task can predict; without it, a test split lacking labels is pointed out."""
    test = task_data["test"] if task_data is not None and "test" in task_data else None
    has_labels = test is not None and data_args.label_column in test.column_names
    if not getattr(args, "do_predict", False):
        if test is not None and not has_labels and task.labelled:
            logger.warning(f"The test split has no {data_args.label_column!r} column: it is not used. Pass `--do_predict` to write its predictions.")
        return
    if test is None:
        raise DataError("`--do_predict` writes predictions for the test split; pass `--test_file` (or a dataset with a `test` split).")
    if task.predictions is None:
        predicted = [name for name, other in TASKS.items() if other.predictions is not None]
        raise DataError(
            f"`--do_predict` is for {', '.join(predicted[:-1])} and {predicted[-1]}; a {task.name} run reports the test perplexity without it."
        )
    if task.predict_needs_labels and not has_labels:
        raise DataError(
            f"`--do_predict` with token classification needs the test split's {data_args.label_column!r} column (it marks each word's "
            "first token); the test split has none."
        )
