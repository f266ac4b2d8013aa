"""Train a lora_hf model a few steps under torch FSDP on CPU (gloo), then save it. Run by torchrun:

    torchrun --nproc_per_node 2 tests/fsdp_worker.py --fsdp 2 --state_dict sharded --base <dir> --out <dir>

`--fsdp 1`: FullyShardedDataParallel(use_orig_params=True), one unit per encoder layer; `--fsdp 2`:
`fully_shard` on each encoder layer and the root. `--state_dict full` gathers a full state dict (rank 0 only)
and hands it to `save_pretrained`; `sharded` calls `save_pretrained` on every rank with the model's own
sharded (DTensor) state dict, which lora_hf gathers. A plain loop: the global batch of 8 rows is split
between the ranks, as DDP or the Trainer would. Rank 0 writes `<out>/in_memory.safetensors` (the logits of
the trained in-memory model on fixed inputs) and every rank `<out>/rank<i>.json` (the world size it saw).
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import lora_hf
from lora_hf import LoraForSequenceClassification

STEPS, GLOBAL_BATCH, LENGTH = 3, 8, 12


def batches(vocab: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        yield torch.randint(5, vocab, (GLOBAL_BATCH, LENGTH), generator=g), torch.randint(0, 2, (GLOBAL_BATCH,), generator=g)


def wrap(model, version: int):
    layers = model.backbone.bert.encoder.layer
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({type(layers[0])}),
                                        device_id=torch.device("cpu"))  # every rank built the same model (same seed)
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    return fully_shard(model)


def full_state_dict(wrapped, version: int) -> dict:
    if version == 1:
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)  # offloading CPU tensors "to CPU" crashes rank 0 (SIGSEGV)
        with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            return wrapped.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdp", type=int, choices=[1, 2], required=True)
    parser.add_argument("--state_dict", choices=["full", "sharded"], required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = {"world_size": world, "torch_distributed_world_size": world, "rank": rank, "lora_hf": lora_hf.__file__,
            "node_rank": int(os.environ.get("GROUP_RANK", 0))}
    (out / f"rank{rank}.json").write_text(json.dumps(seen))

    torch.manual_seed(0)  # every rank builds the same adapters and head
    model = LoraForSequenceClassification.from_base_model(args.base, num_labels=2)
    vocab = model.config.backbone_config.vocab_size
    wrapped = wrap(model, args.fsdp)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    wrapped.train()
    per_rank = GLOBAL_BATCH // world
    for input_ids, labels in batches(vocab):
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = wrapped(input_ids=input_ids[mine], labels=labels[mine]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    wrapped.eval()
    probe = torch.randint(5, vocab, (4, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = wrapped(input_ids=probe).logits
    inner = wrapped.module if args.fsdp == 1 else wrapped
    if args.state_dict == "full":
        state = full_state_dict(wrapped, args.fsdp)
        inner.save_pretrained(out / "model", state_dict=state, is_main_process=rank == 0)
    elif args.fsdp == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.SHARDED_STATE_DICT):
            state = wrapped.state_dict()
        kinds = {type(v).__name__ for k, v in state.items() if k.endswith("lora_A")}
        print(f"rank {rank}: FSDP1 sharded state dict holds {kinds}")
        inner.save_pretrained(out / "model", state_dict=state, is_main_process=rank == 0)  # every rank: gathering needs them all
    else:
        inner.save_pretrained(out / "model", is_main_process=rank == 0)  # the model's own DTensor state dict, gathered
    if rank == 0:
        save_file({"input_ids": probe, "logits": logits.contiguous()}, str(out / "in_memory.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
