"""The check an export passes before it is kept: the file read back with transformers computes what
the source model computes, and its tokenizer gives the same ids, template and stop token.

Logits, on `PROBES` rendered with the source's chat template, every position compared:

- f32: within `llmft.modeling.merge.tolerance` (32 fp32 roundings of the largest logit), every
  top-1 token the same; the weights are copied exactly, so any difference is a bug. Measured: 0 (tiny test model, SmolLM2-135M).
- f16 / bf16 / q8_0: `RELATIVE[type]` x the logit scale (the largest |logit| of the source), and the
  same top-1 token at `MIN_TOP1` of the positions at least (rounding moves near-ties). Measured max
  |logit diff| / scale and top-1 agreement (`benchmarks/export_check.py`, 2 shared CPU cores), on
  the tiny test model (random weights, scale 4.8, 244 probe positions: the more sensitive) and
  SmolLM2-135M-Instruct (from its Q4_1 GGUF, scale 39.8, 137 positions):

  | type | tiny | SmolLM2 | tolerance | top-1 tiny / SmolLM2 |
  | --- | --- | --- | --- | --- |
  | f16 | 2.3e-3 | 1.1e-3 | 5e-3 | 244/244 / 137/137 |
  | bf16 | 2.0e-2 | 6.9e-3 | 4e-2 | 239/244 / 136/137 |
  | q8_0 | 5.7e-2 | 3.3e-2 | 1e-1 | 234/244 / 131/137 |

  A wrong layout is far outside these: llama's q/k rows left unpermuted (f32) moved the logits by
  1.57 (tiny) and 1.12 (SmolLM2) times the logit scale, top-1 the same at 24/244 and 51/137.

Tokenizer: the exported tokenizer renders each probe to the same ids and encodes `TEXTS` (digits,
accents, runs of spaces) to the same ids; its chat template is the source's; its EOS (GGUF) or the
generation config's EOS (hf) includes the template's end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llmft.data.tokenize import turn_end_id
from llmft.modeling.merge import PROBE, LogitsCheck, compare_logits

PROBES = [
    PROBE,
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is 12345 + 678? Réponds en français, s'il te plaît."},
        {"role": "assistant", "content": "13023 — treize mille vingt-trois."},
        {"role": "user", "content": "Thanks!  And   now?"},
    ],
]
TEXTS = ["Numbers: 0 7 42 12345 3.14159", "naïve café — ünïcödé 東京", "  leading and  double  spaces\n\nnew lines\t tab"]
#: tolerance relative to the logit scale, per exported type (None: the fp32 rounding tolerance)
RELATIVE: dict[str, float | None] = {"f32": None, "f16": 5e-3, "bf16": 4e-2, "q8_0": 1e-1}
#: the fewest positions with the same top-1 token, as a fraction, per type
MIN_TOP1 = {"f32": 1.0, "f16": 0.9, "bf16": 0.9, "q8_0": 0.9}


@dataclass(frozen=True)
class ExportCheck:
    type_name: str
    logits: LogitsCheck
    problems: list[str] = field(default_factory=list)  # what differs besides the logits

    @property
    def top1_ok(self) -> bool:
        return self.logits.top1_same >= MIN_TOP1[self.type_name] * self.logits.positions

    @property
    def passed(self) -> bool:
        return self.logits.passed and self.top1_ok and not self.problems

    def describe(self) -> str:
        text = self.logits.describe() + f" (at least {MIN_TOP1[self.type_name]:.0%} needed)"
        return text + "".join(f"; {p}" for p in self.problems)


def render(tokenizer: Any, conversation: list[dict], **kwargs: Any) -> list[int]:
    return tokenizer.apply_chat_template(conversation, return_dict=True, **kwargs)["input_ids"]


def check_export(
    model: Any, tokenizer: Any, exported: Any, exported_tokenizer: Any, type_name: str, stop_ids: list[int]
) -> ExportCheck:
    """`exported` (read back from the written file) against the source `model`; `stop_ids` are the
    ids the exported model stops at (GGUF: its EOS; hf: its generation config's)."""
    problems = []
    if exported_tokenizer.chat_template != tokenizer.chat_template:
        problems.append("the chat template differs from the source's")
    end = turn_end_id(tokenizer)
    if end not in stop_ids:
        problems.append(
            f"stops at {stop_ids}, not at the template's end-of-turn token {tokenizer.convert_ids_to_tokens(end)!r} ({end})"
        )
    for conversation in PROBES:
        for prompt in (False, True):
            probe = conversation[:-1] if prompt and conversation[-1]["role"] == "assistant" else conversation
            ours, theirs = (
                render(tokenizer, probe, add_generation_prompt=prompt),
                render(exported_tokenizer, probe, add_generation_prompt=prompt),
            )
            if ours != theirs:
                problems.append(f"the tokenizer renders a probe conversation to other ids ({_first_difference(ours, theirs)})")
    for text in TEXTS:
        ours, theirs = tokenizer(text)["input_ids"], exported_tokenizer(text)["input_ids"]
        if ours != theirs:
            problems.append(f"the tokenizer encodes {text!r} to other ids ({_first_difference(ours, theirs)})")
    expected, got = [], []
    with torch.no_grad():
        for conversation in PROBES:
            ids = torch.tensor([render(tokenizer, conversation)])
            expected.append(model(ids).logits[0].float())
            got.append(exported(ids).logits[0].float())
    rule = "" if RELATIVE[type_name] is None else f"{RELATIVE[type_name]:g} for {type_name}"
    logits = compare_logits(torch.cat(expected), torch.cat(got), relative=RELATIVE[type_name], rule=rule)
    return ExportCheck(type_name, logits, problems)


def _first_difference(ours: list[int], theirs: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"{len(ours)} vs {len(theirs)} ids, first differing at position {at}: {ours[at : at + 3]} vs {theirs[at : at + 3]}"
