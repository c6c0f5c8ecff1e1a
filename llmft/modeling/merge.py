"""Fold a LoRA adapter into its base model and write a standalone model directory.

Two checks run before anything is written (`--no-verify` skips both):

1. The base is the one the adapter was trained on: its weights are compared with the samples the
   run recorded next to the adapter (`llmft.modeling.fingerprint`). This is what catches a wrong
   base; the logits check below cannot, as it compares the merge with base + adapter on the same
   (wrong) base.
2. The merge arithmetic: the merged model must compute what base + adapter computed, on a probe
   conversation, in fp32: every logit within `tolerance()` of base + adapter's, and the same top-1
   token at every position (a near-tie, two logits within 2 x tolerance, may go either way).

The tolerance is the fp32 rounding the two computations can reach, not a fixed number. Folding
`B @ A` into `W` rounds every merged weight once, and the forward passes round differently around
it; the difference grows with the size of the logits and with depth. So
`tolerance = PER_LAYER x layers x eps32 x scale`, with `scale` the largest |logit| of base + adapter
on the probe (at least 1, for a reward model's single score) and eps32 = 1.19e-7.

Measured (`benchmarks/merge_check.py`, SmolLM2-135M-Instruct, GGUF Q4_1 dequantized, 30 layers,
LoRA rank 8/16 on every linear layer, 57-token probe):

| adapter | max |diff| | scale | diff / (eps32 x scale) | tolerance | top-1 | adapter x2 | one B zeroed (smallest) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| pt, 10 steps, rank 8 | 9.7e-5 | 37.8 | 22 | TBD | 57/57 | TBD | TBD |

The old fixed 1e-4 sat at the rounding level of this model (runs failed at 1.08e-4 and 1.17e-4).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmft.config.model import ModelConfig
from llmft.errors import UserError

log = logging.getLogger("llmft")
EPS32 = torch.finfo(torch.float32).eps
#: The tolerance, in fp32 roundings of the largest logit (see the module docstring).
ROUNDINGS = 16.0
#: The check's arithmetic: float64, so that only the model code's own fp32 steps round.
CHECK_DTYPE = torch.float64
PROBE = [
    {"role": "user", "content": "Explain in one sentence why the sky is blue."},
    {"role": "assistant", "content": "Sunlight scatters off air molecules, and blue light scatters most."},
]


@dataclass(frozen=True)
class LogitsCheck:
    """The merged model's logits against base + adapter's on the probe."""

    max_abs_diff: float
    tolerance: float
    scale: float  # the largest |logit| of base + adapter (at least 1)
    positions: int  # probe positions compared
    top1_same: int  # positions where both pick the same token
    top1_wrong: int  # positions where they differ and it is not a near-tie

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_wrong == 0

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.2e}, tolerance {self.tolerance:.2e} "
            f"({ROUNDINGS:g} x eps32 x logit scale {self.scale:.3g}); "
            f"same top-1 token at {self.top1_same}/{self.positions} probe positions"
        )


@dataclass
class MergeResult:
    out_dir: Path
    check: LogitsCheck | None  # None when verification was skipped

    @property
    def max_abs_diff(self) -> float | None:
        return self.check.max_abs_diff if self.check else None


def probe_ids(tokenizer: Any) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(PROBE, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(" ".join(m["content"] for m in PROBE))["input_ids"]
    return torch.tensor([ids])


def tolerance(scale: float) -> float:
    """How far apart base + adapter's and the merged model's logits may be (see the module docstring)."""
    return ROUNDINGS * EPS32 * max(scale, 1.0)


def compare_logits(expected: torch.Tensor, merged: torch.Tensor) -> LogitsCheck:
    expected, merged = expected.flatten(0, -2), merged.flatten(0, -2)  # (positions, vocab)
    scale = max(expected.abs().max().item(), 1.0)
    tol = tolerance(scale)
    ours, theirs = merged.argmax(-1), expected.argmax(-1)
    # a different top-1 is wrong unless base + adapter scored the two tokens within 2 x tolerance
    gap = expected.max(-1).values - expected.gather(-1, ours[:, None])[:, 0]
    return LogitsCheck(
        max_abs_diff=(merged - expected).abs().max().item(),
        tolerance=tol,
        scale=scale,
        positions=expected.shape[0],
        top1_same=int((ours == theirs).sum()),
        top1_wrong=int(((ours != theirs) & (gap > 2 * tol)).sum()),
    )


def merge_adapter(base: ModelConfig, adapter_dir: str | Path, out_dir: str | Path, verify: bool = True) -> MergeResult:
    from llmft.modeling.adapters import load_adapter
    from llmft.modeling.load import load_model, load_tokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"--adapter: no adapter_config.json in {adapter_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out: {out_dir} is not empty; llmft never writes over existing files")

    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(base.model_copy(update={"tokenizer": str(adapter_dir)}) if has_tokenizer else base)
    # a reward model's adapter (rm stage) sits on a sequence-classification head, saved with it
    seq_cls = json.loads((adapter_dir / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
    dtype = CHECK_DTYPE if verify else torch.float32
    model = load_model(base, dtype, vocab_size=len(tokenizer), task="reward" if seq_cls else "causal_lm")
    if seq_cls:
        model.config.pad_token_id = tokenizer.pad_token_id
    fix = "Give the base it was trained on (--base, or model.path in the run's recipe); --no-verify merges into this one anyway."
    model = load_adapter(model, adapter_dir, base.describe(), fix=fix, check=verify).to(dtype).eval()
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        expected = model(ids).logits if verify else None
        merged = model.merge_and_unload().eval()
        check = compare_logits(expected, merged(ids).logits) if verify else None
    merged.to(torch.float32)  # the merge done in float64, rounded once per weight
    if check is not None and not check.passed:
        gguf = f" --gguf-file {base.gguf_file}" if base.gguf_file else ""
        raise UserError(
            f"merge check failed: the merged model does not compute what base + adapter computes ({check.describe()}). "
            f"{out_dir} was not written; the adapter in {adapter_dir} is unchanged. To write the merged model "
            f"without this check: llmft merge --adapter {adapter_dir} --base {base.path}{gguf} --out {out_dir} --no-verify"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("merged %s into %s -> %s (%s)", adapter_dir, base.describe(), out_dir, check.describe() if check else "not verified")
    return MergeResult(out_dir, check)
