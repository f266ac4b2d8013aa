"""Parameter groups and training phases: which parameters a phase trains, and which tensors a save must hold.

`LoraPreTrainedModel` takes these methods from `LoraPhasesMixin`. Travels with a saved model's code
(`CODE_FILES`); imports only torch and the other travelling files.
"""

import re

from torch import nn

from .configuration_lora import GROUPS, PHASES, check_group
from .lora_layers import LoraEmbedding, attention_projections, unwrapped_name

__all__ = ["LoraPhasesMixin"]


class LoraPhasesMixin:
    """Groups (`lora`, `embeddings`, `head`, `attention`, `norm`, `bias`, `all`, `re:<regex>`) and phases
    (`config.phase_trainable`) of a lora_hf model: `set_phase` freezes all but the phase's groups.

    Example:
        >>> model.set_phase("finetune")
        >>> sorted(model.group_parameter_names("head"))
        ['backbone.classifier.bias', 'backbone.classifier.weight']
    """

    # ----- parameter groups and phases ---------------------------------------------------
    def group_parameter_names(self, group: str) -> set:
        """Names of the parameters in `group` (one of `GROUPS`, or `re:<regex>` on parameter names), adapters excluded
        except for group `lora`.

        Example:
            >>> sorted(model.group_parameter_names("head"))
            ['backbone.classifier.bias', 'backbone.classifier.weight']
        """
        names = [unwrapped_name(name) for name, _ in self.named_parameters()]
        if group == "all":
            return set(names)
        if group.startswith("re:"):
            pattern = re.compile(group[3:])
            return {n for n in names if pattern.search(n)}
        if group == "lora":
            return {n for n in names if n.endswith((".lora_A", ".lora_B"))}
        if group == "bias":
            return {n for n in names if n.endswith(".bias")}
        if group == "head":
            prefix = self.base_prefix()
            if not prefix:
                return set()
            body = f"backbone.{prefix}."
            return {n for n in names if not n.startswith(body) and not n.endswith((".lora_A", ".lora_B"))}
        if group == "attention":  # the projections target_modules="auto" wraps: one rule for both
            modules = set(attention_projections(self))
        elif group == "embeddings":
            modules = {n for n, m in self.named_modules() if isinstance(m, (nn.Embedding, LoraEmbedding))}
        elif group == "norm":
            modules = {n for n, m in self.named_modules() if "norm" in type(m).__name__.lower()}
        else:
            raise ValueError(f"Unknown group {group!r}; allowed are {list(GROUPS)} or 're:<regex>'.")
        members = set()
        for module_name, module in self.named_modules():
            if module_name in modules:
                members.update(unwrapped_name(f"{module_name}.{p}") for p, _ in module.named_parameters(recurse=group == "norm"))
        return {n for n in members & set(names) if not n.endswith((".lora_A", ".lora_B"))}

    def phase_parameter_names(self, phase: str) -> set:
        """Names of the parameters `phase` trains, from `config.phase_trainable[phase]`."""
        if phase not in self.config.phase_trainable:
            raise ValueError(
                f"Unknown phase {phase!r}; `config.phase_trainable` defines {list(self.config.phase_trainable)} "
                f"(phases allowed: {list(PHASES)})."
            )
        names = set()
        for group in self.config.phase_trainable[phase]:
            check_group(group, f"phase_trainable[{phase!r}]")
            names |= self.group_parameter_names(group)
        return names

    def set_phase(self, phase: str) -> None:
        """Train exactly the groups `config.phase_trainable[phase]` names; freeze everything else.

        Example:
            >>> model.set_phase("pretrain")  # the adapters by default
            >>> model.print_trainable_parameters()
        """
        self.apply_phase(phase)
        self._record_trained(phase)

    def _record_trained(self, phase: str) -> None:
        self.mark_trained(self.config.phase_trainable[phase])

    def mark_trained(self, groups: list) -> None:
        """Record `groups` in `config.trained_groups` (the one writer): their tensors are saved with the adapters
        and required when loading them. `set_phase` and `save_pretrained` call it for the active phase.

        Example:
            >>> model.mark_trained(["head"])
        """
        for group in groups:
            check_group(group, "trained_groups")
            if group not in self.config.trained_groups:
                self.config.trained_groups.append(group)

    def apply_phase(self, phase: str) -> None:
        """Set `requires_grad` as `phase` says, without recording its groups as trained (loading re-applies a phase)."""
        trainable = self.phase_parameter_names(phase)
        if not trainable:
            raise ValueError(
                f"`phase_trainable[{phase!r}]` = {self.config.phase_trainable[phase]} selects no parameter of "
                f"{type(self).__name__}; name groups from {list(GROUPS)} that this model has."
            )
        for name, param in self.named_parameters():
            param.requires_grad_(unwrapped_name(name) in trainable)
        self.active_phase = phase

    def parameter_groups(self) -> dict:
        """`{"trainable": [names], "fixed": [names]}` as `requires_grad` stands now (tied weights once)."""
        groups = {"trainable": [], "fixed": []}
        for name, param in self.named_parameters():
            groups["trainable" if param.requires_grad else "fixed"].append(name)
        return groups

    def get_nb_trainable_parameters(self) -> tuple:
        """`(trainable, all)` parameter counts; tied weights are counted once."""
        trainable = total = 0
        for param in self.parameters():
            numel = getattr(param, "ds_numel", param.numel())  # ZeRO-3 keeps a slice of each weight per rank
            total += numel
            if param.requires_grad:
                trainable += numel
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # ----- which tensors are ours --------------------------------------------------------
    def new_parameter_names(self) -> set:
        """Parameters the base checkpoint did not provide: the adapters and tensors it lacked (a new head)."""
        return self.group_parameter_names("lora") | set(self.newly_initialized_keys)

    def adapter_state_keys(self) -> list:
        """State-dict keys saved in an adapter-only checkpoint: LoRA, the groups trained so far and in the
        active phase, and anything else that requires grad now. Tied weights appear once."""
        names = self.new_parameter_names()
        for group in self.config.trained_groups + list(self.config.phase_trainable.get(self.active_phase, [])):
            names |= self.group_parameter_names(group)
        names |= {unwrapped_name(n) for n, p in self.named_parameters() if p.requires_grad}
        return sorted(names)
