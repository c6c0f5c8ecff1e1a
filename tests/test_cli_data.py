"""`llmft data` and `llmft preprocess` on the tiny model, in-process."""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml
from conftest import make_recipe, write_jsonl

from llmft.cli import main

pytestmark = pytest.mark.usefixtures("restore_process_state")


@pytest.fixture
def recipe_file(tiny_model_dir, sft_file, tmp_path):
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "out", data={"cache_dir": str(tmp_path / "cache")})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_data_prints_counts_lengths_and_a_marked_example(recipe_file, capsys):
    assert main(["data", str(recipe_file)]) == 0
    out = capsys.readouterr().out
    assert "(messages, detected): 4 records" in out
    assert "4 records -> 4 examples" in out
    assert "tokens per example, before the length limit: p50" in out
    assert "[[I am fine, thank you.<|im_end|>]]" in out  # the first example's reply, marked


def test_preprocess_then_data_reads_the_cache(recipe_file, tmp_path, capsys):
    assert main(["preprocess", str(recipe_file)]) == 0
    first = capsys.readouterr().out
    assert "tokenized in" in first and "4 train" in first
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    # written to a temporary directory and renamed into place, with the mode of any new directory
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o777 & ~mask
    assert main(["preprocess", str(recipe_file)]) == 0
    assert "already cached" in capsys.readouterr().out
    assert main(["data", str(recipe_file)]) == 0
    assert "from cache" in capsys.readouterr().out


def test_data_on_preference_data_works_before_the_stage_trains(tiny_model_dir, tmp_path, capsys):
    rows = [
        {
            "conversations": [{"from": "human", "value": "Hello!"}],
            "chosen": {"from": "gpt", "value": "Hello! How are you today?"},
            "rejected": {"from": "gpt", "value": "No."},
        }
    ] * 3
    data = tmp_path / "pref.json"
    data.write_text(json.dumps(rows))
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", stage="dpo", data={"cache": False})
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(preference, detected): 3 records" in out and "chosen:" in out and "rejected:" in out
    assert main(["validate", str(path)]) == 0  # and the recipe trains dpo


def test_data_reports_skipped_bad_records(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]},
            {"messages": [{"role": "robot", "content": "?"}]},
        ],
    )
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", data={"cache": False, "on_bad_record": "skip"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 records, 1 bad skipped (e.g. " in out and "mixed.jsonl:2" in out


def test_bad_lines_and_unsupervised_turns_follow_on_bad_record(tiny_model_dir, tmp_path, capsys):
    """A line that is not JSON, a conversation ending with the user, an empty reply: each stops
    `llmft data` (exit 2, every one named by file:line) or, under skip, is counted in its report."""
    hi = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]
    data = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"messages": hi}),
        '{"messages": [{"role": "user", "content": "Hello!"},]}',
        json.dumps({"messages": [*hi, {"role": "user", "content": "And?"}]}),
        json.dumps({"messages": [hi[0], {"role": "assistant", "content": ""}]}),
    ]
    data.write_text("\n".join(lines) + "\n")
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", data={"cache": False})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert "error: 3 bad messages record(s):\n" in err
    assert f"  - {data}:2: invalid JSON: Expecting value (column 53)\n" in err
    assert f"  - {data}:3: ends with a user message after the last reply (messages[2]): that turn is never trained on" in err
    assert f"  - {data}:4: messages[1]: empty assistant message" in err
    assert main(["data", str(path), "data.on_bad_record=skip"]) == 0
    out = capsys.readouterr().out
    assert f"(messages, detected): 4 records, 3 bad skipped (e.g. {data}:2: invalid JSON" in out
    assert "1 records -> 1 examples" in out


@pytest.mark.parametrize(
    "stage",
    [
        {"name": "ppo", "reward_model": "rm", "max_new_tokens": 40},
        {"name": "grpo", "rewards": ["ends_cleanly"], "num_generations": 2, "max_completion_length": 40},
    ],
)
def test_data_shows_the_prompts_a_sampling_stage_trains_on(stage, tiny_model_dir, tmp_path, capsys):
    """ppo/grpo train on prompts (the replies are sampled), filtered by the tokens data.max_length leaves
    before the generated reply: `llmft data` counts exactly those, with the reason for every drop."""
    rows = [
        {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]},
        {
            "messages": [
                {"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 6},
                {"role": "assistant", "content": "Yes."},
            ]
        },
        # an open question after an exchange: asked as it is
        {
            "messages": [
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And you?"},
            ]
        },
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", data={"max_length": 96}, training={"micro_batch_size": 2})
    raw["stage"] = stage
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    key = "max_new_tokens" if stage["name"] == "ppo" else "max_completion_length"
    assert "3 records -> 2 prompts (the replies are sampled in training)" in out
    assert f"dropped 1: prompt longer than data.max_length - stage.{key}" in out
    assert (
        "tokens per prompt, before the length limit:" in out and "supervised" not in out.split("prompt 0")[0].split("train:")[1]
    )
    assert "prompt 0 (" in out and "Hello." not in out.split("prompt 0")[1]  # the data's reply is not shown as trained


def test_data_measures_lengths_before_the_limit_and_says_which_limit_would_keep_most(tiny_model_dir, tmp_path, capsys):
    rows = [
        {"messages": [{"role": "user", "content": "Hello! " * n}, {"role": "assistant", "content": "Paris."}]} for n in (1, 2, 30)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", data={"max_length": 64, "truncation": "drop", "cache": False})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  dropped 1: longer than max_length\n" in out
    assert "  data.max_length 160 would keep 100%\n" in out
    # the percentiles are of the lengths before the limit: the longest record is 157 tokens, not 64
    assert "  tokens per example, before the length limit: p50 45, p90 157, p99 157, max 157\n" in out


def test_a_bad_record_that_stops_the_run_suggests_skipping(tiny_model_dir, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}] * 2
    data = write_jsonl(tmp_path / "d.jsonl", [*rows, {"messages": [{"role": "user", "content": "Hi"}]}, {"text": 1}])
    raw = make_recipe(tiny_model_dir, data, tmp_path / "out", data={"cache": False})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.split("error: ", 1)[1]
    assert err.startswith("2 bad messages record(s):\n  - ") and f"{data}:3: " in err and f"{data}:4: " in err
    assert err.endswith(
        "\nFix them, or set data.on_bad_record: skip to leave them out and train on the rest "
        "(each one counted in the run log and in `llmft data`).\n"
    )
    assert err.count("on_bad_record") == 1


def test_data_counts_what_interleave_drew_from_each_source(tiny_model_dir, tmp_path, capsys):
    sources = []
    for n in range(2):
        sources.append(tmp_path / f"s{n}.jsonl")
        write_jsonl(sources[-1], [{"text": f"source {n} document {i}"} for i in range(200)])
    raw = make_recipe(
        tiny_model_dir,
        sources[0],
        tmp_path / "out",
        stage="pt",
        data={"train": [{"path": str(sources[0]), "probability": 0.75}, str(sources[1])], "mix": "interleave", "cache": False},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "drawn by mix: interleave" in line]
    assert len(lines) == 2 and lines[0].strip().startswith("data.train.0:")
    assert "200 drawn" in lines[0] or "200 drawn" in lines[1]  # first_exhausted: one source ran out


def test_preprocess_refuses_a_streamed_recipe(tiny_model_dir, pt_file, tmp_path, capsys):
    raw = make_recipe(tiny_model_dir, pt_file, tmp_path / "out", stage="pt", data={"streaming": True})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["preprocess", str(path)]) == 2
    assert "data.streaming: a streamed run tokenizes during training" in capsys.readouterr().err
