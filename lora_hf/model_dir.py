"""What a directory written by `save_pretrained` holds, for the commands that read one (card, push, merge, export-peft).

Each check fails with one `ValueError`/`OSError` line naming the directory and what is wrong with it,
so the commands can print it as their one-line reason.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .configuration_lora import LoraConfig
from .modeling_lora import CONFIG_NAME, WEIGHTS_NAME, head_class

__all__ = ["MODEL_DIR_HELP", "TOKENIZER_FILES", "check_model_dir", "model_class", "load_model_dir", "tokenizer_files", "copy_tokenizer_files", "check_output_dir", "command_parser", "run_command"]

# The help of a command's model-directory argument.
MODEL_DIR_HELP = "A directory written by save_pretrained or lora-hf train."
# The files `tokenizer.save_pretrained` may write (fast and slow tokenizers of the common families).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def check_model_dir(path) -> LoraConfig:
    """The `LoraConfig` of the lora_hf model saved in `path`; `OSError`/`ValueError` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise OSError(f"{str(path)!r} does not exist; pass a directory written by `save_pretrained` or `lora-hf train`.")
    if not path.is_dir():
        raise OSError(f"{str(path)!r} is a file; pass the directory written by `save_pretrained`.")
    config_file = path / CONFIG_NAME
    if not config_file.is_file() and (path / "adapter_config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a lora_hf model but a PEFT adapter (adapter_config.json); use `lora-hf import-peft` first.")
    if not config_file.is_file():
        raise OSError(f"{str(path)!r} has no {CONFIG_NAME}: it is not a saved model directory.")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise OSError(f"{config_file} is not readable JSON ({err}).") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != LoraConfig.model_type:
        hint = " (a PEFT adapter: use `lora-hf import-peft`)" if (path / "adapter_config.json").is_file() else ""
        raise ValueError(
            f"{str(path)!r} is not a lora_hf model: its {CONFIG_NAME} has model_type {model_type!r}, not 'lora'{hint}."
        )
    if not (path / WEIGHTS_NAME).is_file():
        raise OSError(f"{str(path)!r} has no {WEIGHTS_NAME}; save the model with `save_pretrained` first.")
    return LoraConfig.from_pretrained(path)


def model_class(config: LoraConfig):
    """The lora_hf class `config.architectures` names (the class that saved the model)."""
    return head_class((config.architectures or ["LoraModel"])[0])


def load_model_dir(path, base_model_name_or_path: str | None = None):
    """Load the lora_hf model saved in `path` into the class that saved it (adapter-only saves rebuild their base)."""
    config = check_model_dir(path)
    return model_class(config).from_pretrained(path, base_model_name_or_path=base_model_name_or_path)


def tokenizer_files(path) -> list:
    """The tokenizer files present in `path`, in `TOKENIZER_FILES` order."""
    return [name for name in TOKENIZER_FILES if (Path(path) / name).is_file()]


def copy_tokenizer_files(source, destination) -> list:
    """Copy the tokenizer saved beside a model to `destination` as it is (nothing is loaded or run)."""
    names = tokenizer_files(source)
    for name in names:
        shutil.copyfile(Path(source) / name, Path(destination) / name)
    return names


def check_output_dir(out, source=None, overwrite: bool = False, *, name: str = "The output",
                     not_empty_hint: str = "pass a new directory or --overwrite", error: type = OSError) -> Path:
    """`out` as a `Path`, refusing a file, the source directory itself, or a non-empty directory without `overwrite`.

    Nothing is created: the writer makes the directory once there is something to write. `name` is how
    the messages call the output, `not_empty_hint` what they suggest for a non-empty one, and `error` the
    exception a file or a non-empty directory raises (`lora-hf train` says `--output_dir` and raises DataError).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"{name} {str(out)!r} is a file; pass a directory.")
    if source is not None and out.exists() and Path(source).exists() and os.path.samefile(out, source):
        raise ValueError(f"{name} {str(out)!r} is the input directory; pass a new directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"{name} {str(out)!r} is not empty; {not_empty_hint}.")
    return out


def command_parser(command: str, description: str, examples: str, io: dict | None = None) -> argparse.ArgumentParser:
    """The parser of `lora-hf <command>`, with its examples kept as written under the options.

    `io`: the help texts of a directory-to-directory command's shared arguments, `{"source": (name, help),
    "output_dir": help, "base_model_name_or_path": help}`; `--overwrite` comes with them.
    """
    parser = argparse.ArgumentParser(
        prog=f"lora-hf {command}", description=description, epilog=f"examples:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if io:
        parser.add_argument(io["source"][0], help=io["source"][1])
        parser.add_argument("output_dir", help=io["output_dir"])
        parser.add_argument("--base_model_name_or_path", help=io["base_model_name_or_path"])
        parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty output directory.")
    return parser


def run_command(command: str, parser, argv, action) -> int:
    """Parse `argv`, run `action(args)`; a `ValueError`/`OSError`/`ImportError` becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        action(args)
    except (ValueError, OSError, ImportError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        print(f"lora-hf {command}: error: {reason}", file=sys.stderr)
        return 2
    return 0
