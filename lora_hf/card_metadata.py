"""The card's metadata as the Hub accepts it: Hub ids, the base model's id and license, and the offline check.

`check_card_metadata` covers offline what the Hub's own `/api/validate-yaml` checks for the fields
lora_hf writes. The base model's Hub id and license come from a local base's own files when it was
loaded from a directory.

Example:
    >>> hub_base_model("sentence-transformers/all-MiniLM-L6-v2")   # ('sentence-transformers/all-MiniLM-L6-v2', '')
"""

import json
import math
import re
from pathlib import Path

from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .checkpoint_lora import CONFIG_NAME

__all__ = ["CARD_NAME", "GENERATED_MARK", "HUB_LICENSES", "edited_by_hand", "looks_like_hub_id", "hub_base_model", "base_license", "check_card_metadata"]

# The card's file name; a local base model's own card is read for its Hub id and license.
CARD_NAME = "README.md"
# Marks a card lora_hf rendered; a README.md without it was written by a person and is kept.
GENERATED_MARK = "lora_hf:generated-card"
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


def edited_by_hand(card_path: Path) -> bool:
    """Whether `card_path` is a card a person wrote or edited (its generated-card line is gone): such a card is kept."""
    return card_path.is_file() and GENERATED_MARK not in card_path.read_text(encoding="utf-8", errors="replace")


def looks_like_hub_id(name: object) -> bool:
    """Whether `name` is a Hub repo id and not a path that would also pass the Hub's id check (`./x`, `/x`, `C:x`)."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".", "~")) or "\\" in name or ":" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_base_model(base_model_name_or_path: str | None) -> tuple:
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
        if looks_like_hub_id(recorded):
            return recorded, (
                f"The base was loaded from the local directory `{name}`; its config records `{recorded}` as its origin, "
                "which is the `base_model` given here."
            )
        return None, (
            f"The base was loaded from the local directory `{name}`, whose config records no Hub id, so the card "
            "metadata has no `base_model`."
        )
    if looks_like_hub_id(str(name)):
        return str(name), ""
    return None, f"`{name}` is neither a Hub id nor a directory here, so the card metadata has no `base_model`."


def _readme_hub_id(local: Path) -> str | None:
    """The one Hub id a model directory's README loads itself by (`from_pretrained('id')`, `SentenceTransformer('id')`)."""
    try:
        text = (local / CARD_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = {m for m in re.findall(r"(?:from_pretrained|SentenceTransformer)\(\s*['\"]([^'\"]+)['\"]", text) if looks_like_hub_id(m) and "/" in m}
    return found.pop() if len(found) == 1 else None


def base_license(base_model_name_or_path: str | None) -> str | None:
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
        if not looks_like_hub_id(value):
            raise ValueError(f"`base_model` must be a Hub model id ('user/name'), got {value!r}.")
    for value in data.get("datasets") or []:
        if not looks_like_hub_id(value):
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

