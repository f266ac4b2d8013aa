"""Run a training script as `__main__` and record, on every rank, what that rank saw.

    accelerate launch ... tests/rank_probe.py scripts/run_two_phase.py <flags>

Each rank writes `<LORA_HF_RANK_DIR>/rank<i>.json` (world size, process index, the lora_hf it imported)
and, after each phase, `rank<i>-<phase>.safetensors` with its in-memory trainable tensors (gathered when
the engine shards them), so a test can tell a real multi-process run from a single process and compare
the ranks with one another and with what was saved.
"""

import json
import os
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import lora_hf
from lora_hf import training

RECORD = Path(os.environ["LORA_HF_RANK_DIR"])
_run_two_phase, _train_phase = training.run_two_phase, training.TwoPhaseRun.train_phase


def run_two_phase(model_args, lora_args, data_args, training_args, phase_args=None):
    seen = {"world_size": training_args.world_size, "process_index": training_args.process_index,
            "torch_distributed_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "lora_hf": lora_hf.__file__}
    (RECORD / f"rank{training_args.process_index}.json").write_text(json.dumps(seen))
    return _run_two_phase(model_args, lora_args, data_args, training_args, phase_args)


def train_phase(self, model, args, *rest, **kwargs):
    done = _train_phase(self, model, args, *rest, **kwargs)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    tensors = {}
    for name in names:
        param = params[name]
        if hasattr(param, "ds_id"):  # a ZeRO-3 partition: gather the full tensor on every rank
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                tensors[name] = param.detach().clone().contiguous()
        else:
            tensors[name] = param.detach().clone().contiguous()
    save_file(tensors, str(RECORD / f"rank{args.process_index}-{Path(args.output_dir).name}.safetensors"))
    return done


training.run_two_phase, training.TwoPhaseRun.train_phase = run_two_phase, train_phase

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
