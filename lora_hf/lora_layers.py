# This file travels: `save_pretrained` copies it next to `config.json` so that
# `trust_remote_code=True` works where lora_hf is not installed. It imports only
# torch, transformers and its sibling modules.
"""LoRA layers and their injection into a `transformers` backbone.

A wrapped layer keeps the *same* `weight` / `bias` Parameters as the layer it replaces, so
the backbone's state-dict keys do not change (`...query.weight` stays `...query.weight`) and
only `...query.lora_A` / `...query.lora_B` are added. That keeps base checkpoints loadable
as they are and makes `merge_and_unload` a matter of putting the original class back.
"""

import contextlib
import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .configuration_lora import INIT_CHOICES

__all__ = [
    "LoraLinear",
    "LoraEmbedding",
    "find_target_modules",
    "inject_lora",
    "unload_lora",
    "lora_layers",
    "candidate_module_names",
]

_LINEAR_TYPES = (nn.Linear, Conv1D)


# ----- wrapped and sharded tensors (FSDP, DeepSpeed ZeRO-3) ------------------------------------
def weight_shape(weight: torch.Tensor) -> torch.Size:
    """A weight's full shape, also under DeepSpeed ZeRO-3, whose partitioned weights have shape (0,) outside their forward."""
    return getattr(weight, "ds_shape", weight.shape)


# Wrappers that put themselves into parameter names (FSDP1 units, activation checkpointing). Their state
# dicts leave them out, and so do the names lora_hf groups, saves and loads.
_WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def unwrapped_name(name: str) -> str:
    for wrapper in _WRAPPER_NAMES:
        name = name.replace(wrapper, "")
    return name


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard, a collective every rank calls: a DTensor (FSDP2) on every rank, an FSDP1
    `ShardedTensor` on rank 0 (the others get an empty tensor: they do not write). Other tensors as they are."""
    if hasattr(tensor, "full_tensor") and hasattr(tensor, "device_mesh"):
        return tensor.full_tensor()
    if type(tensor).__name__ == "ShardedTensor":
        shards = tensor.local_shards()
        device = shards[0].tensor.device if shards else torch.device("cpu")
        on_zero = torch.distributed.get_rank() == 0
        full = torch.empty(tensor.size(), dtype=tensor.dtype, device=device) if on_zero else None
        tensor.gather(dst=0, out=full)
        return full if on_zero else torch.empty(0)
    return tensor


@contextlib.contextmanager
def zero3_gathered(tensors: list, modified: bool = False):
    """Whole weights inside the block under DeepSpeed ZeRO-3 (which keeps a slice of each per rank), partitioned
    again after it, from the values written in it when `modified`. A collective: every rank runs it, and every rank
    writes the same values. Without ZeRO-3, nothing happens."""
    partitioned = [t for t in dict.fromkeys(tensors) if hasattr(t, "ds_id")]
    if partitioned:
        partitioned[0].all_gather(param_list=partitioned)
    try:
        yield
    finally:
        if partitioned:
            partitioned[0].partition(param_list=partitioned, has_been_updated=modified)


# ----- the layers --------------------------------------------------------------------------------
def _check_init(init_lora_weights: str) -> None:
    if init_lora_weights not in INIT_CHOICES:
        raise ValueError(f"`init_lora_weights` must be one of {list(INIT_CHOICES)}, got {init_lora_weights!r}.")


class LoraLayer(nn.Module):
    """What LoRA layers share: scaling, merge state, and the way back to the original layer."""

    def _setup(self, base: nn.Module, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool) -> None:
        self.r = r
        self.lora_alpha = lora_alpha
        self.lora_dropout = float(lora_dropout)
        # rsLoRA (Kalajdzievski 2023): alpha / sqrt(r) keeps the update's scale stable as r grows.
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.merged = False
        # Enough to rebuild the original module in `unload` without keeping a second reference to it.
        self._base_class = type(base)
        self._base_attrs = {k: v for k, v in vars(base).items() if not k.startswith("_") and k != "training"}
        self.weight = base.weight
        if "bias" in base._parameters:
            self.bias = base.bias
        # The adapters are initialised here; tell transformers' initialiser to leave them alone, unless they are
        # on the meta device (`model.init_weights()` initialises them once the model has real storage).
        self._is_hf_initialized = base.weight.device.type != "meta"

    def _add_adapters(self, a_shape: tuple, b_shape: tuple, init_lora_weights: str) -> None:
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(a_shape, **factory))
        self.lora_B = nn.Parameter(torch.empty(b_shape, **factory))
        self.reset_lora_parameters(init_lora_weights)

    def delta_weight(self) -> torch.Tensor:
        """`scale * B @ A`, laid out like `self.weight` and in its dtype (computed in fp32)."""
        return self.delta_weight_fp32().to(self.weight.dtype)

    def delta_weight_fp32(self) -> torch.Tensor:
        # fp32 whatever the weight dtype: merging in bf16 would round the small update away.
        return self._to_weight_layout((self.lora_B.float() @ self.lora_A.float()) * self.scaling)

    def _to_weight_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold the update into `weight`; the forward then costs what the base layer costs."""
        if self.merged:
            return
        merged = self.weight.float() + self.delta_weight_fp32()
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"Merging the adapter of {self!r} produced NaN/Inf weights; the adapter is broken.")
        self.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of `weight` (exact up to floating-point rounding)."""
        if not self.merged:
            return
        unmerged = self.weight.float() - self.delta_weight_fp32()
        self.weight.copy_(unmerged)
        self.merged = False

    def unload(self) -> nn.Module:
        """The original module class holding this layer's (possibly merged) Parameters."""
        base = self._base_class.__new__(self._base_class)
        nn.Module.__init__(base)
        base.__dict__.update(self._base_attrs)
        base.weight = self.weight
        if hasattr(self, "bias"):  # None for a bias-free Linear (Llama's projections), still a registered entry
            base.register_parameter("bias", self.bias)
        base.train(self.training)
        return base


class LoraLinear(LoraLayer):
    """`y = base(x) + scale * B(A(dropout(x)))` beside an `nn.Linear` or GPT-2's `Conv1D`.

    Example:
        >>> layer = LoraLinear(nn.Linear(16, 32), r=4, lora_alpha=8)
        >>> layer(torch.randn(2, 16)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: str = "kaiming",
    ):
        super().__init__()
        # GPT-2's Conv1D stores W as (in, out) and computes x @ W + b.
        self.fan_in_fan_out = isinstance(base, Conv1D)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = weight_shape(base.weight)
        else:
            self.out_features, self.in_features = weight_shape(base.weight)
        self._setup(base, r, lora_alpha, lora_dropout, use_rslora)
        self._add_adapters((r, self.in_features), (self.out_features, r), init_lora_weights)

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: str = "kaiming") -> None:
        # B starts at zero: the model equals its base at step 0.
        _check_init(init_lora_weights)
        if init_lora_weights == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def _to_weight_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_shape = x.shape[:-1] + (self.out_features,)
        x = x.reshape(-1, self.in_features)  # (N, in)
        if self.merged:
            return _base_linear(x, self.weight, self.bias, self.fan_in_fan_out).view(out_shape)
        weight, bias, lora_A, lora_B = self.weight, self.bias, self.lora_A, self.lora_B
        if torch.is_autocast_enabled(x.device.type):
            # Autocast casts the inputs of the ops it knows (linear, addmm) but not of an in-place addmm_
            # or a custom Function: cast them here as it would, once, and the in-place paths below run in
            # that dtype. The casts' own backward returns the adapters' gradients in fp32 (master weights).
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, lora_A, lora_B = x.to(dtype), weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        lora_x = F.dropout(x, self.lora_dropout, True) if self.lora_dropout > 0.0 and self.training else x
        if torch.is_grad_enabled():
            result = _LoraLinearFunction.apply(x, lora_x, weight, bias, lora_A, lora_B, self.scaling, self.fan_in_fan_out)
        else:
            # Inference: accumulate scale * (xA^T)B^T into the base output in place, no extra pass over (N, out).
            result = _base_linear(x, weight, bias, self.fan_in_fan_out)
            result.addmm_(lora_x @ lora_A.T, lora_B.T, alpha=self.scaling)
        return result.view(out_shape)

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
        return (
            f"{kind}(in={self.in_features}, out={self.out_features}), r={self.r}, "
            f"scaling={self.scaling:g}, dropout={self.lora_dropout}, merged={self.merged}"
        )


def _base_linear(x: torch.Tensor, weight: torch.Tensor, bias, fan_in_fan_out: bool) -> torch.Tensor:
    """The wrapped layer's own output for a 2-D `x`: `x W^T + b`, or `x W + b` for GPT-2's Conv1D."""
    if fan_in_fan_out:
        return torch.addmm(bias, x, weight) if bias is not None else x @ weight
    return F.linear(x, weight, bias)  # (N, out)


class _LoraLinearFunction(torch.autograd.Function):
    """`y = base(x) + scale * (lora_x A^T) B^T` with a hand-written backward.

    The same GEMMs autograd would run, minus its bookkeeping: the LoRA update is accumulated into
    the base output in place, and when `lora_x is x` (no dropout) the input gradient of the base
    and of the adapter land in one buffer (`dx = dy W + dxa A` as one GEMM plus one accumulating
    GEMM) instead of two tensors and an add. On a MiniLM layer (N=2048, d=384, r=8, one thread)
    this halves the adapter's cost over the frozen layer (+4.3 ms -> +1.8 ms fwd+bwd). Gradients
    equal autograd's; the weight and bias get theirs too when a phase trains them.
    """

    @staticmethod
    def forward(ctx, x, lora_x, weight, bias, lora_A, lora_B, scaling: float, fan_in_fan_out: bool):
        after_a = lora_x @ lora_A.T  # (N, r)
        result = _base_linear(x, weight, bias, fan_in_fan_out)  # (N, out), a fresh tensor
        result.addmm_(after_a, lora_B.T, alpha=scaling)
        ctx.shared_input = lora_x is x
        ctx.scaling, ctx.fan_in_fan_out = scaling, fan_in_fan_out
        ctx.save_for_backward(x, None if ctx.shared_input else lora_x, weight, lora_A, lora_B, after_a)
        return result

    @staticmethod
    def backward(ctx, grad):  # grad: (N, out)
        x, lora_x, weight, lora_A, lora_B, after_a = ctx.saved_tensors
        lora_x = x if ctx.shared_input else lora_x
        need_x, need_lora_x, need_w, need_b, need_a, need_b_lora = ctx.needs_input_grad[:6]
        grad_x = grad_lora_x = grad_w = grad_bias = grad_a = grad_b = None
        grad_after_a = (grad @ lora_B).mul_(ctx.scaling) if (need_x or need_lora_x or need_a) else None  # (N, r)
        if need_b_lora:
            grad_b = (after_a.T @ grad).mul_(ctx.scaling).T  # (out, r)
        if need_a:
            grad_a = grad_after_a.T @ lora_x  # (r, in)
        if need_x or (ctx.shared_input and need_lora_x):
            grad_x = grad @ (weight.T if ctx.fan_in_fan_out else weight)  # (N, in)
            if ctx.shared_input:
                grad_x.addmm_(grad_after_a, lora_A)
        if need_lora_x and not ctx.shared_input:
            grad_lora_x = grad_after_a @ lora_A
        if need_w:
            grad_w = x.T @ grad if ctx.fan_in_fan_out else grad.T @ x
        if need_b:
            grad_bias = grad.sum(0)
        return grad_x, grad_lora_x, grad_w, grad_bias, grad_a, grad_b, None, None


class LoraEmbedding(LoraLayer):
    """`y = E[x] + scale * (A^T[x]) B^T` beside an `nn.Embedding`.

    A starts at zero and B is random, so the model equals its base at step 0 (as in PEFT).

    Example:
        >>> layer = LoraEmbedding(nn.Embedding(10, 8), r=2, lora_alpha=4)
        >>> layer(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 8])
    """

    def __init__(
        self,
        base: nn.Embedding,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: str = "kaiming",
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight_shape(base.weight)
        self.padding_idx = base.padding_idx
        self.max_norm = base.max_norm
        self.norm_type = base.norm_type
        self.scale_grad_by_freq = base.scale_grad_by_freq
        self.sparse = base.sparse
        self._setup(base, r, lora_alpha, lora_dropout, use_rslora)
        self._add_adapters((r, self.num_embeddings), (self.embedding_dim, r), init_lora_weights)

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: str = "kaiming") -> None:
        # A starts at zero: the model equals its base at step 0. B is normal under either init, as in PEFT:
        # an embedding's input is one-hot, so there is no fan-in for Kaiming's scale to follow.
        _check_init(init_lora_weights)
        nn.init.zeros_(self.lora_A)
        nn.init.normal_(self.lora_B)

    def _to_weight_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T  # (num_embeddings, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.embedding(
            x, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        if self.merged:
            return result
        after_a = F.embedding(x, self.lora_A.T, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
        return result + (after_a @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}), r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def lora_layers(model: nn.Module):
    """Yield `(name, layer)` for every LoRA layer in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def candidate_module_names(model: nn.Module) -> list:
    """Distinct leaf names of the modules LoRA can wrap (`query`, `c_attn`, ...), for error messages."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, _LINEAR_TYPES + (nn.Embedding,))})


def attention_projections(model: nn.Module) -> list:
    """Every attention projection: the Linear/Conv1D layers of each module whose class name contains "Attention".

    Structural rule, no per-architecture table: query/key/value and the output projection, or the
    fused QKV projection and the output projection (GPT-2 `c_attn` + `c_proj`, GPT-NeoX
    `query_key_value` + `dense`, Llama `q/k/v/o_proj`, BERT `query/key/value` + `attention.output.dense`).
    On the default task this beat query+value alone at the same rank while training 0.65% of MiniLM.
    """
    selected = set()
    for block_name, block in model.named_modules():
        if "attention" not in type(block).__name__.lower():
            continue
        for name, module in block.named_modules():
            # Children and grandchildren only: BERT keeps the output projection one level down (`output.dense`).
            if name and name.count(".") <= 1 and isinstance(module, _LINEAR_TYPES + (LoraLinear,)):
                selected.add(f"{block_name}.{name}" if block_name else name)
    return sorted(selected)


def find_target_modules(model: nn.Module, target_modules) -> list:
    """Full names of the modules of `model` that `target_modules` selects.

    `target_modules` is `"auto"` or a list whose items are module-name suffixes (`"query"`
    matches `...attention.self.query`) or `re:`-prefixed regexes matched against the full name.
    Every item must select at least one Linear/Conv1D/Embedding module.
    """
    if target_modules == "auto":
        names = attention_projections(model)
        if not names:
            raise ValueError(
                f"target_modules='auto' found no attention projection in {type(model).__name__}; pass explicit "
                f"`target_modules` from its Linear/Conv1D/Embedding modules: {candidate_module_names(model)}"
            )
        return names
    wrappable = [name for name, m in model.named_modules() if isinstance(m, _LINEAR_TYPES + (nn.Embedding,))]
    selected = set()
    for target in target_modules:
        if target.startswith("re:"):
            pattern = re.compile(target[3:])
            hits = [n for n in wrappable if pattern.fullmatch(n)]
        else:
            hits = [n for n in wrappable if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(
                f"`target_modules` item {target!r} matched no module of {type(model).__name__}; allowed are "
                f"suffixes or 're:' regexes of its Linear/Conv1D/Embedding modules, whose names end in: "
                f"{candidate_module_names(model)}"
            )
        selected.update(hits)
    return sorted(selected)


def inject_lora(model: nn.Module, config) -> list:
    """Replace the modules selected by `config.target_modules` with LoRA layers; return their names."""
    names = find_target_modules(model, config.target_modules)
    for name in names:
        # B @ A cannot have a rank above the layer's smaller side: a larger r only adds parameters
        # (and an untrusted config.json could ask for gigabytes of them).
        smaller = min(weight_shape(model.get_submodule(name).weight))
        if config.r > smaller:
            raise ValueError(
                f"`r`={config.r} exceeds the smaller dimension ({smaller}) of target module {name!r} "
                f"{tuple(weight_shape(model.get_submodule(name).weight))}; allowed is 1 <= r <= {smaller}."
            )
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child_name)
        layer_class = LoraEmbedding if isinstance(base, nn.Embedding) else LoraLinear
        layer = layer_class(
            base,
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            use_rslora=config.use_rslora,
            init_lora_weights=config.init_lora_weights,
        )
        layer.train(base.training)
        setattr(parent, child_name, layer)
    return names


def unload_lora(model: nn.Module) -> nn.Module:
    """Put the original module classes back in place of LoRA layers (merge first to keep the update)."""
    for name, layer in list(lora_layers(model)):
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, layer.unload())
    return model
