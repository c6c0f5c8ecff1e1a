"""Fold a LoRA adapter into its base model and write a standalone model directory.

Two checks run before anything is written (`--no-verify` skips both):

1. The base is the one the adapter was trained on: its weights are compared with the samples the
   run recorded next to the adapter (`llmft.modeling.fingerprint`). Only this catches a wrong base:
   the logits check below compares the merge with base + adapter on the same (wrong) base.
2. The merge: on a probe conversation the merged model must compute what base + adapter computed,
   every logit within `tolerance()` and the same top-1 token at every position (unless base +
   adapter scored the two tokens within 2 x tolerance: a near-tie may go either way).

Why float64. In fp32 the two sides round differently (the merge rounds every W + s B A once, the
forward passes accumulate in other orders), and on a real model that alone moves the logits by ~20
fp32 roundings of the largest logit: SmolLM2-135M 9.7e-5 at a logit scale of 37.8, so the fixed
1e-4 this replaced failed correct merges (1.08e-4, 1.17e-4). A broken merge can be as small as one
layer's LoRA delta left out: 1.9e-3 after 10 steps of training, only 20x above that noise. So the
check loads the base in float64 and merges there. What rounding is left comes from the model
code's own fp32 steps (Llama's RMSNorm computes in fp32): where the two sides' float64 values
straddle an fp32 rounding boundary they round apart, and one such flip in the last norm moves the
logits by about one rounding of the largest logit. Measured: 0 (tiny test model, and SmolLM2 sft),
1.3e-7 (SmolLM2 pt), 7.2e-6 (SmolLM2 sft on the same base saved in bf16: 1.6 roundings).

    tolerance = ROUNDINGS (32) x eps32 (1.19e-7) x max(largest |logit| of base + adapter, 1)

SmolLM2: 1.44e-4, 20x above the largest float64 difference seen and 13x below the smallest broken
merge; above even a plain fp32 comparison's ~22 roundings, so the model's fp32 steps cannot reach
it however many of them flip. The floor of 1 is for a reward model's single score, whose rounding
is relative to the hidden states behind it. No depth term: the fp32 noise was ~20 roundings on 2
layers and on 30 alike. The merged weights are rounded once to fp32 and saved as fp32. Cost: the
model is held in float64 while checked, 8 bytes per parameter (fp32 before: 4; `--no-verify`
merges in fp32).

Measured (`benchmarks/merge_check.py`; SmolLM2-135M-Instruct GGUF Q4_1, 30 layers, LoRA on every
linear layer; 57-token probe; "one B zeroed": each layer's LoRA B in turn, the smallest effect):

| adapter | logit scale | fp32 diff | float64 diff | top-1 | tolerance | adapter x2 | one B zeroed |
| --- | --- | --- | --- | --- | --- | --- | --- |
| pt, 10 steps, rank 8 | 37.8 | 9.7e-5 | 1.3e-7 | 57/57 | 1.44e-4 | 1.21 (top-1 56/57) | 1.9e-3 (all 210 refused) |
| sft (quickstart), 10 steps, rank 16 | 38.2 | 8.0e-5 | 0 | 57/57 | 1.46e-4 | 9.49 (top-1 41/57) | 8.9e-2 (21 tried, refused) |
| the same sft on the base saved in bf16 | 38.2 | | 7.2e-6 | 57/57 | 1.46e-4 | | |
| tiny test model, 3 steps | 4.8 | 7.5e-6 | 0 | 112/112 | 1.8e-5 | | |

Top-1 alone would miss most broken merges: leaving one layer out changed the top token at one of
the 57 positions in 3 of the 210 cases, and nowhere in the others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmft.config.finetune import BASE_MOVING_INITS
from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.rundir import usual_file_modes

log = logging.getLogger("llmft")
EPS32 = torch.finfo(torch.float32).eps
#: The tolerance, in fp32 roundings of the largest logit (see the module docstring).
ROUNDINGS = 32.0
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
    rule: str = f"{ROUNDINGS:g} x eps32"  # how the tolerance was set, x the logit scale

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_wrong == 0

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.2e}, tolerance {self.tolerance:.2e} "
            f"({self.rule} x logit scale {self.scale:.3g}); "
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


def compare_logits(expected: torch.Tensor, merged: torch.Tensor, relative: float | None = None, rule: str = "") -> LogitsCheck:
    """`merged` against `expected`, within `tolerance()` (or `relative` x the logit scale, set as `rule`)."""
    expected, merged = expected.flatten(0, -2), merged.flatten(0, -2)  # (positions, vocab)
    scale = max(expected.abs().max().item(), 1.0)
    tol = tolerance(scale) if relative is None else relative * scale
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
        **({"rule": rule} if rule else {}),
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
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    seq_cls = adapter_config.get("task_type") == "SEQ_CLS"
    dtype = CHECK_DTYPE if verify else torch.float32
    # an adapter still in peft's pissa/olora form (a checkpoint of such a run: `llmft.modeling.moved_base`)
    # re-runs its decomposition on the base as it loads, which peft does in fp32/bf16/fp16 only
    decomposes = str(adapter_config.get("init_lora_weights")).startswith(BASE_MOVING_INITS)
    model = load_model(  # a reward model's trained score head comes with its adapter, next
        base,
        torch.float32 if decomposes else dtype,
        vocab_size=len(tokenizer),
        task="reward" if seq_cls else "causal_lm",
        head_from_adapter=seq_cls,
    )
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
    usual_file_modes(out_dir)  # safetensors writes owner-only files
    tokenizer.save_pretrained(out_dir)
    log.info("merged %s into %s -> %s (%s)", adapter_dir, base.describe(), out_dir, check.describe() if check else "not verified")
    return MergeResult(out_dir, check)
