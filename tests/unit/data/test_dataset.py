"""The dataset pipeline: resampling, splits, caps, and the tokenized-data cache."""

from __future__ import annotations

import json
import random

import pytest
from conftest import CONVERSATIONS, write_jsonl

from llmft.config.data import DataConfig, DatasetSpec
from llmft.data import cache
from llmft.data.dataset import prepare_data, resample, split_off, warn_unrendered_tools
from llmft.data.templates import install_template
from llmft.errors import UserError


def data_config(train, tmp_path, **options) -> DataConfig:
    return DataConfig(train=train, cache_dir=str(tmp_path / "cache"), max_length=128, **options)


@pytest.fixture
def many_file(tmp_path):
    rows = [{"messages": CONVERSATIONS[i % len(CONVERSATIONS)]} for i in range(20)]
    return write_jsonl(tmp_path / "many.jsonl", rows)


def test_resample_samples_and_weight():
    items = list(range(10))
    rng = lambda: random.Random(0)  # noqa: E731
    assert resample(items, DatasetSpec(path="x"), rng()) == items
    down = resample(items, DatasetSpec(path="x", samples=4), rng())
    assert len(down) == 4 and down == sorted(down) and set(down) <= set(items)
    up = resample(items, DatasetSpec(path="x", samples=25), rng())
    assert len(up) == 25 and up[:20] == items * 2
    assert len(resample(items, DatasetSpec(path="x", weight=0.5), rng())) == 5
    assert resample(items, DatasetSpec(path="x", weight=2.0), rng()) == items * 2
    assert resample(items, DatasetSpec(path="x", samples=4), rng()) == down  # seeded: reproducible


def test_split_off_fraction_and_count():
    items = list(range(10))
    train, held = split_off(items, 0.3, seed=1)
    assert len(held) == 3 and sorted(train + held) == items
    assert split_off(items, 0.3, seed=1) == (train, held)
    train, held = split_off(items, 4, seed=1)
    assert len(held) == 4
    with pytest.raises(UserError, match="data.eval_split"):
        split_off(items, 10, seed=1)


def test_eval_split_and_caps(tokenizer, many_file, tmp_path):
    install_template(tokenizer, None)
    prepared = prepare_data("sft", data_config(str(many_file), tmp_path, eval_split=0.25, max_train_samples=7), tokenizer, seed=3)
    assert len(prepared.train) == 7 and len(prepared.eval) == 5
    assert prepared.reports["train"].records == 7


def test_cache_hit_and_invalidation(tokenizer, many_file, tmp_path):
    config = data_config(str(many_file), tmp_path)
    first = prepare_data("sft", config, tokenizer, seed=0)
    second = prepare_data("sft", config, tokenizer, seed=0)
    assert not first.from_cache and second.from_cache
    assert [vars(e) for e in second.train] == [vars(e) for e in first.train]
    assert second.reports["train"] == first.reports["train"]

    rows = [json.loads(line) for line in many_file.read_text().splitlines()]
    rows[3]["messages"][-1]["content"] = "Changed reply."
    write_jsonl(many_file, rows)
    edited = prepare_data("sft", config, tokenizer, seed=0)
    assert not edited.from_cache and edited.key != first.key

    other = tokenizer.chat_template
    try:
        tokenizer.chat_template = other.replace("You are a tiny test model.", "You are tiny.")
        assert not prepare_data("sft", config, tokenizer, seed=0).from_cache
    finally:
        tokenizer.chat_template = other
    for change in ({"max_length": 64}, {"train_on": "last_turn"}, {"truncation": "truncate_left"}):
        assert cache.fingerprint("sft", config.model_copy(update=change), tokenizer, 0) != first.key, change
    assert cache.fingerprint("sft", config.model_copy(update={"packing": True}), tokenizer, 0) == edited.key
    assert cache.fingerprint("sft", config, tokenizer, 1) != edited.key


def test_cache_off_writes_nothing(tokenizer, many_file, tmp_path):
    prepare_data("sft", data_config(str(many_file), tmp_path, cache=False), tokenizer, seed=0)
    assert not (tmp_path / "cache").exists()


def test_stage_format_mismatch_names_the_source(tokenizer, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("one document\nanother\n")
    with pytest.raises(UserError, match="data.train.0: .*t.txt is text data, but stage 'sft' trains on"):
        prepare_data("sft", data_config(str(text), tmp_path), tokenizer, seed=0)


def test_num_proc_gives_the_same_examples(tokenizer, many_file, tmp_path):
    one = prepare_data("sft", data_config(str(many_file), tmp_path, cache=False), tokenizer, seed=0)
    two = prepare_data("sft", data_config(str(many_file), tmp_path, cache=False, num_proc=2), tokenizer, seed=0)
    assert [vars(e) for e in two.train] == [vars(e) for e in one.train]
    assert two.reports["train"] == one.reports["train"]


def test_tools_the_template_cannot_render_are_reported(tokenizer, tmp_path, caplog):
    import logging

    row = {
        "conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi."}],
        "tools": json.dumps([{"name": "get_time", "parameters": {}}]),
    }
    path = write_jsonl(tmp_path / "tools.jsonl", [row])
    with caplog.at_level(logging.WARNING, logger="llmft"):
        prepare_data("sft", data_config(str(path), tmp_path, cache=False), tokenizer, seed=0)
    assert "1 records carry tool definitions" in caplog.text
    # the tokenizer's own template is in use: the fix is not "use the model's own template"
    assert "The template in use is the tokenizer's own (data.template is empty)" in caplog.text
    assert "model's own" not in caplog.text


def test_tools_under_a_named_template_point_to_the_tokenizers_own(tokenizer, tmp_path):
    from llmft.data.formats import Conversation

    item = Conversation(tuple(HI), "t.jsonl:1", tools='[{"name": "get_time"}]')
    message = warn_unrendered_tools([item], tokenizer, template="chatml")
    assert message.endswith(
        "The named template 'chatml' renders no tool definitions; choose one that does (qwen3, llama3.1), or "
        "leave data.template empty to use the tokenizer's own template, if it renders `tools`."
    )
    assert warn_unrendered_tools([Conversation(tuple(HI), "t.jsonl:1")], tokenizer, template=None) is None


# --- bad records the stage adds, and lines that are not JSON ------------------------------------

HI = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
OPEN = [*HI, {"role": "user", "content": "And you?"}]


def mixed_file(tmp_path):
    """A good conversation, one ending on a question, one with an empty reply, and a line that is not JSON."""
    path = tmp_path / "mixed.jsonl"
    rows = [json.dumps({"messages": m}) for m in (HI, OPEN, [HI[0], {"role": "assistant", "content": " "}])]
    path.write_text("\n".join([*rows, '{"messages": [}']) + "\n")
    return path


def test_sft_refuses_a_conversation_that_ends_after_its_last_reply(tmp_path):
    from llmft.data.dataset import load_items

    path = mixed_file(tmp_path)
    with pytest.raises(UserError) as info:
        load_items("sft", data_config(str(path), tmp_path), seed=0)
    lines = str(info.value).splitlines()
    assert lines[0] == "3 bad messages record(s):"
    assert lines[1] == (
        f"  - {path}:2: ends with a user message after the last reply (messages[2]): that turn is never trained on; "
        "end the conversation with the reply"
    )
    assert lines[2].startswith(f"  - {path}:3: messages[1]: empty assistant message: only its end-of-turn token")
    assert lines[3] == f"  - {path}:4: invalid JSON: Expecting value (column 15)"


def test_skipped_records_are_counted_in_the_source_report(tmp_path):
    from llmft.data.dataset import load_items

    path = mixed_file(tmp_path)
    loaded = load_items("sft", data_config(str(path), tmp_path, on_bad_record="skip"), seed=0)
    assert [c.where for c in loaded.train] == [f"{path}:1"]
    (source,) = loaded.sources
    assert (source.records, source.skipped, source.used) == (4, 3, 1)
    assert source.line().startswith(f"data.train.0: {path} (messages, detected): 4 records, 3 bad skipped (e.g. {path}:2: ends")


def test_sampling_stages_ask_an_open_question_as_it_is(tmp_path):
    """grpo/ppo: the replies are sampled, so a conversation ending with the user is a prompt, and an
    empty reply in the data is not trained on (the line that is not JSON is still a bad record)."""
    from llmft.data.dataset import load_items

    path = mixed_file(tmp_path)
    loaded = load_items("grpo", data_config(str(path), tmp_path, on_bad_record="skip"), seed=0)
    assert [c.where for c in loaded.train] == [f"{path}:{n}" for n in (1, 2, 3)]
    assert loaded.sources[0].skipped == 1


def test_a_source_with_no_readable_record_cannot_be_detected(tmp_path):
    from llmft.data.dataset import load_items

    path = tmp_path / "broken.jsonl"
    path.write_text("{oops\n[1,\n")
    with pytest.raises(UserError) as info:
        load_items("sft", data_config(str(path), tmp_path, on_bad_record="skip"), seed=0)
    assert str(info.value).startswith(
        f"data.train.0: {path}: no record could be read, so its format cannot be detected; 2 bad unreadable record(s):\n"
        f"  - {path}:1: invalid JSON"
    )
