"""`model.rope_scaling`: stretch a model's rotary position embeddings, in its config, before loading.

transformers (v5) keeps RoPE settings in `config.rope_parameters` (`rope_type`, `rope_theta`,
`factor`, ...); each model's rotary embedding reads them when it is built. So the scaling is
written into the config and the model is built from that config: the weights are unchanged, the
rotary frequencies (and, for yarn, the attention scaling) are not.
"""

from __future__ import annotations

from typing import Any

from llmft.config.model import RopeScaling
from llmft.errors import UserError

#: Keys of the model's own RoPE entry that stay (the base and partial rotation are the model's).
KEPT = ("rope_theta", "partial_rotary_factor")


def scaled_rope_parameters(current: dict[str, Any], scaling: RopeScaling, max_positions: int) -> dict[str, Any]:
    """The `rope_parameters` entry for `scaling`, keeping the model's base (`rope_theta`)."""
    params = {key: current[key] for key in KEPT if key in current}
    params.update(rope_type=scaling.type, factor=float(scaling.factor))
    if scaling.type == "yarn":
        params["original_max_position_embeddings"] = scaling.original_max_position_embeddings or max_positions
    return params


def apply_rope_scaling(config: Any, scaling: RopeScaling) -> str:
    """Write `scaling` into a transformers config (in place); returns a sentence saying what changed."""
    kind = getattr(config, "model_type", type(config).__name__)
    current = getattr(config, "rope_parameters", None)
    if not current:
        raise UserError(
            f"model.rope_scaling: this model ({kind}) has no rotary position embeddings to scale; remove model.rope_scaling"
        )
    nested = config.nested_rope_parameter_keys(current) if hasattr(config, "nested_rope_parameter_keys") else []
    if nested:
        raise UserError(
            f"model.rope_scaling: this model ({kind}) has a separate RoPE per layer type ({', '.join(nested)}); "
            "llmft only scales models with one RoPE; remove model.rope_scaling"
        )
    if current.get("rope_type", "default") != "default":
        raise UserError(
            f"model.rope_scaling: this model ({kind}) already scales its RoPE ({current['rope_type']}, "
            f"factor {current.get('factor')}); llmft does not stack a second scaling on it"
        )
    max_positions = getattr(config, "max_position_embeddings", None)
    if not max_positions:
        raise UserError(f"model.rope_scaling: this model ({kind}) does not state max_position_embeddings")
    config.rope_parameters = scaled_rope_parameters(current, scaling, max_positions)
    if scaling.type in ("linear", "yarn"):
        base = config.rope_parameters.get("original_max_position_embeddings", max_positions)
        config.max_position_embeddings = int(base * scaling.factor)
    # dynamic scales only beyond max_position_embeddings, so that stays the pretrained length
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    return (
        f"rope scaling: {scaling.type} x{scaling.factor:g}, max_position_embeddings "
        f"{max_positions} -> {config.max_position_embeddings}"
    )
