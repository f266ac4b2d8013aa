"""The `lora-hf` command: one subcommand per job (`lora-hf --help`)."""

import argparse
import sys

# Subcommand name -> "module:function". Each function takes the remaining argv and returns an exit code;
# modules are imported only when their subcommand runs, so `lora-hf --help` stays fast.
SUBCOMMANDS = {
    "train": ("lora_hf.training:main", "Run both training phases (pretrain, finetune) with the HF Trainer."),
    "merge": ("lora_hf.merge:merge_main", "Write the merged plain transformers model (no lora_hf needed to load it)."),
    "export-peft": ("lora_hf.peft_interop:export_main", "Write the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors)."),
    "import-peft": ("lora_hf.peft_interop:import_main", "Turn a PEFT LoRA adapter directory into a lora_hf model directory."),
    "card": ("lora_hf.hub:card_main", "Write the model card (README.md) into a model directory."),
    "push": ("lora_hf.hub:push_main", "Upload a model directory to the Hugging Face Hub in one commit."),
}


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, SUBCOMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="lora-hf",
        description="Train, merge, export and publish lora_hf models.",
        epilog=f"commands:\n{commands}\n\nRun `lora-hf <command> --help` for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # one command a line, in workflow order
    )
    parser.add_argument("command", choices=list(SUBCOMMANDS), metavar="command", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        parser.error(f"unknown command {argv[0]!r}; choose from {list(SUBCOMMANDS)}")
    module_name, func_name = SUBCOMMANDS[argv[0]][0].split(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
