"""`data.streaming`: the same examples as in memory, produced lazily; what it needs and turns off is
refused by key; a streamed pt/sft run trains, with its counts in the run log."""

from __future__ import annotations

import json
import logging
import math

import pytest
from conftest import make_recipe

from llmft.config import validate_recipe
from llmft.config.data import DataConfig
from llmft.data.dataset import read_split
from llmft.data.streaming import TURNED_OFF, StreamedTrain
from llmft.data.tokenize import build_pt_blocks, build_sft_examples
from llmft.errors import UserError


def test_streamed_pt_blocks_equal_the_in_memory_blocks(pt_file, tokenizer):
    data = DataConfig(train=str(pt_file), max_length=16, streaming=True)
    streamed = list(StreamedTrain("pt", data, tokenizer, seed=0))
    items, _ = read_split("pt", data.train, "train", data, 0)
    blocks, _ = build_pt_blocks(tokenizer, items, 16)
    assert streamed == [vars(b) for b in blocks]
    assert list(StreamedTrain("pt", data, tokenizer, seed=0)) == streamed  # a second pass: the same


def test_streamed_sft_examples_equal_the_in_memory_ones(sft_file, tokenizer):
    data = DataConfig(train=str(sft_file), max_length=64, streaming=True)
    stream = StreamedTrain("sft", data, tokenizer, seed=0)
    items, _ = read_split("sft", data.train, "train", data, 0)
    examples, _ = build_sft_examples(tokenizer, items, 64)
    assert list(stream) == [vars(e) for e in examples]
    assert stream.sources[0].read == len(items) and stream.sources[0].format == "messages"


def test_streamed_bad_records_follow_on_bad_record_and_are_counted(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good one"}\nnot json\n{"text": "good two"}\n')
    data = DataConfig(train=str(path), max_length=16, streaming=True, on_bad_record="skip")
    stream = StreamedTrain("pt", data, tokenizer, seed=0)
    list(stream)
    assert stream.sources[0].read == 3 and stream.sources[0].skipped == 1
    assert "1 bad skipped (e.g. " + f"{path}:2" in stream.lines()[0]
    strict = StreamedTrain("pt", data.model_copy(update={"on_bad_record": "error"}), tokenizer, seed=0)
    with pytest.raises(UserError, match=f"{path}:2"):
        list(strict)


def test_a_wrong_format_stops_before_training(sft_file, tokenizer):
    with pytest.raises(UserError, match="data.train.0: .* is messages data, but stage 'pt' trains on text"):
        StreamedTrain("pt", DataConfig(train=str(sft_file), streaming=True), tokenizer, seed=0)


def test_streamed_interleave_draws_by_probability(tmp_path, tokenizer):
    paths = []
    for n in range(2):
        paths.append(tmp_path / f"s{n}.txt")
        paths[-1].write_text("".join(f"s{n} line {i}\n" for i in range(2000)))
    data = DataConfig(
        train=[{"path": str(paths[0]), "probability": 0.8}, {"path": str(paths[1])}], mix="interleave", streaming=True
    )
    stream = StreamedTrain("pt", data, tokenizer, seed=3)
    texts = [item.text for item in stream.items()]
    drawn = [s.drawn for s in stream.sources]
    assert drawn[0] / sum(drawn) == pytest.approx(0.8, abs=0.03)
    assert [item.text for item in StreamedTrain("pt", data, tokenizer, seed=3).items()] == texts
    assert "drawn by mix: interleave" in stream.lines()[0]


@pytest.mark.parametrize(
    "sections,key",
    [
        ({"training": {"max_steps": None}}, "training.max_steps"),
        ({"stage": {"name": "rm"}}, "data.streaming"),
        ({"data": {"packing": True}}, "data"),
        ({"data": {"eval_split": 0.1}}, "data"),
        ({"distributed": {"num_processes": 2}}, "data.streaming"),
    ],
)
def test_streaming_refusals_name_the_key(tiny_model_dir, pt_file, tmp_path, sections, key):
    raw = make_recipe(tiny_model_dir, pt_file, tmp_path / "out", stage="pt", data={"streaming": True})
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    with pytest.raises(UserError, match=key):
        validate_recipe(raw)


@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_a_streamed_run_trains_and_logs_what_streaming_turns_off(stage, tiny_model_dir, pt_file, sft_file, tmp_path, caplog):
    from llmft.run import train

    data_file = pt_file if stage == "pt" else sft_file
    evaluation = tmp_path / "eval.jsonl"
    rows = [{"text": "a held out document"}] if stage == "pt" else [json.loads(sft_file.read_text().splitlines()[0])]
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = validate_recipe(
        make_recipe(
            tiny_model_dir,
            data_file,
            tmp_path / "out",
            stage=stage,
            mode="lora",
            data={"streaming": True, "eval": str(evaluation)},
            training={"max_steps": 4, "micro_batch_size": 4, "eval_strategy": "steps", "eval_steps": 2},
        )
    )
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = train(recipe)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert any("eval_loss" in h for h in result.log_history)
    assert TURNED_OFF in caplog.text
    assert "records read (streamed)" in caplog.text and "data.train: " in caplog.text


def test_plan_says_streamed_data_is_not_counted(tiny_model_dir, pt_file, tmp_path):
    from llmft.plan.data_count import count_training_data

    recipe = validate_recipe(make_recipe(tiny_model_dir, pt_file, tmp_path / "out", stage="pt", data={"streaming": True}))
    counted = count_training_data(recipe)
    assert counted.examples is None and TURNED_OFF in counted.how
