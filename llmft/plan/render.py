"""`llmft plan` as text: the run's numbers, the per-device memory breakdown, and ZeRO stages side by side."""

from __future__ import annotations

from llmft.plan.estimate import GIB
from llmft.plan.from_recipe import RecipePlan

PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "buffers", "allocator", "framework")
LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "activations": "activations",
    "logits": "logits / loss",
    "buffers": "buffers",
    "allocator": "allocator slack",
    "framework": "framework",
    "overlap": "overlap",
}


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _millions(n: float) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.2f}M"


def _finetune_line(rp: RecipePlan) -> str:
    k, p = rp.plan.knobs, rp.plan
    share = f"{_millions(p.trainable)} trainable of {_millions(p.params)} ({100 * p.trainable / max(p.params, 1):.2f}%)"
    if k.mode in ("full", "freeze"):
        return f"{k.mode}: {share}"
    targets = "all linear layers" if k.lora_targets == "all-linear" else ", ".join(k.lora_targets)
    text = f"{k.mode} rank {k.lora_rank} on {targets}"
    if k.modules_to_save:
        text += f", modules_to_save {', '.join(k.modules_to_save)}"
    if k.mode == "qlora":
        text += f", {k.qlora_bits}-bit base"
    return f"{text}: {share}"


def render(rp: RecipePlan, source: str = "") -> str:
    p, k, s, d = rp.plan, rp.plan.knobs, rp.schedule, rp.dims
    lines = [f"llmft plan{': ' + source if source else ''}", ""]
    lines.append(
        f"model      {d.model_type}: {_millions(d.params)} parameters; hidden {d.hidden}, {d.layers} layers, "
        f"{d.heads} heads ({d.kv_heads} key/value), MLP {d.intermediate}, vocabulary {d.vocab:,}"
        + (", tied embeddings" if d.tied_embeddings else "")
    )
    lines.append(f"finetune   {_finetune_line(rp)}")
    lines.append(
        f"precision  {k.precision} compute, {k.weight_bytes:g}-byte weights, optimizer {k.optimizer}"
        + (", gradient checkpointing" if k.gradient_checkpointing else "")
        + (", fused RMSNorm/SwiGLU" if k.fused_ops else "")
    )
    if rp.path:
        lines.append(f"path       {rp.path}")
    lines.append(
        f"batch      {s.micro_batch_size} micro x {s.gradient_accumulation_steps} accumulation x "
        f"{s.num_processes} process{'es' if s.num_processes > 1 else ''} = {s.global_batch} per step; "
        f"largest micro-batch {p.tokens_per_micro_batch:,} tokens"
        + (f" in passes of <= {k.forward_tokens:,}" if k.forward_tokens and k.forward_tokens < p.tokens_per_micro_batch else "")
    )
    if s.examples is not None:
        steps = f"{s.steps_per_epoch} step{'s' if s.steps_per_epoch != 1 else ''} per epoch, {s.total_steps} in all"
        tokens = (
            f"~{s.tokens_per_step:,.0f} tokens per step"
            if s.tokens_per_example is not None
            else (f"<= {s.tokens_per_step:,.0f} tokens per step" if s.tokens_per_step else "")
        )
        lines.append(f"data       {rp.data.how}: {steps}; {tokens}")
    else:
        bound = f"; <= {s.tokens_per_step:,.0f} tokens per step" if s.tokens_per_step else ""
        lines.append(f"data       {rp.data.how}: steps per epoch unknown{bound}")
    offload = "no offload" if k.offload == "none" else f"offload {k.offload}"
    lines.append(f"device     {k.device}: ZeRO {k.zero_stage}, {offload}; budget {gib(rp.budget_bytes)} GiB ({rp.budget_source})")
    lines.append("")
    lines.append(f"{'per device':<20} {'GiB':>8}   how")
    for part in PARTS:
        lines.append(f"  {LABELS[part]:<18} {gib(getattr(p.memory, part)):>8}   {p.why.get(part, '')}")
    if p.memory.overlap:
        lines.append(f"  {LABELS['overlap']:<18} {'-' + gib(p.memory.overlap):>8}   {p.why.get('overlap', '')}")
    verdict = "fits" if rp.fits else "does NOT fit"
    lines.append(
        f"  {'total':<18} {gib(p.per_device_bytes):>8}   {verdict} in {gib(rp.budget_bytes)} GiB "
        f"({100 * p.per_device_bytes / rp.budget_bytes:.0f}%)"
    )
    if p.cpu_offload:
        lines.append(f"  {'CPU RAM (offload)':<18} {gib(p.cpu_offload):>8}   per process")
    lines.append("")
    lines.append(f"ZeRO stages for this recipe ({s.num_processes} process{'es' if s.num_processes > 1 else ''}), GiB per device:")
    lines.append(
        f"  {'stage':<6} {'offload':<21} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'total':>7} {'CPU RAM':>8}  fits"
    )
    for alt in rp.alternatives:
        a, m = alt.knobs, alt.memory
        mark = " <- recipe" if (a.zero_stage, a.offload) == (k.zero_stage, k.offload) else ""
        lines.append(
            f"  {a.zero_stage:<6} {a.offload:<21} {gib(m.weights):>8} {gib(m.gradients):>7} {gib(m.optimizer):>7} "
            f"{gib(m.activations + m.logits):>7} {gib(alt.per_device_bytes):>7} {gib(alt.cpu_offload):>8}  "
            f"{'yes' if alt.fits(rp.budget_bytes) else 'no'}{mark}"
        )
    if rp.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in rp.notes)
    return "\n".join(lines)


UNITS = {
    "": GIB,
    "b": 1,
    "k": 1 << 10,
    "kb": 10**3,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": GIB,
    "gb": 10**9,
    "gib": GIB,
    "t": 1 << 40,
    "tb": 10**12,
    "tib": 1 << 40,
}


def parse_bytes(text: str, what: str = "size") -> int:
    """'80GiB', '24GB', '81920MiB', '40' (GiB) -> bytes."""
    import re

    from llmft.errors import UserError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS:
        raise UserError(f"{what}: cannot read {text!r} as a size; write e.g. 80GiB, 24GB or 81920MiB")
    return int(float(match.group(1)) * UNITS[unit])
