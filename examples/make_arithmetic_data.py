"""Write examples/data/arithmetic_train.jsonl and arithmetic_heldout.jsonl: small arithmetic word
problems as `{"question", "answer"}` records, for GRPO (and PPO) with a verifiable reward.

Sums and differences of numbers from 1 to 9: a 135M model knows them, but answers at length and
often runs out of room before the number (47.5% right in 32 tokens, greedy); the held-out problems use
story templates the training set never shows, so a gain on them is the skill (and the answer
format) learned, not answers memorised. Run: python examples/make_arithmetic_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Reply with the number only."

#: (story, operation): {a} and {b} are filled in; the answer is op(a, b).
TRAIN_STORIES = [
    ("Tom has {a} apples and buys {b} more. How many apples does he have now?", "+"),
    ("A shelf holds {a} books. {b} books are added. How many books are on the shelf?", "+"),
    ("Mia had {a} stickers and gave away {b}. How many stickers does she have left?", "-"),
    ("A bus carries {a} people. At the stop, {b} get off. How many people are still on the bus?", "-"),
    ("Sam reads {a} pages on Monday and {b} pages on Tuesday. How many pages does he read?", "+"),
    ("A jar holds {a} sweets. Lily eats {b} of them. How many sweets are left?", "-"),
]
HELD_OUT_STORIES = [
    ("A baker makes {a} rolls in the morning and {b} in the afternoon. How many rolls does she make?", "+"),
    ("A tank holds {a} litres and {b} litres are drained. How many litres remain?", "-"),
    ("A garden has {a} red flowers and {b} yellow flowers. How many flowers are there?", "+"),
]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}


def problem(story: str, op: str, rng: random.Random, low: int, high: int) -> dict:
    a, b = rng.randint(low, high), rng.randint(low, high)
    if op == "-" and b > a:
        a, b = b, a
    return {"question": f"{story.format(a=a, b=b)} {INSTRUCTION}", "answer": str(OPS[op](a, b))}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} records to {path}")


def main(train_count: int = 400, held_out_count: int = 60) -> None:
    rng = random.Random(0)
    data = Path(__file__).parent / "data"
    write(data / "arithmetic_train.jsonl", [problem(*rng.choice(TRAIN_STORIES), rng, 1, 9) for _ in range(train_count)])
    write(data / "arithmetic_heldout.jsonl", [problem(*rng.choice(HELD_OUT_STORIES), rng, 1, 9) for _ in range(held_out_count)])


if __name__ == "__main__":
    main()
