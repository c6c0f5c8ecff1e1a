"""Packing, worked by hand: whole examples per row, positions restart, boundary labels masked."""

from __future__ import annotations

import torch

from llmft.data.collate import PackedCollator
from llmft.data.packing import pack
from llmft.data.tokenize import IGNORE, Example


def ex(start: int, n: int, supervised_from: int = 0) -> Example:
    ids = list(range(start, start + n))
    return Example(ids, [IGNORE] * supervised_from + ids[supervised_from:])


def test_first_fit_decreasing_rows():
    a, b, c, d = ex(10, 5), ex(20, 3), ex(30, 2), ex(40, 6)
    rows = pack([a, b, c, d], max_length=8)
    # decreasing: d(6) -> row0, a(5) -> row1, b(3) -> row1 (5+3=8), c(2) -> row0 (6+2=8)
    assert [r.input_ids for r in rows] == [[30, 31, 40, 41, 42, 43, 44, 45], [10, 11, 12, 13, 14, 20, 21, 22]]
    assert rows[0].position_ids == [0, 1, 0, 1, 2, 3, 4, 5]
    assert rows[1].position_ids == [0, 1, 2, 3, 4, 0, 1, 2]


def test_boundary_labels_are_masked():
    rows = pack([ex(10, 3), ex(20, 3, supervised_from=1)], max_length=8)
    (row,) = rows
    assert row.input_ids == [10, 11, 12, 20, 21, 22]
    # position 0 of each example is never a target: it would be predicted across the boundary
    assert row.labels == [IGNORE, 11, 12, IGNORE, 21, 22]


def test_every_example_is_kept_once():
    examples = [ex(100 * i, 1 + (i * 7) % 9) for i in range(30)]
    rows = pack(examples, max_length=16)
    assert sorted(t for r in rows for t in r.input_ids) == sorted(t for e in examples for t in e.input_ids)
    assert all(len(r.input_ids) <= 16 for r in rows)


def test_packed_collator_has_no_attention_mask_and_pads_as_its_own_block():
    rows = pack([ex(10, 3), ex(20, 2)], max_length=8)
    batch = PackedCollator(pad_id=0)([vars(r) for r in rows])
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 11, 12, IGNORE, 21, IGNORE, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long
