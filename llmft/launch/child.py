"""What a training process does first: make sure it was started the way the recipe says."""

from __future__ import annotations

import logging
import os
from typing import Any

from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.launch.deepspeed import offloads, replaced_training_keys
from llmft.launch.environment import check_launcher, read_launcher
from llmft.launch.ranks import quiet_other_ranks

log = logging.getLogger("llmft")


def enter_process(recipe: Recipe, config: dict[str, Any] | None) -> None:
    """Refuse a launcher that contradicts `distributed:` and its DeepSpeed `config` (every mismatch in
    one error), or a multi-process recipe run without one; quiet the logs of every process but the first."""
    d = recipe.distributed
    launcher = read_launcher(os.environ)
    if launcher is None:
        if d.launches or d.uses_deepspeed:
            raise UserError(
                f"distributed: {d.num_processes} process(es)"
                + (" with DeepSpeed" if d.uses_deepspeed else "")
                + " need a launcher; start the run with `llmft train RECIPE`, which launches them "
                "(or your own `accelerate launch ... -m llmft train RECIPE`)"
            )
        return
    quiet_other_ranks()
    stage = 0 if config is None else int(config["zero_optimization"]["stage"])
    check_launcher(d, stage, offloads(config), launcher)
    replaced = replaced_training_keys(config) if config is not None else []
    if replaced:
        log.info("distributed.deepspeed_config: its own optimizer/scheduler blocks replace %s", " and ".join(replaced))
    if launcher.deepspeed:
        # The recipe's JSON is passed to the Trainer and decides every DeepSpeed setting (agreement
        # with the launcher was just checked); accelerate (1.15) would otherwise refuse a JSON next
        # to the DeepSpeed keys of the user's own accelerate config.
        os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    import torch

    from llmft.launch import cpu_shims

    if cpu_shims.needed(torch.cuda.is_available(), config is not None, launched=True):
        cpu_shims.init_deepspeed_comm()
