"""A recipe -> the estimator's inputs: the model's dimensions (from its config, no weights), the
knobs, and the batch/step schedule (from the data when it is cheap to count)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmft.config.recipe import Recipe
from llmft.plan.dims import ModelDims, dims_from_config
from llmft.plan.estimate import GIB, Knobs, Plan, compare_zero, estimate, pass_size_needed
from llmft.plan.schedule import Schedule

log = logging.getLogger("llmft")

#: Data files up to this size are tokenized to count them when the cache does not have them yet.
COUNT_LIMIT_BYTES = 32 << 20
#: Model types whose norm and MLP classes llmft.modeling.fused_ops replaces.
FUSED_OPS_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class DataCount:
    examples: int | None = None
    tokens_per_example: float | None = None
    supervised_per_example: float | None = None
    longest_micro_batch: int | None = None  # tokens of the longest micro-batch (padded as it will be)
    how: str = ""


@dataclass
class RecipePlan:
    plan: Plan
    schedule: Schedule
    dims: ModelDims
    data: DataCount
    budget_bytes: int
    budget_source: str
    alternatives: list[Plan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: str | None = None  # pt/sft: the fast path `llmft train` takes (llmft.builders.fast_path), and why

    @property
    def fits(self) -> bool:
        return self.plan.fits(self.budget_bytes)

    def to_dict(self) -> dict:
        s = self.schedule
        d = self.dims
        return {
            "model": {"type": d.model_type, "params": d.params, "hidden": d.hidden, "layers": d.layers, "heads": d.heads,
                      "kv_heads": d.kv_heads, "head_dim": d.head_dim, "intermediate": d.intermediate, "vocab": d.vocab,
                      "tied_embeddings": d.tied_embeddings, "counted_exactly": d.exact},
            **self.plan.to_dict(),
            "budget_bytes": self.budget_bytes,
            "budget_source": self.budget_source,
            "fits": self.fits,
            "schedule": {"global_batch": s.global_batch, "micro_batch_size": s.micro_batch_size,
                         "gradient_accumulation_steps": s.gradient_accumulation_steps, "num_processes": s.num_processes,
                         "examples": s.examples, "steps_per_epoch": s.steps_per_epoch, "total_steps": s.total_steps,
                         "tokens_per_step": s.tokens_per_step, "tokens_per_step_counted": s.tokens_per_example is not None,
                         "data": self.data.how},
            "zero_stages": [{"zero_stage": p.knobs.zero_stage, "offload": p.knobs.offload, "per_device_bytes": p.per_device_bytes,
                             "memory": p.to_dict()["memory"], "cpu_offload_bytes": p.cpu_offload,
                             "fits": p.fits(self.budget_bytes)} for p in self.alternatives],
            "path": self.path,
            "notes": list(self.notes),
        }


def _precision(recipe: Recipe, device: str, notes: list[str]) -> str:
    wanted = recipe.training.precision
    if device == "cpu":
        from llmft.modeling.precision import resolve_precision

        return resolve_precision(recipe.training)[0]
    if wanted == "auto":
        notes.append("training.precision: auto is planned as bf16 (what a recent GPU gets)")
        return "bf16"
    return wanted


def knobs_for(recipe: Recipe, dims: ModelDims, device: str, num_processes: int | None = None, seq_len: int | None = None,
              budget_bytes: int | None = None) -> tuple[Knobs, list[str]]:
    """The estimator's knobs for `recipe` on `device` (cuda | cpu). `budget_bytes`: the memory that
    `training.max_tokens_per_forward: auto` plans against (None: auto means whole micro-batches)."""
    from llmft.builders.fast_path import resolve_forward_tokens
    from llmft.modeling.precision import weight_dtype

    notes: list[str] = []
    ft, t, dist, stage = recipe.finetune, recipe.training, recipe.distributed, recipe.stage
    traits = stage.traits
    precision = _precision(recipe, device, notes)
    weight_bytes = weight_dtype(recipe.model, ft, precision).itemsize
    lora = ft.mode != "full"
    chunked = t.chunked_loss and traits.fast_path and dist.zero_stage != 3
    if chunked:
        from llmft.builders.fast_path import PLAIN_HEAD_MODEL_TYPES

        chunked = dims.model_type in PLAIN_HEAD_MODEL_TYPES
    if traits.samples:
        notes.append(f"stage {stage.name}: generation (KV cache) and the reward model are not counted")
    if dist.deepspeed_config:
        notes.append("distributed.deepspeed_config: your JSON decides the stage and offload; planned as zero_stage "
                     f"{dist.zero_stage}, offload {dist.offload}")
    knobs = Knobs(
        mode=ft.mode,
        lora_rank=ft.rank if lora else 8,
        lora_targets=(ft.target_modules if isinstance(ft.target_modules, str) else tuple(ft.target_modules)) if lora else "all-linear",
        lora_dropout=ft.dropout if lora else 0.0,
        modules_to_save=tuple(ft.modules_to_save) if lora else (),
        qlora_bits=getattr(ft, "bits", 4),
        double_quant=getattr(ft, "double_quant", True),
        weight_bytes=weight_bytes,
        precision=precision,
        optimizer=t.optimizer,
        micro_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        seq_len=seq_len or recipe.data.max_length,
        sequences_per_example=traits.sequences_per_example,
        num_processes=num_processes or dist.num_processes,
        zero_stage=dist.zero_stage,
        offload=dist.offload,
        gradient_checkpointing=t.gradient_checkpointing,
        chunked_loss=chunked,
        attn_implementation=recipe.model.attn_implementation,
        lora_input_cast=not traits.fast_path,  # the pt/sft fast path keeps adapter inputs in bf16
        forward_tokens=None,  # decided below
        fused_ops=t.fused_ops and traits.fast_path and dims.model_type in FUSED_OPS_MODEL_TYPES,
        reference_model=stage.reference_source(ft).copies_weights,
        task=traits.task,
        device=device,
    )
    forward_tokens = resolve_forward_tokens(recipe, chunked, [])
    if forward_tokens == "auto":  # decided as the run decides: for full-length micro-batches
        forward_tokens = None if budget_bytes is None else pass_size_needed(
            dims, replace(knobs, seq_len=recipe.data.max_length), budget_bytes)
    knobs = replace(knobs, forward_tokens=forward_tokens)
    return knobs, notes


def planned_pass_size(recipe: Recipe, config: Any, device: str, reasons: list[str], budget_bytes: int | None = None) -> int | None:
    """`training.max_tokens_per_forward: auto` at run time: None (whole micro-batches of up to
    micro_batch_size x data.max_length tokens) when the memory plan fits them in the RAM available now
    (or the GPU's memory, or `budget_bytes`); else the largest pass size that fits, with the reason
    added to `reasons`."""
    try:
        dims = read_dims(recipe, config)
    except Exception as exc:  # noqa: BLE001 - an exotic model: run whole, and say so
        reasons.append(f"micro-batches run whole: memory not planned ({exc})")
        return None
    budget, source = (budget_bytes, "the planned device") if budget_bytes is not None else available_memory()
    knobs, _ = knobs_for(recipe, dims, device, budget_bytes=budget)
    if knobs.forward_tokens is not None:
        whole = estimate(dims, replace(knobs, forward_tokens=None)).per_device_bytes
        reasons.append(f"passes: whole micro-batches of {knobs.tokens:,} tokens would need {whole / GIB:.1f} GiB, "
                       f"{source} has {budget / GIB:.1f} GiB")
    return knobs.forward_tokens


def read_dims(recipe: Recipe, config: Any) -> ModelDims:
    return dims_from_config(config, task=recipe.stage.traits.task, trust_remote_code=recipe.model.trust_remote_code)


def fast_path_line(recipe: Recipe, config: Any, device: str, budget_bytes: int | None = None) -> str | None:
    """What the run log's `path:` line will say (pt/sft), decided on a meta-device build of the model
    for `device` with `budget_bytes` of memory (default: this machine's). An explicit fast-path key the
    model cannot honour raises the same UserError as training would."""
    if not recipe.stage.traits.fast_path:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.builders.fast_path import choose

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - an exotic model: the run log will say it
        log.debug("fast path not planned: %s", exc)
        return None
    return choose(recipe, model, device, budget_bytes).describe()


def _data_bytes(recipe: Recipe) -> int:
    total = 0
    for spec in recipe.data.train:
        path = Path(spec.path).expanduser()
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        total += sum(f.stat().st_size for f in files)
    return total


def count_training_data(recipe: Recipe, force: bool = False) -> DataCount:
    """Training examples and token counts: from the tokenized-data cache, or by tokenizing data that
    is small (or when `force`); otherwise unknown, with the reason."""
    from llmft.errors import UserError

    stage = recipe.stage.name
    size = _data_bytes(recipe)
    try:
        if recipe.stage.traits.examples == "prompt":  # count the records, no tokenizing
            from llmft.data.dataset import load_items

            items = load_items(stage, recipe.data, recipe.training.seed)
            return DataCount(examples=len(items.train), how=f"{len(items.train)} prompts")
        from llmft.data import cache
        from llmft.run import prepare_tokenizer

        tokenizer = prepare_tokenizer(recipe)
        key = cache.fingerprint(stage, recipe.data, tokenizer, recipe.training.seed)
        cached = recipe.data.cache and cache.load(cache.cache_root(recipe.data), key) is not None
        if not (cached or force or size <= COUNT_LIMIT_BYTES):
            return DataCount(how=f"not counted: {size / 2**20:,.0f} MiB of data is not in the cache yet "
                                 "(run `llmft preprocess` first, or pass --count-data)")
        from llmft.data.dataset import prepare_data

        prepared = prepare_data(stage, recipe.data, tokenizer, recipe.training.seed)
    except UserError as exc:
        return DataCount(how=f"not counted: {exc}")
    return _count_prepared(recipe, prepared)


def _lengths(example: Any) -> tuple[int, int]:
    """(tokens, supervised tokens) the model sees for one prepared example (pairs: both replies)."""
    from llmft.data.tokenize import IGNORE

    parts = [example.chosen, example.rejected] if hasattr(example, "chosen") else [getattr(example, "example", example)]
    return sum(len(p.input_ids) for p in parts), sum(sum(1 for l in p.labels if l != IGNORE) for p in parts)


def _count_prepared(recipe: Recipe, prepared: Any) -> DataCount:
    data, micro = recipe.data, recipe.training.micro_batch_size
    examples = list(prepared.train)
    origin = "cache" if prepared.from_cache else "tokenized now"
    if data.packing:  # only the fast-path stages pack (validated)
        from llmft.data.packing import pack

        examples = pack(examples, data.max_length)
        origin += f", packed into {len(examples)} rows"
    lengths = [_lengths(e) for e in examples]
    tokens = sorted((n for n, _ in lengths), reverse=True)
    per_sequence = recipe.stage.traits.sequences_per_example
    if data.padding_free and recipe.stage.traits.fast_path and not data.packing:
        longest = sum(tokens[:micro])  # one row of the micro-batch's examples
    else:
        widest = tokens[0] // per_sequence
        longest = micro * per_sequence * (-(-widest // 8) * 8)  # padded to the longest, a multiple of 8
    n = len(examples)
    return DataCount(
        examples=n,
        tokens_per_example=sum(tokens) / n,
        supervised_per_example=sum(s for _, s in lengths) / n,
        longest_micro_batch=longest,
        how=f"{n} training {'rows' if data.packing else 'examples'} ({origin})",
    )


def machine_memory() -> tuple[int, str]:
    """Memory of this machine's first GPU, or (no GPU) its RAM."""
    import os

    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"GPU 0 ({props.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM (no GPU)"


def available_memory() -> tuple[int, str]:
    """What a run starting now can use: a GPU's whole memory, or (no GPU) the RAM the kernel reports
    available plus what this process already holds (the plan counts that too: framework, weights)."""
    import torch

    if torch.cuda.is_available():
        return machine_memory()
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        free = int(meminfo["MemAvailable"].split()[0]) * 1024 + int(status["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        return machine_memory()
    return min(free, machine_memory()[0]), "this machine's available RAM (no GPU)"


def plan_recipe(
    recipe: Recipe,
    *,
    num_processes: int | None = None,
    budget_bytes: int | None = None,
    device: str | None = None,
    count_data: bool | None = None,
    examples: int | None = None,
) -> RecipePlan:
    """Plan `recipe`: dims from the model's config, knobs from the recipe, counts from the data.

    count_data: None counts when cheap (cached, or small files), True always, False never;
    `examples` gives the training-example count directly (no counting).
    """
    import torch

    from llmft.modeling.load import read_config

    config = read_config(recipe.model)
    dims = read_dims(recipe, config)
    device = device or ("cuda" if torch.cuda.is_available() or budget_bytes is not None or num_processes else "cpu")
    if budget_bytes is None:
        budget_bytes, source = machine_memory()
    else:
        source = "--gpu-memory"
    if examples is not None:
        counted = DataCount(examples=examples, how=f"{examples} examples (given)")
    elif count_data is False:
        counted = DataCount(how="not counted (--no-count-data)")
    else:
        counted = count_training_data(recipe, force=bool(count_data))
    micro = recipe.training.micro_batch_size
    per_sequence = recipe.stage.traits.sequences_per_example
    seq_len = None
    if counted.longest_micro_batch:
        seq_len = max(1, round(counted.longest_micro_batch / (micro * per_sequence)))
    knobs, notes = knobs_for(recipe, dims, device, num_processes, seq_len, budget_bytes)
    if not dims.exact:
        notes.append(f"parameters counted with a Llama-shaped formula ({dims.model_type} could not be built on the meta device)")
    if seq_len is None:
        notes.append(f"activations for full micro-batches of data.max_length ({recipe.data.max_length}) tokens: an upper bound")
    plan = estimate(dims, knobs)
    schedule = Schedule(
        micro_batch_size=micro,
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        num_processes=knobs.num_processes,
        examples=counted.examples,
        tokens_per_example=counted.tokens_per_example,
        supervised_per_example=counted.supervised_per_example,
        max_length=recipe.data.max_length * per_sequence,
        epochs=recipe.training.epochs,
        max_steps=recipe.training.max_steps,
    )
    alternatives = compare_zero(dims, knobs)
    if knobs.num_processes == 1:
        notes.append("one process: ZeRO has nothing to shard across; only its offload changes the GPU's share")
    path = fast_path_line(recipe, config, device, budget_bytes)
    return RecipePlan(plan, schedule, dims, counted, budget_bytes, source, alternatives, notes, path)
