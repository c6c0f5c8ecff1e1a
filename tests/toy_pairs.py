"""A toy preference task for rm and dpo: asked for the capital of France, the chosen reply says
Paris, the rejected one another city. Records are built in code; the held-out pairs use askings,
lead-ins and wrong cities the training pairs never show."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from conftest import write_jsonl

ASKS = [
    "What is the capital of France?",
    "Which city is the capital of France?",
    "Name the capital of France.",
    "France: capital?",
]
LEADS = ["", "The capital is ", "It is ", "Answer: "]
WRONG = ["London", "Berlin", "Rome", "Madrid", "Vienna", "Lisbon"]
HELD_OUT_ASK = "Tell me the capital of France."
HELD_OUT_LEAD = "That is "
HELD_OUT_WRONG = ["Oslo", "Prague", "Athens", "Dublin"]


def pair(ask: str, lead: str, wrong: str) -> dict:
    return {"prompt": ask, "chosen": f"{lead}Paris.", "rejected": f"{lead}{wrong}."}


def train_rows(count: int = 48) -> list[dict]:
    """`count` of the 96 training pairs (every asking x lead-in x wrong city), a seeded sample."""
    rows = [pair(a, lead, w) for w, lead, a in itertools.product(WRONG, LEADS, ASKS)]
    return random.Random(0).sample(rows, count)


def held_out_rows() -> list[dict]:
    """Pairs with an unseen asking or lead-in, and cities never rejected in training."""
    rows = [pair(HELD_OUT_ASK, lead, w) for lead, w in zip(LEADS, HELD_OUT_WRONG)]
    rows += [pair(a, HELD_OUT_LEAD, w) for a, w in zip(ASKS, HELD_OUT_WRONG[::-1])]
    return rows


def write_toy(directory: Path, count: int = 48) -> tuple[Path, Path]:
    return (
        write_jsonl(directory / "pairs_train.jsonl", train_rows(count)),
        write_jsonl(directory / "pairs_eval.jsonl", held_out_rows()),
    )
