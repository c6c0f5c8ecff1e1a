"""Rules that span recipe sections, each a function of the sections it reads, returning
`(dotted.key, problem)` pairs. What a stage accepts is read from its traits (`llmft.config.stage`),
so a rule never names a stage.

Everything a recipe can be refused for without loading a model, reading data or looking at the
machine belongs here, so `llmft validate` (and `plan`) report it exactly as `train` would, all at once.
"""

from __future__ import annotations

from typing import Any

from llmft.config.data import DataConfig
from llmft.config.distributed import DistributedConfig
from llmft.config.finetune import BASE_MOVING_INITS, LoraFinetune, QLoraFinetune
from llmft.config.matrix import is_supported, unsupported_message
from llmft.config.model import ModelConfig
from llmft.config.output import OutputConfig
from llmft.config.stage import Reference, StageSection, stages_with
from llmft.config.training import BNB_OPTIMIZERS, TrainingConfig

Problems = list[tuple[str, str]]
#: Module names a causal LM's output head has in the model families llmft trains.
OUTPUT_HEAD_NAMES = ("lm_head",)


def _set(section: Any, key: str) -> bool:
    """True when the recipe sets `key` itself (a default that does not apply stays quiet)."""
    return key in section.model_fields_set


def keys_without_effect(stage: StageSection) -> list[str]:
    """Dotted keys that mean nothing for `stage`: refused when a recipe sets them (the rules below), and
    left out of recipe.resolved.yaml when it does not, so the resolved recipe loads back."""
    traits = stage.traits
    keys = []
    if not traits.fast_forward:
        keys.append("data.padding_free")
    if not traits.fuses_ops:
        keys.append("training.fused_ops")
    if not traits.fast_path:
        keys.append("training.chunked_loss")
    if not traits.forward_passes:
        keys.append("training.max_tokens_per_forward")
    if not traits.truncation:
        keys.append("data.truncation")
    if not traits.supervision:
        keys += ["data.mask_prompt", "data.train_on"]
    if not traits.chat_template:
        keys += ["data.template", "data.enable_thinking"]
    if not traits.reasoning_labels:
        keys.append("data.train_on_reasoning")
    return keys


def supported_pair(stage: StageSection, finetune: Any) -> Problems:
    if is_supported(stage.name, finetune.mode):
        return []
    return [("stage.name", unsupported_message(stage.name, finetune.mode))]


def data_for_stage(stage: StageSection, data: DataConfig) -> Problems:
    """Formats, and the data keys the stage's trainer honours."""
    traits, name, problems = stage.traits, stage.name, []
    for split in ("train", "eval"):
        for i, spec in enumerate(getattr(data, split)):
            if spec.format != "auto" and spec.format not in traits.formats:
                expected = " or ".join(repr(f) for f in traits.formats)
                problems.append((f"data.{split}.{i}.format", f"stage {name!r} trains on {expected} data (got {spec.format!r})"))
    if data.packing and not traits.fast_path:
        problems.append(
            (
                "data.packing",
                f"stage {name!r} does not pack (only pt and sft do: "
                f"{'it samples a reply to each prompt' if traits.samples else 'it compares whole sequences'}); remove it",
            )
        )
    if data.group_by_length and not traits.group_by_length:
        problems.append(
            ("data.group_by_length", f"not available for stage {name!r} (its trainer batches the data itself); remove the key")
        )
    if _set(data, "padding_free") and not traits.fast_forward:
        problems.append(
            (
                "data.padding_free",
                f"applies to stages {stages_with('fast_forward')} and has no effect on stage {name!r}; remove it",
            )
        )
    if _set(data, "truncation") and data.truncation not in traits.truncation:
        if not traits.truncation:
            why = (
                "over-long prompts are dropped and counted, replies are generated"
                if traits.samples
                else "text is cut into blocks of data.max_length"
            )
            problems.append(("data.truncation", f"has no effect on stage {name!r} ({why}); remove it"))
        else:
            problems.append(
                (
                    "data.truncation",
                    f"{data.truncation!r} is not available for stage {name!r}: its TRL trainer "
                    f"cuts over-long sequences at the end. Use {' or '.join(map(repr, traits.truncation))}",
                )
            )
    if not traits.supervision:
        for key in ("mask_prompt", "train_on"):
            if _set(data, key):
                problems.append((f"data.{key}", f"chooses what sft supervises and has no effect on stage {name!r}; remove it"))
    if _set(data, "train_on_reasoning") and not traits.reasoning_labels:
        problems.append(
            (
                "data.train_on_reasoning",
                f"has no effect on stage {name!r} (only sft and dpo, whose losses read llmft's labels, apply it); remove it",
            )
        )
    for key in ("template", "enable_thinking"):
        if _set(data, key) and not traits.chat_template:
            problems.append((f"data.{key}", f"stage {name!r} trains on plain text and renders no chat template; remove it"))
    if (generated := stage.generated_tokens()) is not None:
        key, tokens = generated
        if data.max_length - tokens < 1:
            problems.append(
                (
                    "data.max_length",
                    f"{data.max_length} leaves no room for a prompt before stage.{key}="
                    f"{tokens} generated tokens; raise data.max_length or lower stage.{key}",
                )
            )
    return problems


def streaming_problems(stage: StageSection, data: DataConfig, training: TrainingConfig, d: DistributedConfig) -> Problems:
    """`data.streaming`: only where llmft's own next-token trainer reads the data (pt, sft), with a
    length in steps (a stream has no known length for `epochs`), in one process."""
    if not data.streaming:
        return []
    problems: Problems = []
    if not stage.traits.fast_path:
        problems.append(("data.streaming", f"stage {stage.name!r} reads its data whole (only pt and sft stream); remove it"))
    if training.max_steps is None:
        problems.append(
            ("training.max_steps", "data.streaming needs it: a stream's length is unknown, so epochs cannot be counted; set it")
        )
    if d.launches or d.uses_deepspeed:
        problems.append(("data.streaming", "streams in one process only for now; remove it or train without distributed:"))
    return problems


def finetune_for_stage(stage: StageSection, finetune: Any, model: ModelConfig) -> Problems:
    """The finetune mode against the stage and the model source."""
    problems = []
    if isinstance(finetune, QLoraFinetune) and model.gguf_file:
        problems.append(
            (
                "finetune.mode",
                "qlora cannot quantize a model loaded from model.gguf_file (transformers does "
                "not combine the two); use finetune.mode: lora, or a safetensors checkpoint",
            )
        )
    if isinstance(finetune, LoraFinetune) and not stage.traits.head_adapter and isinstance(finetune.target_modules, list):
        heads = [m for m in finetune.target_modules if m in OUTPUT_HEAD_NAMES]
        if heads:
            problems.append(
                (
                    "finetune.target_modules",
                    f"a LoRA adapter on the output head ({', '.join(heads)}) would never "
                    f"train in stage {stage.name!r}: its TRL trainer computes log-probs from the head's weight "
                    "directly. Remove it, or train the head in full with finetune.modules_to_save",
                )
            )
    if stage.reference_source(finetune) is Reference.RELOADED and model.gguf_file:
        problems.append(
            (
                "stage.beta",
                f"full {stage.name} with a reference reloads it from model.path, which cannot start "
                "from model.gguf_file; use finetune.mode: lora or beta: 0",
            )
        )
    return problems


def adapter_variant(stage: StageSection, finetune: Any, distributed: DistributedConfig) -> Problems:
    """`finetune.init` (and the other LoRA variants) against the mode, the stage's reference and sharding."""
    if not isinstance(finetune, LoraFinetune):
        return []
    problems, init = [], finetune.init
    if finetune.continues_adapter and _set(finetune, "init"):
        problems.append(
            ("finetune.init", "a continued adapter (finetune.adapter_path) starts from its trained weights; remove init")
        )
        return problems
    if init in BASE_MOVING_INITS and isinstance(finetune, QLoraFinetune):
        problems.append(
            (
                "finetune.init",
                f"{init} decomposes the full-precision base weights, which a quantized (qlora) base does not "
                f"hold; use finetune.mode: lora with init: {init}, or init: loftq for a 4-bit base",
            )
        )
    if init == "loftq" and getattr(finetune, "bits", None) != 4:
        problems.append(
            (
                "finetune.init",
                "loftq sets the adapter to offset the 4-bit quantization error of the base; it needs "
                "finetune.mode: qlora with bits: 4 (with mode lora there is no such error: use another init)",
            )
        )
    if init in BASE_MOVING_INITS and distributed.zero_stage == 3:
        problems.append(
            (
                "finetune.init",
                f"{init} decomposes each whole weight matrix, which ZeRO-3 partitions as it loads; "
                "use distributed.zero_stage: 2 or another init",
            )
        )
    if not finetune.starts_at_base and stage.reference_source(finetune) is Reference.ADAPTER_DISABLED:
        problems.append(
            (
                "finetune.init",
                f"{init} starts the adapter away from zero, so the model with the adapter switched off (stage "
                f"{stage.name!r}'s reference) is not the model training starts from; use init: default or gaussian",
            )
        )
    return problems


def training_for_stage(
    stage: StageSection, training: TrainingConfig, model: ModelConfig, distributed: DistributedConfig
) -> Problems:
    """Training options against the stage and the attention kernel."""
    traits, name, t, problems = stage.traits, stage.name, training, []
    if t.neftune_alpha is not None and traits.samples:
        problems.append(
            (
                "training.neftune_alpha",
                f"stage {name!r} samples replies from the model it trains; noisy "
                "embeddings would change the samples and their log-probs; remove it",
            )
        )
    if t.resume_from_checkpoint is not None and not traits.resumes:
        problems.append(
            (
                "training.resume_from_checkpoint",
                f"stage {name!r} cannot continue from a checkpoint yet (its checkpoints hold no optimizer state); remove it",
            )
        )
    if t.shift_attn and not traits.fast_path:
        problems.append(
            ("training.shift_attn", f"S2-Attn is for the next-token stages pt and sft (got stage {name!r}); remove it")
        )
    for key, trait in (
        ("chunked_loss", "fast_path"),
        ("fused_ops", "fuses_ops"),
        ("max_tokens_per_forward", "forward_passes"),
    ):
        if _set(t, key) and not getattr(traits, trait):  # defaults stay quiet; a key someone set must not be ignored
            problems.append(
                (f"training.{key}", f"applies to stages {stages_with(trait)} and has no effect on stage {name!r}; remove it")
            )
    if isinstance(t.max_tokens_per_forward, int) and traits.forward_passes:  # known before anything launches
        if blocker := stage.passes_blocker():
            problems.append(("training.max_tokens_per_forward", f"{blocker}; remove it or set it to null"))
        elif traits.fast_path and not t.chunked_loss:
            problems.append(
                (
                    "training.max_tokens_per_forward",
                    "the passes are part of the chunked loss, which training.chunked_loss: false turns off; remove one of them",
                )
            )
        elif distributed.launches or distributed.uses_deepspeed:
            problems.append(
                (
                    "training.max_tokens_per_forward",
                    "several processes or DeepSpeed count each backward as a micro-batch; remove it or set it to null",
                )
            )
    if t.release_memory and t.allocator == "tcmalloc":
        problems.append(
            (
                "training.release_memory",
                "sets glibc's malloc thresholds, which do nothing with training.allocator: tcmalloc; remove one of them",
            )
        )
    if t.torch_compile and not traits.torch_compile:
        problems.append(
            (
                "training.torch_compile",
                f"stage {name!r} trains with llmft's own loop, which does not compile the model; remove it",
            )
        )
    if t.shift_attn and model.attn_implementation == "flash_attention_2":
        problems.append(
            (
                "training.shift_attn",
                "works with model.attn_implementation sdpa or eager (it needs a block mask per group), not flash_attention_2",
            )
        )
    return problems


def distributed_for_stage(stage: StageSection, finetune: Any, training: TrainingConfig, d: DistributedConfig) -> Problems:
    """What `distributed:` cannot combine with (the JSON-dependent checks run when it is read)."""
    problems = []
    if not stage.traits.multi_process and (d.launches or d.uses_deepspeed):
        key = "distributed.num_processes" if d.launches else "distributed.zero_stage"
        problems.append(
            (
                key,
                f"stage {stage.name} trains in one process without DeepSpeed (llmft's own loop keeps "
                "policy, value head and reference together); set distributed.num_processes: 1 and zero_stage: 0",
            )
        )
    if getattr(finetune, "bits", None) == 8 and d.zero_stage == 3:
        problems.append(
            (
                "finetune.bits",
                "8-bit bitsandbytes weights cannot be sharded by ZeRO-3; use bits: 4 "
                "(its storage dtype is set for ZeRO-3) or distributed.zero_stage: 2",
            )
        )
    if d.offload != "none" and training.optimizer in BNB_OPTIMIZERS:
        problems.append(
            (
                "training.optimizer",
                f"{training.optimizer} (bitsandbytes) cannot step the CPU copies "
                "that distributed.offload keeps; use adamw_torch_fused (fused CPU kernel) or adamw_torch",
            )
        )
    return problems


def outputs_and_eval(
    stage: StageSection, finetune: Any, training: TrainingConfig, data: DataConfig, output: OutputConfig
) -> Problems:
    problems = []
    if output.eval is not None:
        if not data.has_eval:
            problems.append(("output.eval", "measures the eval data, and there is none; add data.eval or data.eval_split"))
        if output.eval.compare_base and stage.traits.task == "reward":
            problems.append(
                (
                    "output.eval.compare_base",
                    f"the starting model of stage {stage.name!r} has no reward head to measure; remove it",
                )
            )
        problems += _win_rate_problems(finetune, output)
    if output.merge_adapter and not isinstance(finetune, LoraFinetune):
        problems.append(
            ("output.merge_adapter", f"only LoRA runs have an adapter to merge; remove it for finetune.mode: {finetune.mode}")
        )
    if training.eval_on_start and not data.has_eval:
        problems.append(("training.eval_on_start", "there is no eval data; add data.eval or data.eval_split"))
    if _set(training, "eval_strategy") and training.eval_strategy != "no" and not data.has_eval:
        problems.append(
            (
                "training.eval_strategy",
                f"is {training.eval_strategy!r} but there is no eval data; add data.eval or data.eval_split, or set 'no'",
            )
        )
    return problems


def _win_rate_problems(finetune: Any, output: OutputConfig) -> Problems:
    """`output.eval` with win_rate: a judge, and a base to play against (the adapter disabled)."""
    if output.eval is None or "win_rate" not in (output.eval.metrics or []):
        return []
    problems = []
    if output.eval.reward_model is None:
        problems.append(("output.eval.metrics", "win_rate needs output.eval.reward_model (an rm run) to judge the answers"))
    if not isinstance(finetune, LoraFinetune):
        problems.append(
            (
                "output.eval.metrics",
                "win_rate plays the model against its base with the adapter disabled; a full "
                "run has none (use `llmft eval RUN --reference BASE --reward-model RM`)",
            )
        )
    elif output.eval.compare_base is not False:
        problems.append(
            ("output.eval.compare_base", "win_rate already plays the model against its base; set compare_base: false")
        )
    return problems
