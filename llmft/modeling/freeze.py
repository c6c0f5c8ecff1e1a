"""`finetune.mode: freeze`: full fine-tuning of a chosen part of the model, the rest frozen.

What trains: every parameter inside a module `trainable_modules` names, and every parameter of the
decoder layers `trainable_layers` picks. A plain name matches a module whose dotted name is it or
ends with `.name` (`mlp`, `self_attn.o_proj`, `lm_head`, `layers.3`); a name with `*` is matched
against whole parameter names (`fnmatch`). Parameters shared between modules (a tied head and
embedding) train when either module is named. The model is saved whole, like a full run.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from llmft.config.finetune import FreezeFinetune
from llmft.errors import UserError

log = logging.getLogger("llmft")


def decoder_layers(model: Any) -> tuple[str, int]:
    """(dotted name, count) of the model's stack of decoder layers: the module list as long as the
    config's `num_hidden_layers`."""
    count = getattr(model.config, "num_hidden_layers", None)
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and name:
            return name, count
    raise UserError(
        f"finetune.trainable_layers: no list of {count} decoder layers found in {type(model).__name__}; "
        "name the modules to train with finetune.trainable_modules instead"
    )


def layer_indices(wanted: int | list[int], count: int) -> list[int]:
    """`trainable_layers` as indices into a stack of `count` layers: N -> the last N; a list as given
    (negative from the end)."""
    if isinstance(wanted, int):
        if wanted > count:
            raise UserError(f"finetune.trainable_layers: {wanted} is more than the model's {count} decoder layers")
        return list(range(count - wanted, count))
    bad = [i for i in wanted if not -count <= i < count]
    if bad:
        raise UserError(f"finetune.trainable_layers: {bad} out of range for a model with {count} decoder layers (0..{count - 1})")
    return sorted({i % count for i in wanted})


def matches(pattern: str, parameter: str) -> bool:
    """True when `parameter` (a dotted parameter name) lies in a module `pattern` names."""
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(parameter, pattern)
    return f".{pattern}." in f".{parameter}"


def trainable_names(model: Any, finetune: FreezeFinetune) -> set[str]:
    """Names (every alias of a shared parameter included) of the parameters the recipe trains."""
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    patterns = list(finetune.trainable_modules)
    if finetune.trainable_layers is not None:
        stack, count = decoder_layers(model)
        patterns_from_layers = [f"{stack}.{i}" for i in layer_indices(finetune.trainable_layers, count)]
    else:
        patterns_from_layers = []
    chosen: set[str] = set()
    unmatched = []
    for pattern in patterns + patterns_from_layers:
        hits = {name for name in names if matches(pattern, name)}
        if not hits:
            unmatched.append(pattern)
        chosen |= hits
    if unmatched:
        modules = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name and not name[-1].isdigit()})
        raise UserError(
            f"finetune.trainable_modules: {', '.join(map(repr, unmatched))} name no module of this model. "
            f"Module names in it: {', '.join(modules)}"
        )
    return chosen


def apply_freeze(model: Any, finetune: FreezeFinetune) -> Any:
    chosen = trainable_names(model, finetune)
    model.requires_grad_(False)
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in chosen:
            param.requires_grad_(True)
    trained = sorted({name.rsplit(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad})
    shown = ", ".join(trained[:6]) + (f" and {len(trained) - 6} more" if len(trained) > 6 else "")
    log.info("freeze: training %d modules (%s); everything else frozen", len(trained), shown)
    return model
