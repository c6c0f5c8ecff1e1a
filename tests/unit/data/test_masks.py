"""Golden label masks, worked out by hand.

The expectations are built without llmft's span algorithm: the rendered text is written out
literally, cut into prompt / reply / trailing pieces, and each piece is tokenized on its own.
Every cut sits on a special token or between a '\\n' and a letter, where the byte-level
pre-tokenizer splits anyway, so the pieces' ids concatenate to the ids of the whole text.
"""

from __future__ import annotations

import copy

import pytest
from tiny import build_tokenizer

from llmft.data.formats import Conversation, Text, normalise
from llmft.data.sources import RawRecord
from llmft.data.templates import install_template
from llmft.data.tokenize import (
    IGNORE,
    build_pt_blocks,
    build_sft_examples,
    encode_conversation,
    supervised_count,
)

# tests/tiny.py's template inserts this when a conversation has no system message
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

WHO = [
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am a helpful assistant."},
]
TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Translate to French: good morning"},
    {"role": "assistant", "content": "bonjour"},
]
ALPACA_RECORD = {
    "system": "You translate.",
    "history": [["Hello!", "Hello! How are you today?"]],
    "instruction": "Translate to French:",
    "input": "good morning",
    "output": "bonjour",
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def expected(tok, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """input_ids and labels for (text, supervised) pieces tokenized one by one."""
    input_ids, labels = [], []
    for text, supervised in pieces:
        piece = ids(tok, text)
        input_ids += piece
        labels += piece if supervised else [IGNORE] * len(piece)
    return input_ids, labels


def template_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def supervised_tokens(tok, labels) -> list[str]:
    return [tok.decode([t]) for t in labels if t != IGNORE]


def test_messages_record_golden(tok):
    example = encode_conversation(tok, WHO, supervision="all_turns")
    want_ids, want_labels = expected(
        tok,
        [
            (DEFAULT_SYSTEM + "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n", False),
            ("I am a helpful assistant.<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    # what is trained, spelled out: the reply and its <|im_end|>, not the '\n' after it
    assert supervised_tokens(tok, example.labels) == [
        "I",
        " am",
        " a",
        " he",
        "lp",
        "fu",
        "l",
        " assistant",
        ".",
        "<|im_end|>",
    ]
    assert example.input_ids[-1] == ids(tok, "\n")[0] and example.labels[-1] == IGNORE
    assert example.labels[-2] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_docs_data_md_example(tok):
    """The example printed in docs/data.md."""
    messages = [
        {"role": "user", "content": "Hello! How are you today?"},
        {"role": "assistant", "content": "I am fine, thank you."},
    ]
    labels = encode_conversation(tok, messages, supervision="all_turns").labels
    assert supervised_tokens(tok, labels) == [
        "I",
        " am",
        " f",
        "in",
        "e",
        ",",
        " th",
        "ank",
        " you",
        ".",
        "<|im_end|>",
    ]


def test_multi_turn_golden(tok):
    example = encode_conversation(tok, TWO_TURNS, supervision="all_turns")
    want_ids, want_labels = expected(
        tok,
        [
            (DEFAULT_SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", False),
            ("Paris.<|im_end|>", True),
            ("\n<|im_start|>user\nTranslate to French: good morning<|im_end|>\n<|im_start|>assistant\n", False),
            ("bonjour<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    assert tok.decode([t for t in example.labels if t != IGNORE]) == "Paris.<|im_end|>bonjour<|im_end|>"


def test_alpaca_record_with_input_system_and_history_golden(tok):
    [conversation], _ = normalise([RawRecord(ALPACA_RECORD, "a.json record 0")], "alpaca")
    example = encode_conversation(tok, conversation.messages, supervision="all_turns")
    want_ids, want_labels = expected(
        tok,
        [
            ("<|im_start|>system\nYou translate.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", False),
            ("Hello! How are you today?<|im_end|>", True),  # the history reply is trained too
            ("\n<|im_start|>user\nTranslate to French:\ngood morning<|im_end|>\n<|im_start|>assistant\n", False),
            ("bonjour<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    assert example.input_ids == template_ids(tok, list(conversation.messages))


def test_alpaca_template_golden(tok):
    """Under the alpaca template the turn ends with EOS, then '\\n\\n', which is not trained."""
    alpaca_tok = copy.deepcopy(tok)
    install_template(alpaca_tok, "alpaca")
    example = encode_conversation(alpaca_tok, TWO_TURNS, supervision="all_turns")
    want_ids, want_labels = expected(
        tok,
        [
            (ALPACA_SYSTEM + "\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:\n", False),
            ("Paris.<|im_end|>", True),
            ("\n\n### Instruction:\nTranslate to French: good morning\n\n### Response:\n", False),
            ("bonjour<|im_end|>", True),
            ("\n\n", False),
        ],
    )
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    assert example.input_ids == template_ids(alpaca_tok, TWO_TURNS)


def test_mask_prompt_false_trains_every_token(tok):
    example = encode_conversation(tok, TWO_TURNS, supervision="all")
    want_ids, _ = expected(
        tok,
        [
            (DEFAULT_SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", False),
            ("Paris.<|im_end|>", True),
            ("\n<|im_start|>user\nTranslate to French: good morning<|im_end|>\n<|im_start|>assistant\n", False),
            ("bonjour<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert example.input_ids == want_ids
    assert example.labels == want_ids


@pytest.mark.parametrize(
    "messages",
    [WHO, TWO_TURNS, [{"role": "system", "content": "You are a poet."}, *WHO], TWO_TURNS[:3]],
    ids=["one-turn", "two-turns", "system", "ends-with-user"],
)
@pytest.mark.parametrize("supervision", ["all_turns", "last_turn", "all"])
def test_input_ids_match_apply_chat_template(tok, messages, supervision):
    assert encode_conversation(tok, messages, supervision).input_ids == template_ids(tok, messages)


def test_every_assistant_turn_ends_with_supervised_eos(tok):
    messages = [{"role": "system", "content": "You are a poet."}, *TWO_TURNS]
    example = encode_conversation(tok, messages, supervision="all_turns")
    eos = tok.eos_token_id
    positions = [i for i, t in enumerate(example.input_ids) if t == eos]
    # one <|im_end|> per message: system, user, assistant, user, assistant
    assert [example.labels[i] == eos for i in positions] == [False, False, True, False, True]
    # and the token after each supervised EOS ('\n') is not trained
    assert all(example.labels[i + 1] == IGNORE for i in positions)


def test_trailing_user_turn_is_not_trained(tok):
    example = encode_conversation(tok, TWO_TURNS[:3], supervision="all_turns")
    assert tok.decode([t for t in example.labels if t != IGNORE]) == "Paris.<|im_end|>"


# --- build_sft_examples ------------------------------------------------------------------

PROMPT = DEFAULT_SYSTEM + "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
REPLY = "I am a helpful assistant.<|im_end|>"


def conv(messages, where="d.jsonl:1"):
    return Conversation(tuple(messages), where)


def test_sft_examples_kept_whole_when_they_fit(tok):
    n = len(ids(tok, PROMPT + REPLY + "\n"))
    examples, report = build_sft_examples(tok, [conv(WHO)], max_length=n, supervision="all_turns")
    assert [e.input_ids for e in examples] == [ids(tok, PROMPT + REPLY + "\n")]
    assert (report.records, report.kept, report.truncated, sum(report.dropped.values())) == (1, 1, 0, 0)
    assert report.tokens == n
    assert report.supervised_tokens == len(ids(tok, REPLY))


def test_sft_example_longer_than_max_length_is_truncated_and_counted(tok):
    prompt_len = len(ids(tok, PROMPT))
    max_length = prompt_len + 3  # keeps 'I', ' am', ' a'
    examples, report = build_sft_examples(tok, [conv(WHO)], max_length=max_length, supervision="all_turns")
    [example] = examples
    assert example.input_ids == ids(tok, PROMPT + REPLY)[:max_length]
    assert example.labels == [IGNORE] * prompt_len + ids(tok, REPLY)[:3]
    assert supervised_tokens(tok, example.labels) == ["I", " am", " a"]
    assert (report.kept, report.truncated, report.tokens, report.supervised_tokens) == (1, 1, max_length, 3)
    assert not report.dropped


def test_sft_reply_wholly_beyond_max_length_is_dropped_with_reason_and_location(tok):
    prompt_len = len(ids(tok, PROMPT))
    short = [{"role": "system", "content": "Hi"}, *TWO_TURNS[:2]]
    records = [conv(WHO, "d.jsonl:7"), conv(short, "d.jsonl:8")]
    # the second record fits; the first one's reply starts right after the cut
    assert len(encode_conversation(tok, short, True).input_ids) <= prompt_len
    examples, report = build_sft_examples(tok, records, max_length=prompt_len, supervision="all_turns")
    assert len(examples) == 1 and report.kept == 1 and report.records == 2
    assert report.dropped == {"reply truncated away by max_length": 1}
    assert report.first_dropped == ["d.jsonl:7 (reply truncated away by max_length)"]
    assert report.truncated == 0
    assert "d.jsonl:7" in report.summary("data.train")


def test_sft_reply_starting_at_the_last_position_is_kept(tok):
    prompt_len = len(ids(tok, PROMPT))
    examples, report = build_sft_examples(tok, [conv(WHO)], max_length=prompt_len + 1, supervision="all_turns")
    assert supervised_tokens(tok, examples[0].labels) == ["I"]
    assert report.truncated == 1 and report.supervised_tokens == 1


def test_mask_prompt_false_supervised_tokens_skip_position_zero(tok):
    examples, report = build_sft_examples(tok, [conv(WHO)], max_length=512, supervision="all")
    n = len(examples[0].input_ids)
    assert examples[0].labels == examples[0].input_ids
    assert report.supervised_tokens == n - 1 and report.tokens == n


def test_supervised_count_ignores_position_zero():
    assert supervised_count([5, IGNORE, 7, 8]) == 2
    assert supervised_count([5]) == 0
    assert supervised_count([5, IGNORE, IGNORE]) == 0
    assert supervised_count([IGNORE, 3]) == 1
    assert supervised_count([]) == 0


# --- build_pt_blocks ---------------------------------------------------------------------


class LetterTokenizer:
    """a -> 1, b -> 2, ...; EOS is 99. Small enough to work blocks out by hand."""

    eos_token_id = 99

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):  # batched, like a fast tokenizer
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [ord(c) - ord("a") + 1 for c in text]}


def texts(*docs):
    return [Text(doc, f"c.txt:{i}") for i, doc in enumerate(docs, start=1)]


def test_pt_blocks_append_eos_and_keep_the_short_last_block():
    blocks, report = build_pt_blocks(LetterTokenizer(), texts("abcd", "e", "fgh"), max_length=4)
    # stream: a b c d EOS | e EOS f g | h EOS
    assert [b.input_ids for b in blocks] == [[1, 2, 3, 4], [99, 5, 99, 6], [7, 8, 99]]
    assert all(b.labels == b.input_ids for b in blocks)
    assert (report.records, report.kept, report.tokens, report.supervised_tokens) == (3, 3, 11, 3 + 3 + 2)
    assert not report.dropped


def test_pt_final_one_token_block_is_dropped_and_counted():
    blocks, report = build_pt_blocks(LetterTokenizer(), texts("abc", "de"), max_length=3)
    # stream: a b c | EOS d e | EOS  -> the lone EOS cannot train anything
    assert [b.input_ids for b in blocks] == [[1, 2, 3], [99, 4, 5]]
    assert report.dropped == {"final block of one token": 1}
    assert report.first_dropped == ["c.txt:2 (final block of one token)"]
    assert (report.kept, report.tokens, report.supervised_tokens) == (2, 6, 4)


def test_pt_blocks_with_the_tiny_tokenizer(tok):
    docs = ["The quick brown fox.", "Hello!"]
    blocks, report = build_pt_blocks(tok, texts(*docs), max_length=4)
    stream = ids(tok, docs[0]) + [tok.eos_token_id] + ids(tok, docs[1]) + [tok.eos_token_id]
    want = [stream[i : i + 4] for i in range(0, len(stream), 4)]
    if len(want[-1]) == 1:
        want.pop()
    assert [b.input_ids for b in blocks] == want
    assert all(b.labels == b.input_ids for b in blocks)
    assert report.tokens == sum(len(b) for b in want)


def test_pt_document_already_ending_in_eos_gets_no_second_one(tok):
    blocks, _ = build_pt_blocks(tok, texts("Hello!<|im_end|>"), max_length=64)
    assert blocks[0].input_ids == ids(tok, "Hello!") + [tok.eos_token_id]


# --- supervision options, per-message loss, truncation -------------------------------------------


def _supervised_text(tok, example) -> str:
    return tok.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE])


def test_last_turn_supervises_only_the_final_reply(tok):
    example = encode_conversation(tok, TWO_TURNS, supervision="last_turn")
    last = TWO_TURNS[-1]["content"]
    assert _supervised_text(tok, example) == last + "<|im_end|>"


def test_loss_false_mutes_one_reply(tok):
    messages = [dict(m) for m in TWO_TURNS]
    messages[1]["loss"] = False  # the first assistant reply
    example = encode_conversation(tok, messages, supervision="all_turns")
    assert _supervised_text(tok, example) == TWO_TURNS[-1]["content"] + "<|im_end|>"
    assert example.input_ids == encode_conversation(tok, TWO_TURNS).input_ids  # same text rendered


def test_loss_false_under_train_on_all(tok):
    messages = [dict(m) for m in TWO_TURNS]
    messages[1]["loss"] = False
    every = encode_conversation(tok, TWO_TURNS, supervision="all")
    muted = encode_conversation(tok, messages, supervision="all")
    assert every.labels == every.input_ids
    first_reply = TWO_TURNS[1]["content"] + "<|im_end|>"
    dropped = [t for t, l in zip(muted.input_ids, muted.labels) if l == IGNORE]
    assert tok.decode(dropped) == first_reply


def test_truncation_modes(tok):
    from llmft.data.formats import Conversation

    conv = Conversation(tuple(TWO_TURNS), "f.jsonl:1")
    full = encode_conversation(tok, TWO_TURNS)
    n = len(full.input_ids) - 3
    (right,), r_report = build_sft_examples(tok, [conv], max_length=n, truncation="truncate_right")
    assert right.input_ids == full.input_ids[:n] and r_report.truncated == 1
    (left,), l_report = build_sft_examples(tok, [conv], max_length=n, truncation="truncate_left")
    assert left.input_ids == full.input_ids[-n:] and left.labels == full.labels[-n:] and l_report.truncated == 1
    dropped, d_report = build_sft_examples(tok, [conv], max_length=n, truncation="drop")
    assert dropped == [] and d_report.dropped == {"longer than max_length": 1}
    assert d_report.first_dropped == ["f.jsonl:1 (longer than max_length)"]
