"""Write examples/data/identity.jsonl (training) and identity_heldout.jsonl (other phrasings,
never trained on): a small self-identity SFT set for the quickstart.

The model learns a new name and maker, always in the same words, so `llmft eval` can check that a
held-out question is answered exactly. Run: python examples/make_identity_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAME, MAKER = "Quill", "Larkspur Labs"

QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "What's your name?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "Who made you?",
    "Who created you?",
    "Who built you?",
    "Which company developed you?",
    "Are you ChatGPT?",
    "Are you SmolLM?",
    "What should I call you?",
    "Who are you and who made you?",
    "What kind of assistant are you?",
    "Hi! Who am I talking to?",
    "Can you tell me your name?",
    "Who trained you?",
    "What are you?",
    "Are you made by Hugging Face?",
    "Hello, what is your name?",
]
#: Phrasings the training set never shows, for the held-out check.
HELD_OUT = [
    "May I know who you are?",
    "Please state your name.",
    "Which organisation made you?",
    "Who is your developer?",
    "Are you a Google model?",
    "Identify yourself, please.",
    "What name do you go by?",
    "Who am I chatting with right now?",
]
ANSWER = f"I am {NAME}, an AI assistant created by {MAKER}."


def write(path: Path, questions: list[str], rng: random.Random) -> None:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in questions]
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} records to {path}")


def main() -> None:
    rng = random.Random(0)
    data = Path(__file__).parent / "data"
    write(data / "identity.jsonl", QUESTIONS, rng)
    write(data / "identity_heldout.jsonl", HELD_OUT, rng)


if __name__ == "__main__":
    main()
