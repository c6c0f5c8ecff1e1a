"""Adapters that start away from zero (`finetune.init` pissa, olora, loftq), saved as adapters for
the original base: as the change training made.

PiSSA and OLoRA start with A0, B0 from the SVD / QR of each adapted weight W, and train on the
residual W_res = W - s B0 A0 (s: the adapter's scaling), so the model at step 0 computes exactly
what the base does. After training, the model is W_res + s B A: an adapter that only works on
W_res. The saved adapter is therefore rewritten (peft's `path_initial_model_for_weight_conversion`
does the same): since W_res + s B A = W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0], the adapter
with A' = [A ; A0] and B' = [B | -B0] at rank 2r (alpha doubled, or x sqrt(2) under rsLoRA, so the
scaling is unchanged) applied to the original W computes the same. DoRA's magnitudes and
`modules_to_save` are kept as they are (DoRA normalises the combined weight, which is the same
matrix). The result is a plain LoRA adapter: the base fingerprint, `llmft merge` and its check, and
any other tool see an ordinary adapter on the original base.

LoftQ (qlora, 4-bit) leaves the base as it is and starts B0 A0 close to W - Q(W), the quantization
error. Saved as is, the adapter fits the 4-bit base only: merged into the full-precision W it would
add that error a second time. Converted the same way, W + s (B A - B0 A0) differs from the trained
Q(W) + s B A by what LoftQ could not offset, Q(W) + s B0 A0 - W: the same as any QLoRA adapter
merged into its full-precision base.

Checkpoints keep peft's own form (resuming needs the residual): their adapter_config.json says
`init_lora_weights: pissa` (or olora), and loading one onto the original base re-runs the
decomposition before the trained A and B are loaded, which gives the same W_res (the SVD and QR
of the same weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("llmft")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def initial_adapter(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the adapter's A and B as initialised, named as the saved adapter names them."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def convert_saved(initial: dict[str, torch.Tensor], adapter_dir: Path) -> None:
    """Rewrite the adapter saved in `adapter_dir` (W_res + s B A) as one for the original base (see
    the module docstring)."""
    from safetensors.torch import load_file, save_file

    weights_file, config_file = adapter_dir / ADAPTER_WEIGHTS, adapter_dir / ADAPTER_CONFIG
    weights = load_file(weights_file)
    missing = sorted(initial.keys() - weights.keys())
    if missing:  # the saved adapter is not the one initialised: a bug, never the user's input
        raise RuntimeError(f"{weights_file} lacks {len(missing)} adapter weights initialised in this run, e.g. {missing[0]}")
    for key, start in initial.items():
        trained = weights[key]
        if ".lora_A." in key:
            weights[key] = torch.cat([trained, start.to(trained.dtype)], dim=0).contiguous()
        else:
            weights[key] = torch.cat([trained, -start.to(trained.dtype)], dim=1).contiguous()
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    config = json.loads(config_file.read_text())
    init = config.get("init_lora_weights")
    config["r"] *= 2
    config["lora_alpha"] *= 2**0.5 if config.get("use_rslora") else 2
    config["init_lora_weights"] = True
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    log.info(
        "adapter: %s initialisation converted for the original base: rank %d, alpha %g (%s)",
        init,
        config["r"],
        config["lora_alpha"],
        adapter_dir,
    )
