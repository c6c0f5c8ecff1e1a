"""Records cut or dropped by the length limit come with the limit that would keep most of them, read
from their lengths before the limit applied (which `llmft data`'s percentiles show too)."""

from __future__ import annotations

from collections import Counter

from tiny import build_tokenizer

from llmft.data.formats import Conversation, Pair
from llmft.data.pairs import build_pair_examples
from llmft.data.prompts import build_prompts
from llmft.data.templates import install_template
from llmft.data.tokenize import DataReport, build_sft_examples, round_up


def test_round_up_to_limits_people_set():
    assert [round_up(n) for n in (1, 16, 17, 250, 257, 1000, 1025, 1490, 2000)] == [16, 16, 32, 256, 320, 1024, 1152, 1536, 2048]


def test_the_advice_names_the_limits_that_keep_95_and_99_percent():
    lengths = [1000] * 90 + [1490] * 5 + [2000] * 4 + [2400]
    dropped = Counter({"longer than max_length": 10})
    report = DataReport(
        records=100, kept=90, dropped=dropped, first_dropped=["f:91 (longer than max_length)"], lengths=lengths, limit=1024
    )
    assert report.length_advice() == "data.max_length 1536 would keep 95% (2048: 99%)"
    assert report.summary("data.train").endswith(
        "dropped 10: 10 longer than max_length; e.g. f:91 (longer than max_length); data.max_length 1536 would keep 95% (2048: 99%)"
    )


def test_limits_at_or_under_the_one_applied_are_not_advised():
    # 97% fit already: the advice goes on to what keeps 99% and every record
    lengths = [100] * 97 + [300, 300, 700]
    report = DataReport(dropped=Counter({"longer than max_length": 3}), lengths=lengths, limit=256)
    assert report.length_advice() == "data.max_length 320 would keep 99% (704: 100%)"
    assert DataReport(lengths=lengths, limit=256).length_advice() is None  # nothing dropped for its length


def _tokenizer():
    tokenizer = build_tokenizer()
    install_template(tokenizer, None)
    return tokenizer


def test_sft_records_are_measured_before_the_limit_and_the_run_log_says_which_would_fit():
    tokenizer = _tokenizer()

    def hello(n: int) -> tuple[dict, ...]:
        return ({"role": "user", "content": "Hello! " * n}, {"role": "assistant", "content": "Paris."})

    conversations = [Conversation(hello(n), f"f:{n}") for n in (1, 2, 30)]
    examples, report = build_sft_examples(tokenizer, conversations, max_length=64, truncation="drop")
    assert len(examples) == 2 and report.dropped == {"longer than max_length": 1}
    assert report.lengths == [41, 45, 157] and report.limit == 64  # the dropped one measured too
    # 2 of 3 fit in 64; 95% and 99% of 3 records is all three: 157 rounds up to 160
    assert report.summary("data.train").endswith("; data.max_length 160 would keep 100%")


def test_pairs_are_measured_by_their_longer_side():
    tokenizer = _tokenizer()
    prompt = ({"role": "user", "content": "Hi"},)
    pair = Pair(prompt, ({"role": "assistant", "content": "Yes."},), ({"role": "assistant", "content": "No! " * 40},), "p:1")
    kept, report = build_pair_examples(tokenizer, [pair], max_length=32, truncation="drop")
    assert kept == [] and report.lengths[0] > 32
    assert report.length_advice() == f"data.max_length {round_up(report.lengths[0])} would keep 100%"


def test_prompts_are_advised_in_terms_of_their_budget():
    tokenizer = _tokenizer()
    conversations = [Conversation(({"role": "user", "content": "Hi " * n},), f"f:{n}") for n in (1, 60)]
    prompts, report = build_prompts(tokenizer, conversations, 48, "data.max_length - stage.max_new_tokens")
    assert len(prompts) == 1 and report.lengths == [35, 212]
    assert report.length_advice() == "data.max_length - stage.max_new_tokens = 224 would keep 100%"
