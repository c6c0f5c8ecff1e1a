"""Cutting a micro-batch into passes: at example boundaries, never inside an example, nothing lost."""

from __future__ import annotations

import torch

from llmft.data.collate import FlatCollator, PadCollator
from llmft.fastpath.passes import split_batch


def examples(*lengths: int) -> list[dict]:
    out, token = [], 1
    for n in lengths:
        ids = list(range(token, token + n))
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
        token += n
    return out


def test_flat_row_is_cut_where_examples_start():
    batch = FlatCollator()(examples(3, 5, 2, 4))
    pieces = split_batch(batch, 8)
    assert [p["input_ids"].shape[1] for p in pieces] == [8, 6]  # 3+5 | 2+4
    assert pieces[0]["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert pieces[1]["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3]]
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(torch.cat([p[key] for p in pieces], dim=1), batch[key])


def test_an_example_longer_than_the_budget_stays_whole():
    pieces = split_batch(FlatCollator()(examples(2, 10, 3)), 4)
    assert [p["input_ids"].shape[1] for p in pieces] == [2, 10, 3]
    assert [p["position_ids"][0, 0].item() for p in pieces] == [0, 0, 0]


def test_no_cut_when_the_batch_fits():
    batch = FlatCollator()(examples(3, 5))
    (piece,) = split_batch(batch, 8)
    assert all(torch.equal(piece[key], batch[key]) for key in batch)


def test_padded_rows_are_cut_into_row_groups():
    batch = PadCollator(pad_id=0, pad_to_multiple_of=1)(examples(3, 4, 2))  # 3 rows of width 4
    pieces = split_batch(batch, 8)
    assert [p["input_ids"].shape for p in pieces] == [(2, 4), (1, 4)]
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(torch.cat([p[key] for p in pieces]), batch[key])


def test_split_pairs_keeps_pairs_whole_and_weighs_them():
    from llmft.fastpath.passes import split_pairs

    # 3 pairs: chosen rows 0-2, rejected rows 3-5; real tokens per pair 5+4, 2+3, 6+1
    lengths = [5, 2, 6, 4, 3, 1]
    mask = torch.zeros(6, 8, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    batch = {
        "input_ids": torch.arange(48).view(6, 8),
        "attention_mask": mask,
        "completion_mask": mask,
        "ref_chosen_logps": torch.tensor([1.0, 2.0, 3.0]),
        "ref_rejected_logps": torch.tensor([4.0, 5.0, 6.0]),
    }
    pieces = split_pairs(batch, 14)
    assert [share for _, share in pieces] == [2 / 3, 1 / 3]
    first, second = pieces[0][0], pieces[1][0]
    assert first["input_ids"].tolist() == [list(range(r * 8, r * 8 + 5)) for r in (0, 1, 3, 4)]  # widest row: 5
    assert first["ref_chosen_logps"].tolist() == [1.0, 2.0] and first["ref_rejected_logps"].tolist() == [4.0, 5.0]
    assert second["attention_mask"].tolist() == [[1] * 6, [1] + [0] * 5]
    assert second["ref_rejected_logps"].tolist() == [6.0]
    assert split_pairs(batch, 100) == [(batch, 1.0)]
