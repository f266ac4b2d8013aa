"""Which precision a training run uses when the user does not say.

bf16 autocast where the hardware computes bf16 natively: a CPU reporting AMX or AVX-512 BF16
(`amx_bf16` / `avx512_bf16` in /proc/cpuinfo), or a GPU with bf16 support. Elsewhere bf16 is
emulated and slower than fp32, so fp32 stays. Autocast only lowers the matmuls: the adapters, the
head and the optimizer states stay fp32 (master weights), so checkpoints mean the same either way.
An explicit `--bf16`, `--bf16 false` or `--fp16` always wins.
"""

from pathlib import Path

import torch

__all__ = ["cpu_bf16_flags", "choose_precision"]

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list:
    """The native-bf16 flags (`amx_bf16`, `avx512_bf16`) this CPU reports; [] where none or unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def choose_precision(bf16: bool | None, fp16: bool = False, use_cpu: bool = False, cpuinfo: str = "/proc/cpuinfo") -> tuple:
    """`(precision, reason)`: precision is "bf16", "fp16" or "fp32" (bf16/fp16 meaning autocast, fp32 weights).

    `bf16=None` means the user did not choose; `True`/`False` and `fp16=True` are explicit choices.
    """
    if fp16 and bf16:
        raise ValueError("`--fp16` and `--bf16` were both given; choose one.")
    if fp16:
        return "fp16", "--fp16 given"
    if bf16 is not None:
        return ("bf16", "--bf16 given") if bf16 else ("fp32", "--bf16 false given")
    if torch.cuda.is_available() and not use_cpu:
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"the GPU ({name}) supports bf16"
        return "fp32", f"the GPU ({name}) does not support bf16"
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return "bf16", f"the CPU reports {' and '.join(flags)}"
    return "fp32", "the CPU reports neither amx_bf16 nor avx512_bf16 (bf16 would be emulated, slower than fp32)"
