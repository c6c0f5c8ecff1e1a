"""`data.mix`: concat keeps sources in order; interleave draws by `probability`, seeded with
`training.seed`, counted per source; `mix_stop` decides when it ends."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llmft.config.data import DataConfig
from llmft.data.dataset import read_split


def _sources(tmp_path, sizes):
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"s{n}.jsonl"
        path.write_text("".join(json.dumps({"text": f"source {n} doc {i}"}) + "\n" for i in range(size)))
        paths.append(str(path))
    return paths


def _mixed(data, seed=7):
    items, reports = read_split("pt", data.train, "train", data, seed)
    return [item.text for item in items], reports


def test_interleave_draws_by_probability_and_repeats_with_the_seed(tmp_path):
    a, b, c = _sources(tmp_path, [3000, 3000, 3000])
    data = DataConfig(train=[{"path": a, "probability": 0.6}, {"path": b, "probability": 0.3}, {"path": c}], mix="interleave")
    texts, reports = _mixed(data)
    draws = len(texts)
    shares = [r.mixed / draws for r in reports]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.02)
    assert [sum(t.startswith(f"source {n} ") for t in texts) for n in range(3)] == [r.mixed for r in reports]
    assert "drawn by mix: interleave" in reports[0].line()
    again, _ = _mixed(data)
    assert again == texts  # the same seed, the same sequence
    other, _ = _mixed(data, seed=8)
    assert other != texts


def test_first_exhausted_stops_at_the_first_empty_source_all_exhausted_repeats_it(tmp_path):
    small, big = _sources(tmp_path, [10, 200])
    first = DataConfig(train=[{"path": small, "probability": 0.5}, {"path": big, "probability": 0.5}], mix="interleave")
    texts, reports = _mixed(first)
    assert reports[0].mixed == 10 and reports[1].mixed < 200
    every = first.model_copy(update={"mix_stop": "all_exhausted"})
    texts, reports = _mixed(every)
    assert reports[1].mixed == 200 and reports[0].mixed > 10  # the small one started again meanwhile
    assert len({t for t in texts if t.startswith("source 1 ")}) == 200


def test_concat_keeps_every_record_in_order(tmp_path):
    a, b = _sources(tmp_path, [3, 2])
    texts, reports = _mixed(DataConfig(train=[a, b]))
    assert texts == [f"source 0 doc {i}" for i in range(3)] + [f"source 1 doc {i}" for i in range(2)]
    assert all(r.mixed is None for r in reports)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": [{"path": "a", "probability": 0.5}]}, "probability needs mix: interleave"),
        ({"train": [{"path": "a", "probability": 0.5}, {"path": "b", "probability": 0.6}], "mix": "interleave"}, "sum to 1.1"),
        ({"train": [{"path": "a", "probability": 0.5}, {"path": "b", "probability": 0.2}], "mix": "interleave"}, "sum to 0.7"),
        ({"train": ["a"], "mix_stop": "all_exhausted"}, "mix_stop applies to mix: interleave"),
        ({"train": ["a"], "eval": [{"path": "b", "probability": 0.5}]}, "eval entries are read whole"),
    ],
)
def test_mix_keys_are_checked(data, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig(**data)


def test_unset_probabilities_share_the_rest():
    data = DataConfig(train=[{"path": "a", "probability": 0.5}, "b", "c"], mix="interleave")
    assert data.probabilities == [0.5, 0.25, 0.25]
