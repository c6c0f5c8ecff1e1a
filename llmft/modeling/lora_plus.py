"""LoRA+ (`finetune.lora_plus_ratio`): the B matrices of the adapter train with a larger learning rate
than the A matrices (Hayou et al., 2024: B's updates are ~`ratio` times too small at one shared rate).

Only the optimizer's parameter groups change: the A matrices and everything else trained (DoRA
magnitudes, `modules_to_save`) keep `training.learning_rate`; every `lora_B` goes into groups of their
own at `learning_rate x ratio`. The scheduler scales each group from its own starting rate, so the
ratio holds throughout. peft's `create_loraplus_optimizer` does the same for a fresh optimizer; this
returns groups, so every trainer llmft builds (transformers', TRL's, llmft's PPO loop) can use them
with the optimizer `training.optimizer` names.
"""

from __future__ import annotations

import types
from collections.abc import Collection, Iterable
from typing import Any


def is_lora_b(name: str) -> bool:
    """A parameter of a LoRA B matrix (peft: `...lora_B.<adapter>.weight`, `lora_embedding_B`)."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def param_groups(
    named_parameters: Iterable[tuple[str, Any]],
    learning_rate: float,
    weight_decay: float,
    ratio: float | None,
    decays: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: weight decay for names in `decays` (None:
    parameters with 2 or more dimensions), none for the rest; with a `ratio`, the LoRA B matrices in
    groups of their own at `learning_rate x ratio`. Empty groups are left out."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        decayed = name in decays if decays is not None else param.ndim >= 2
        groups.setdefault((ratio is not None and is_lora_b(name), decayed), []).append(param)
    out = []
    for b_side in (False, True):
        for decayed in (True, False):
            params = groups.get((b_side, decayed))
            if params:
                group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
                if b_side:
                    group["lr"] = learning_rate * ratio  # type: ignore[operator]
                out.append(group)
    return out


def _create_optimizer(self: Any, model: Any = None) -> Any:
    """transformers' `Trainer.create_optimizer`, with LoRA+ groups (`param_groups`)."""
    if self.optimizer is None:
        opt_model = self.model if model is None else model
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        decays = set(self.get_decay_parameter_names(opt_model))
        groups = param_groups(
            opt_model.named_parameters(), self.args.learning_rate, self.args.weight_decay, self._lora_plus_ratio, decays
        )
        self.optimizer = cls(groups, **kwargs)
    return self.optimizer


def install(trainer: Any, ratio: float | None) -> Any:
    """Make a transformers (or TRL) trainer build its optimizer with LoRA+ groups; nothing without a ratio."""
    if ratio is not None:
        trainer._lora_plus_ratio = ratio
        trainer.create_optimizer = types.MethodType(_create_optimizer, trainer)
    return trainer
