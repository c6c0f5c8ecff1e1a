"""PadCollator: right padding to a multiple of 8, never attended to, never supervised."""

from __future__ import annotations

import torch

from llmft.data.collate import PadCollator
from llmft.data.tokenize import IGNORE

PAD = 2  # the tiny tokenizer pads with its EOS, <|im_end|>, so padding and real EOS share an id
EOS = 2


def item(input_ids, labels):
    return {"input_ids": input_ids, "labels": labels}


def test_pads_right_to_a_multiple_of_eight():
    batch = [
        item([11, 12, 13, EOS], [IGNORE, IGNORE, 13, EOS]),
        item(list(range(20, 30)) + [EOS], [IGNORE] * 8 + [28, 29, EOS]),
    ]
    out = PadCollator(pad_id=PAD)(batch)
    assert set(out) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long and t.shape == (2, 16) for t in out.values())
    assert out["input_ids"].tolist() == [
        [11, 12, 13, EOS] + [PAD] * 12,
        list(range(20, 30)) + [EOS] + [PAD] * 5,
    ]
    assert out["attention_mask"].tolist() == [[1] * 4 + [0] * 12, [1] * 11 + [0] * 5]
    assert out["labels"].tolist() == [
        [IGNORE, IGNORE, 13, EOS] + [IGNORE] * 12,
        [IGNORE] * 8 + [28, 29, EOS] + [IGNORE] * 5,
    ]


def test_real_eos_labels_survive_while_padding_with_the_same_id_is_ignored():
    out = PadCollator(pad_id=EOS)([item([5, 6, EOS], [5, 6, EOS]), item([7] * 9, [7] * 9)])
    assert out["labels"][0, 2].item() == EOS
    assert out["attention_mask"][0, 2].item() == 1
    assert (out["input_ids"][0, 3:] == EOS).all()  # padding has the EOS id...
    assert (out["labels"][0, 3:] == IGNORE).all()  # ...but is never a label
    assert (out["attention_mask"][0, 3:] == 0).all()
    assert out["input_ids"].shape == (2, 16)


def test_exact_multiple_is_not_padded_further():
    out = PadCollator(pad_id=0)([item([1] * 8, [1] * 8), item([1] * 3, [1] * 3)])
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum(dim=1).tolist() == [8, 3]


def test_no_multiple():
    out = PadCollator(pad_id=0, pad_to_multiple_of=1)([item([1, 2, 3], [1, 2, 3]), item([4], [IGNORE])])
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["labels"].tolist() == [[1, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
