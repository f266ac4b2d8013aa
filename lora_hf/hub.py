"""The Hub: `push_to_hub` uploads a lora_hf model in one commit; the `lora-hf card` / `lora-hf push` commands.

A push uploads config, weights, the code files, the card, the loss picture (and the
tokenizer and results when present) in one commit. The card itself is built in `lora_hf.cards`; its
names are re-exported here, where callers found them before the card had a module of its own.

Example:
    >>> write_model_card("runs/demo")                        # runs/demo/README.md
    >>> push_to_hub("runs/demo", "me/minilm-vader-lora", private=True)
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

# The card's public names are re-exported (see `__all__`): callers imported them from here before cards.py.
from .card_metadata import CARD_NAME, check_card_metadata, hub_base_model, looks_like_hub_id
from .cards import TEMPLATE_NAME, build_model_card, edited_by_hand, template_path, weights_format, write_model_card
from .checkpoint_lora import CODE_FILES, CONFIG_NAME, GENERATION_CONFIG_NAME, WEIGHTS_NAME, read_safetensors
from .configuration_lora import PHASES
from .model_dir import MODEL_DIR_HELP, check_model_dir, command_parser, run_command, tokenizer_files
from .run_dir import LOSS_PICTURE, RECORD_NAME, RESULTS_NAME

if TYPE_CHECKING:
    from .modeling_lora import LoraPreTrainedModel

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


# ----- push -------------------------------------------------------------------------------------
def hub_files(model_dir: str | Path) -> list:
    """The files of `model_dir` a push uploads besides the card: config, weights, code, and the optional extras."""
    model_dir = Path(model_dir)
    # The code files its config.json's auto_map names; directories saved before the checkpoint format had its own
    # files carry three, and those three serve them.
    code = [name for name in CODE_FILES if (model_dir / name).is_file()]
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, "configuration_lora.py", "modeling_lora.py") if not (model_dir / name).is_file()]
    if missing:
        raise OSError(f"{str(model_dir)!r} lacks {missing}; save the model again with `save_pretrained` (it writes the code files).")
    optional = [GENERATION_CONFIG_NAME, LOSS_PICTURE, RESULTS_NAME, RECORD_NAME, *tokenizer_files(model_dir)]
    return [CONFIG_NAME, WEIGHTS_NAME, *code, *(name for name in optional if (model_dir / name).is_file())]


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


def push_to_hub(model_or_dir: "str | Path | LoraPreTrainedModel", repo_id: str, *, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None, base_model_id: str | None = None,
                revision: str | None = None, license: str | None = None, datasets: dict | None = None,
                source_dir: str | Path | None = None) -> CommitInfo:
    """Upload a lora_hf model (a directory or a model object) to `repo_id` in one commit; return the `CommitInfo`.

    The commit holds config.json, model.safetensors, the code files, README.md (rendered
    for `repo_id`, unless the directory's README.md is a hand-edited card) and, when present,
    loss_curve.png, all_results.json, run_record.json, generation_config.json and the tokenizer files.
    `base_model_id` replaces a local `base_model_name_or_path` in the uploaded config.json with a Hub
    id, so that an adapter-only upload loads elsewhere (the base fingerprint still guards the match).
    A model object is saved first; the extras then come from `source_dir` (the directory it was trained
    into or loaded from; default: `model.name_or_path` when that is a directory).
    """
    _check_repo_id(repo_id)
    if base_model_id is not None and not looks_like_hub_id(base_model_id):
        raise ValueError(f"`base_model_id` must be a Hub model id ('user/name'), got {base_model_id!r}.")
    with tempfile.TemporaryDirectory(prefix="lora_hf-push-") as scratch:
        sources, extras_dir = _sources(model_or_dir, Path(scratch) / "model", source_dir)
        # Files go up from disk (weights can be large); only what is rewritten here is held in memory.
        uploads = {name: str(path) for name, path in sources.items()}
        uploads.update(_config_upload(sources, base_model_id))
        existing = extras_dir / CARD_NAME
        if edited_by_hand(existing):
            uploads[CARD_NAME] = existing.read_bytes()  # a person's card: upload it unchanged
        else:
            card = build_model_card(_card_view(Path(scratch) / "card", sources, uploads, extras_dir), repo_id=repo_id,
                                    license=license, datasets=datasets)
            _validate_online(card)
            uploads[CARD_NAME] = str(card).encode("utf-8")
        return _commit(repo_id, uploads, private=private, token=token, revision=revision,
                       commit_message=commit_message or "Upload lora_hf model (config, weights, modelling code, card)")


def _sources(model_or_dir, save_dir: Path, source_dir) -> tuple:
    """`({name in the repo: file here}, the directory the extras come from)`; a model object is saved to `save_dir` first."""
    if isinstance(model_or_dir, (str, Path)):
        model_dir = Path(model_or_dir)
        check_model_dir(model_dir)
        return {name: model_dir / name for name in hub_files(model_dir)}, model_dir
    model_or_dir.save_pretrained(save_dir)
    sources = {name: save_dir / name for name in hub_files(save_dir)}
    origin = source_dir or getattr(model_or_dir, "name_or_path", None)
    extras_dir = Path(origin) if origin and Path(origin).is_dir() else save_dir
    for name in (LOSS_PICTURE, RESULTS_NAME, RECORD_NAME, *tokenizer_files(extras_dir)):
        if (extras_dir / name).is_file() and name not in sources:
            sources[name] = extras_dir / name
    return sources, extras_dir


def _config_upload(sources: dict, base_model_id: str | None) -> dict:
    """`{config.json: bytes}` when `base_model_id` rewrites the uploaded config, else {}; warns when the upload
    cannot load elsewhere (adapters only, on a base that is a local path)."""
    raw_config = json.loads(sources[CONFIG_NAME].read_text())
    rewritten = {}
    if base_model_id is not None:
        raw_config["base_model_name_or_path"] = base_model_id
        rewritten[CONFIG_NAME] = (json.dumps(raw_config, indent=2, sort_keys=True) + "\n").encode()
    base = raw_config.get("base_model_name_or_path")
    if _weights_format(sources[WEIGHTS_NAME]) != "full" and base and not looks_like_hub_id(base):
        logger.warning(
            f"The upload holds adapters only and its base `{base}` is a local path: loading it elsewhere needs "
            "`base_model_name_or_path=` (or push again with `base_model_id=` / `--base_model_id`)."
        )
    return rewritten


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


def _commit(repo_id: str, uploads: dict, *, private, token, revision, commit_message) -> CommitInfo:
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
    return weights_format(read_safetensors(path, tensors=False)[1])


# ----- the commands -----------------------------------------------------------------------------
def _dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrain_dataset", help="The pretrain phase's data: a Hub dataset id (goes to the metadata) or a description.")
    parser.add_argument("--finetune_dataset", help="The finetune phase's data: a Hub dataset id (goes to the metadata) or a description.")
    parser.add_argument("--license", help="A Hub license id (apache-2.0, mit, ...); default: the base model's, else 'unknown'.")


def _datasets(args) -> dict:
    return {phase: value for phase, value in (("pretrain", args.pretrain_dataset), ("finetune", args.finetune_dataset)) if value}


def card_main(argv: list | None = None) -> int:
    parser = command_parser(
        "card",
        "Write README.md, the model card, into a lora_hf model directory (metadata, both phases, eval results, "
        "loss curves, how to load it).",
        "  lora-hf card runs/demo\n  lora-hf card runs/demo --finetune_dataset stanfordnlp/sst2 --license mit",
    )
    parser.add_argument("model_dir", help=MODEL_DIR_HELP)
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
    parser = command_parser(
        "push",
        "Upload a lora_hf model directory to the Hub in one commit: config, weights, modelling code, the card "
        "(README.md), the loss picture, results and tokenizer when present. Log in first (`hf auth login`) or pass --token.",
        "  lora-hf push runs/demo me/minilm-vader-lora --private\n"
        "  lora-hf push runs/demo me/minilm-vader-lora --base_model_id sentence-transformers/all-MiniLM-L6-v2",
    )
    parser.add_argument("model_dir", help=MODEL_DIR_HELP)
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
