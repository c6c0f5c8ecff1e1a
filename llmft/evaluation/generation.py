"""Answers generated for held-out prompts, batched (left-padded, KV cache), each row stopping at the
chat template's end-of-turn token: greedy, or sampled with a seed."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from llmft.data.render import parse_tools, render
from llmft.data.tokenize import end_of_turn_ids
from llmft.progress import progress


def prompt_ids(tokenizer: Any, messages: Sequence[dict], tools: str | None = None) -> list[int]:
    """The prompt rendered with the generation prompt, tokenized as training tokenizes."""
    text = render(tokenizer, messages, parse_tools(tools), generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    adapter_off: bool = False,
    desc: str = "generate",
) -> list[str]:
    """One answer per prompt (token ids), decoded without special tokens. `adapter_off`: generate
    with a peft model's adapter disabled (its base model)."""
    return [
        text
        for text, _ in generate_with_ids(
            model, tokenizer, prompts, max_new_tokens, temperature, seed, batch_size, adapter_off, desc
        )
    ]


def generate_with_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    adapter_off: bool = False,
    desc: str = "generate",
) -> list[tuple[str, list[int]]]:
    """(answer text, its token ids through the end-of-turn token that stopped it, if any) per prompt."""
    from transformers import set_seed

    set_seed(seed)
    stop = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    )
    answers: list[tuple[str, list[int]]] = [("", [])] * len(prompts)
    context: AbstractContextManager = model.disable_adapter() if adapter_off else nullcontext()
    with context, torch.no_grad():
        for batch in progress(batches, len(batches), desc):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device)
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad, **sampling
            )
            for row, i in enumerate(batch):
                ids = _until_stop(out[row, width:].tolist(), set(stop))
                answers[i] = (tokenizer.decode(ids, skip_special_tokens=True).strip(), ids)
    return answers


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    """The generated ids through the first stop token (what follows it is padding)."""
    for n, token in enumerate(ids):
        if token in stop:
            return ids[: n + 1]
    return ids
