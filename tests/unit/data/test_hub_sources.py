"""`hub:ID[:config][@split]` entries read through `datasets.load_dataset`; offline (the test run is:
conftest sets HF_HUB_OFFLINE) from the datasets cache, which each test fills the way a download from
the hub leaves it: `<cache>/<org>___<name>/<config>/<version>/<revision>/<name>-<split>.arrow`."""

from __future__ import annotations

import pytest
from conftest import cache_hub_dataset, make_recipe

from llmft.config import validate_recipe
from llmft.config.data import DatasetSpec
from llmft.data.dataset import read_split
from llmft.data.sources import read_source
from llmft.errors import UserError
from llmft.preflight import machine_problems, preflight

ROWS = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(6)]


def test_a_cached_hub_dataset_reads_offline_with_rows_named(hub_cache):
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS, "validation": ROWS[:2]})
    records = read_source(DatasetSpec(path="hub:org/ds@validation"), "data.eval.0")
    assert [r.value for r in records] == ROWS[:2]
    assert [r.where for r in records] == ["hub:org/ds@validation[0]", "hub:org/ds@validation[1]"]
    assert len(read_source(DatasetSpec(path="hub:org/ds"), "data.train.0")) == 6  # split default: train


def test_a_hub_config_is_chosen_and_columns_and_bad_records_apply(hub_cache):
    renamed = [{"q": r["instruction"], "a": r["output"]} for r in ROWS] + [{"q": "no answer column"}]
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    cache_hub_dataset(hub_cache, "org/ds", {"train": renamed}, config="subset")
    spec = DatasetSpec(path="hub:org/ds:subset@train", columns={"instruction": "q", "output": "a"})
    from llmft.config.data import DataConfig

    data = DataConfig(train=[spec.model_dump()], on_bad_record="skip")
    items, reports = read_split("sft", data.train, "train", data, seed=0)
    assert len(items) == 6 and reports[0].format == "alpaca" and reports[0].detected
    assert reports[0].skipped == 1 and reports[0].skipped_examples[0].startswith("hub:org/ds:subset@train[6]")
    with pytest.raises(UserError, match=r"hub:org/ds:subset@train\[6\]"):
        read_split("sft", data.train, "train", data.model_copy(update={"on_bad_record": "error"}), seed=0)


def test_a_missing_split_names_the_entry(hub_cache):
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    with pytest.raises(UserError, match=r"data.train.0.path: cannot load hub:org/ds@test: .*split"):
        read_source(DatasetSpec(path="hub:org/ds@test"), "data.train.0")


def test_a_malformed_hub_reference_is_refused():
    with pytest.raises(UserError, match="data.train.0.path: .*hub:ID\\[:config\\]\\[@split\\]"):
        read_source(DatasetSpec(path="hub:org/ds@a@b"), "data.train.0")


def test_preflight_refuses_an_uncached_hub_dataset_before_the_model_loads(hub_cache, tiny_model_dir, tmp_path):
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    cached = validate_recipe(make_recipe(tiny_model_dir, "hub:org/ds", tmp_path / "out"))
    assert not [p for p in machine_problems(cached) if p[0].startswith("data.")]
    raw = make_recipe(tiny_model_dir, "hub:org/ds", tmp_path / "out", data={"eval": ["hub:org/missing@train", "hub:org/ds@nope"]})
    with pytest.raises(UserError) as caught:
        preflight(validate_recipe(raw))
    text = str(caught.value)
    assert "data.eval.0.path: hub:org/missing@train: not in the datasets cache" in text
    assert "data.eval.1.path: hub:org/ds@nope: the cached copy has no split 'nope' (it has train)" in text
    assert "download it once where the hub can be reached" in text


def test_the_tokenized_cache_key_follows_the_hub_copy(hub_cache, tokenizer):
    from llmft.config.data import DataConfig
    from llmft.data.cache import fingerprint

    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    data = DataConfig(train="hub:org/ds")
    first = fingerprint("sft", data, tokenizer, 0)
    assert fingerprint("sft", data, tokenizer, 0) == first
    import shutil

    shutil.rmtree(hub_cache / "org___ds")
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS[:3]})
    assert fingerprint("sft", data, tokenizer, 0) != first


def test_online_an_unreachable_hub_is_a_problem_unless_the_copy_is_cached(hub_cache, monkeypatch):
    import datasets

    from llmft.data.hub import hub_problem

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False, raising=False)
    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    down = lambda: "connection refused"  # noqa: E731
    assert hub_problem("hub:org/ds", "data.train.0.path", down) is None  # datasets falls back to the cache
    problem = hub_problem("hub:org/other", "data.train.0.path", down)
    assert problem.startswith("cannot reach the Hugging Face Hub (connection refused) to download hub:org/other@train")
    assert hub_problem("hub:org/other", "data.train.0.path", lambda: None) is None


def test_a_cached_hub_dataset_streams(hub_cache):
    from llmft.data.sources import iter_source

    cache_hub_dataset(hub_cache, "org/ds", {"train": ROWS})
    spec = DatasetSpec(path="hub:org/ds@train", columns={"prompt": "instruction"})
    records = list(iter_source(spec, "data.train.0"))
    assert [r.value["prompt"] for r in records] == [r["instruction"] for r in ROWS]
    assert records[5].where == "hub:org/ds@train[5]"
