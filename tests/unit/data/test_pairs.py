"""Preference pairs and KTO completions: only the reply (and its end-of-turn) is supervised."""

from __future__ import annotations

from llmft.data.formats import Completion, Pair
from llmft.data.pairs import build_kto_examples, build_pair_examples, encode_reply
from llmft.data.tokenize import IGNORE

PROMPT = ({"role": "user", "content": "What is the capital of France?"},)
CHOSEN = ({"role": "assistant", "content": "Paris."},)
REJECTED = ({"role": "assistant", "content": "The capital of France is the sea."},)


def supervised(tok, example) -> str:
    return tok.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def test_each_side_is_prompt_plus_reply(tokenizer):
    example = encode_reply(tokenizer, PROMPT, CHOSEN)
    assert example.input_ids == tokenizer.apply_chat_template([*PROMPT, *CHOSEN])["input_ids"]
    assert supervised(tokenizer, example) == "Paris.<|im_end|>"


def test_pair_examples_share_the_prompt(tokenizer):
    (pair,), report = build_pair_examples(tokenizer, [Pair(PROMPT, CHOSEN, REJECTED, "p.json record 0")], max_length=256)
    assert supervised(tokenizer, pair.chosen) == "Paris.<|im_end|>"
    assert supervised(tokenizer, pair.rejected) == "The capital of France is the sea.<|im_end|>"
    prompt_len = len(tokenizer.apply_chat_template(list(PROMPT), add_generation_prompt=True)["input_ids"])
    assert pair.chosen.input_ids[:prompt_len] == pair.rejected.input_ids[:prompt_len]
    assert report.kept == 1 and report.supervised_tokens > 0


def test_pair_dropped_when_a_reply_is_cut_away(tokenizer):
    prompt_len = len(tokenizer.apply_chat_template(list(PROMPT), add_generation_prompt=True)["input_ids"])
    pairs, report = build_pair_examples(tokenizer, [Pair(PROMPT, CHOSEN, REJECTED, "p.json record 3")], max_length=prompt_len)
    assert pairs == [] and report.dropped == {"reply truncated away by max_length": 1}
    pairs, report = build_pair_examples(
        tokenizer, [Pair(PROMPT, CHOSEN, REJECTED, "p.json record 3")], max_length=prompt_len + 1, truncation="drop"
    )
    assert pairs == [] and report.dropped == {"longer than max_length": 1}


def test_kto_keeps_the_label(tokenizer):
    items = [Completion(PROMPT, CHOSEN, True, "k:1"), Completion(PROMPT, REJECTED, False, "k:2")]
    examples, report = build_kto_examples(tokenizer, items, max_length=256)
    assert [e.desirable for e in examples] == [True, False]
    assert supervised(tokenizer, examples[1].example) == "The capital of France is the sea.<|im_end|>"
    assert report.kept == 2
