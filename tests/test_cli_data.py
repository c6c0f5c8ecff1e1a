"""`llmft data` and `llmft preprocess` on the tiny model, in-process."""

from __future__ import annotations

import json

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
    assert "tokens per example: p50" in out
    assert "[[I am fine, thank you.<|im_end|>]]" in out  # the first example's reply, marked


def test_preprocess_then_data_reads_the_cache(recipe_file, tmp_path, capsys):
    assert main(["preprocess", str(recipe_file)]) == 0
    first = capsys.readouterr().out
    assert "tokenized in" in first and "4 train" in first
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
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
