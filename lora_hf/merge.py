"""Leaving lora_hf: the merged plain `transformers` model, and the `lora-hf merge` command.

Example:
    >>> merge_to_plain("runs/demo", "runs/demo-merged")   # loads with AutoModelFor*.from_pretrained, no lora_hf
"""

from pathlib import Path

from .model_dir import MODEL_DIR_HELP, check_output_dir, command_parser, copy_tokenizer_files, load_model_dir, run_command

__all__ = ["merge_to_plain", "merge_main"]


def merge_to_plain(model_dir: str | Path, output_dir: str | Path, base_model_name_or_path: str | None = None, overwrite: bool = False) -> Path:
    """Write the merged plain `transformers` model (and the tokenizer saved beside it) to `output_dir`.

    The result loads with `AutoModelFor*.from_pretrained(output_dir)`: no lora_hf, no remote code.
    """
    out = check_output_dir(output_dir, model_dir, overwrite)
    model = load_model_dir(model_dir, base_model_name_or_path)
    plain = model.merge_and_unload(safe_merge=True)
    plain.save_pretrained(out)
    copy_tokenizer_files(model_dir, out)
    return out


def merge_main(argv: list | None = None) -> int:
    parser = command_parser(
        "merge",
        "Fold the adapters into the base weights and write the plain transformers model (and the tokenizer beside it). "
        "The result loads with AutoModelFor*.from_pretrained: no lora_hf, no trust_remote_code.",
        "  lora-hf merge runs/demo runs/demo-merged\n"
        "  lora-hf merge my-lora merged --base_model_name_or_path ./MiniLM   # adapter-only save, base elsewhere",
        io={"source": ("model_dir", MODEL_DIR_HELP),
            "output_dir": "Where to write the merged model (new or empty directory).",
            "base_model_name_or_path": "Load the base from here instead of the path in config.json."},
    )

    def action(args):
        out = merge_to_plain(args.model_dir, args.output_dir, args.base_model_name_or_path, args.overwrite)
        print(f"Wrote the merged model to {out}")

    return run_command("merge", parser, argv, action)
