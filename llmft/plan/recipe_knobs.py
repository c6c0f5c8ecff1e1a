"""A recipe (resolved for a device, with the fast path it takes) in the memory estimator's terms."""

from __future__ import annotations

from dataclasses import replace

from llmft.config.finetune import FreezeFinetune, LoraFinetune, QLoraFinetune
from llmft.config.recipe import Recipe
from llmft.fastpath.decide import FastPath, config_blocker
from llmft.modeling.families import family
from llmft.plan.dims import ModelDims
from llmft.plan.knobs import Knobs
from llmft.resolve import Resolved


def knobs_for(
    recipe: Recipe,
    dims: ModelDims,
    settings: Resolved,
    path: FastPath | None,
    num_processes: int | None = None,
    seq_len: int | None = None,
) -> tuple[Knobs, list[str]]:
    """The estimator's knobs for `recipe` under `settings`, with the fast `path` the run takes (None: a
    stage off the fast path, or a model `llmft plan` could not build, whose path is then judged from
    its type). `forward_tokens` is the path's; "auto" is sized by `llmft.plan.passes`."""
    notes: list[str] = []
    ft, t, stage = recipe.finetune, recipe.training, recipe.stage
    traits = stage.traits
    if settings.precision_reason.startswith("auto: planned"):
        notes.append(f"training.precision: {settings.precision_reason}")
    if traits.samples:
        notes.append(f"stage {stage.name}: generation (KV cache) and the reward model are not counted")
    if recipe.distributed.deepspeed_config:
        notes.append(
            f"distributed.deepspeed_config: read from your JSON: zero_stage {settings.zero_stage}, offload {settings.offload}"
        )
    if path is not None:
        chunked, fused, forward_tokens = path.chunked_loss or path.scoring is not None, path.fused_ops, path.forward_tokens
    else:  # judged from the recipe and the model type alone
        chunked = traits.fast_path and t.chunked_loss and config_blocker(recipe, dims.model_type, settings) is None
        fused, forward_tokens = traits.fast_path and t.fused_ops, None
    lora = isinstance(ft, LoraFinetune)
    freeze_trainable, freeze_head = freeze_counts(dims, ft, notes) if isinstance(ft, FreezeFinetune) else (0, False)
    knobs = Knobs(
        mode=ft.mode,
        freeze_trainable=freeze_trainable,
        freeze_head=freeze_head,
        lora_rank=ft.rank if lora else 8,
        lora_targets=(ft.target_modules if isinstance(ft.target_modules, str) else tuple(ft.target_modules))
        if lora
        else "all-linear",
        lora_dropout=ft.dropout if lora else 0.0,
        dora=lora and ft.use_dora,
        modules_to_save=tuple(ft.modules_to_save) if lora else (),
        qlora_bits=ft.bits if isinstance(ft, QLoraFinetune) else 4,
        double_quant=ft.double_quant if isinstance(ft, QLoraFinetune) else True,
        weight_bytes=settings.weight_dtype.itemsize,
        precision=settings.precision,
        optimizer=t.optimizer,
        micro_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        seq_len=seq_len or recipe.data.max_length,
        sequences_per_example=traits.sequences_per_example,
        num_processes=num_processes or recipe.distributed.num_processes,
        zero_stage=settings.zero_stage,
        offload=settings.offload,
        gradient_checkpointing=t.gradient_checkpointing,
        chunked_loss=chunked,
        attn_implementation=recipe.model.attn_implementation,
        lora_input_cast=not traits.fast_forward,  # the fast path keeps adapter inputs in the compute dtype
        forward_tokens=forward_tokens if isinstance(forward_tokens, int) else None,
        # modelled as fused where both the norms and the MLPs are (`llmft.modeling.families`)
        fused_ops=fused and family(dims.model_type).fuses_norm_and_mlp,
        reference_model=stage.reference_source(ft).copies_weights,
        task=traits.task,
        device=settings.device,
    )
    return knobs, notes


#: Module names of the input embedding and the output head in the families llmft trains.
EMBEDDINGS, HEADS = ("embed_tokens", "wte", "word_embeddings"), ("lm_head", "embed_out", "output")
#: Modules grouping a decoder layer's linear layers.
LINEAR_GROUPS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def freeze_counts(dims: ModelDims, ft: FreezeFinetune, notes: list[str]) -> tuple[int, bool]:
    """(parameters trained, whether the output head trains) of a freeze recipe, from the model's
    dimensions: whole decoder layers, and named modules across the remaining layers. A pattern the
    dimensions cannot place (wildcards, unusual names) counts as nothing, and a note says so."""
    layers = ft.trainable_layers
    n_layers = min(layers, dims.layers) if isinstance(layers, int) else len({i % max(dims.layers, 1) for i in layers or []})
    rest = dims.layers - n_layers
    per_layer = {l.name: l.params // max(l.count, 1) for l in dims.linears}
    total, head, unplaced = n_layers * dims.layer_params, False, []
    for pattern in ft.trainable_modules:
        name = pattern.rsplit(".", 1)[-1]
        if name in EMBEDDINGS or (name in HEADS and dims.tied_embeddings):
            total += dims.embedding_params
            head = head or dims.tied_embeddings
        elif name in HEADS:
            total, head = total + dims.head_params, True
        elif name in per_layer:
            total += per_layer[name] * rest
        elif name in LINEAR_GROUPS:
            total += sum(per_layer.get(n, 0) for n in LINEAR_GROUPS[name]) * rest
        else:
            unplaced.append(pattern)
    if unplaced:
        notes.append(f"finetune.trainable_modules: {', '.join(unplaced)} not counted (the plan places modules by name)")
    return min(total, dims.params), head


def whole_micro_batches(knobs: Knobs, recipe: Recipe) -> Knobs:
    """The knobs for full-length micro-batches run whole: what `auto` pass sizing plans for."""
    return replace(knobs, seq_len=recipe.data.max_length, forward_tokens=None)
