"""Answers generated for held-out prompts, batched (left-padded, KV cache), each row stopping at the
chat template's end-of-turn token: greedy, or sampled with a seed. `generate_one` answers a single
prompt the same way, with top-p, stop strings and each new token handed to a callback as it comes
(`llmft chat`, `llmft serve`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from llmft.data.render import parse_tools, render
from llmft.data.tokenize import end_of_turn_ids
from llmft.fastpath import sampling as fastpath_sampling
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
    """(answer text, its token ids through the end-of-turn token that stopped it, if any) per prompt.
    An adapter's plain LoRA layers answer as one product with merged copies of their weights
    (`llmft.fastpath.sampling.merged_lora`: the same answers, the base weights untouched)."""
    from transformers import set_seed

    set_seed(seed)
    stop = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sampling = sampling_options(temperature)
    answers: list[tuple[str, list[int]]] = [("", [])] * len(prompts)
    context: AbstractContextManager = model.disable_adapter() if adapter_off else fastpath_sampling.merged_lora(model)
    with context, torch.no_grad():
        for batch in progress(batches, len(batches), desc):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device)
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad, **sampling
            )
            for row, i in enumerate(batch):
                ids = until_stop(out[row, width:].tolist(), set(stop))
                answers[i] = (tokenizer.decode(ids, skip_special_tokens=True).strip(), ids)
    return answers


def sampling_options(temperature: float, top_p: float = 1.0) -> dict[str, Any]:
    """`model.generate` keywords: greedy at temperature 0, else sampling at `temperature` with nucleus
    `top_p` (top-k off, so the model's generation_config cannot narrow it behind the caller's back)."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}


def until_stop(ids: list[int], stop: set[int]) -> list[int]:
    """The generated ids through the first stop token (what follows it is padding)."""
    for n, token in enumerate(ids):
        if token in stop:
            return ids[: n + 1]
    return ids


@dataclass(frozen=True)
class Generated:
    text: str  # decoded without special tokens, cut before a stop string; not stripped
    ids: list[int]  # the new tokens, through the end-of-turn token that stopped them, if any
    prompt_tokens: int
    finish_reason: str  # "stop": an end-of-turn token or a stop string; "length": max_new_tokens reached


def generate_one(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    on_token: Callable[[list[int]], bool | None] | None = None,
) -> Generated:
    """One answer to one prompt (token ids), stopping at the template's end-of-turn token or at the
    first of the `stop` strings (cut from the text). `on_token(ids so far)` is called after each new
    token; returning True stops generation there (a client gone away). `seed` seeds sampling."""
    from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

    if seed is not None:
        set_seed(seed)
    stop_ids = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    width = len(prompt)

    class Watch(StoppingCriteria):  # one sequence: stop strings and the caller's say, checked after each token
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[0, width:].tolist()
            done = bool(stop) and cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)[1]
            if on_token is not None and on_token(new):
                done = True
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList([Watch()]),
            **sampling_options(temperature, top_p),
        )
    new = until_stop(out[0, width:].tolist(), set(stop_ids))
    text, cut = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
    finish = "stop" if cut or (new and new[-1] in stop_ids) else "length"
    return Generated(text, new, width, finish)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest of the `stop` strings, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)
