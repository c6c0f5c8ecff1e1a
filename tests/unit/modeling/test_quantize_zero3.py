"""QLoRA under ZeRO-3: the 4-bit weights are stored in the compute dtype, so every parameter
ZeRO-3 partitions has one dtype; 8-bit weights are refused."""

from __future__ import annotations

import pytest
import torch

from llmft.config.finetune import QLoraFinetune
from llmft.errors import UserError
from llmft.modeling.precision import quantized_compute_dtype
from llmft.modeling.quantize import bnb_config

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_zero3_stores_4bit_weights_in_the_compute_dtype(precision, dtype):
    qlora = QLoraFinetune(mode="qlora")
    cfg = bnb_config(qlora, quantized_compute_dtype(qlora, precision), zero3=True)
    assert cfg.bnb_4bit_quant_storage == dtype == cfg.bnb_4bit_compute_dtype


def test_without_zero3_the_storage_stays_bitsandbytes_default():
    assert bnb_config(QLoraFinetune(mode="qlora"), torch.float32).bnb_4bit_quant_storage == torch.uint8


def test_8bit_under_a_users_zero3_json_is_refused():
    with pytest.raises(UserError, match="finetune.bits: 8-bit bitsandbytes weights cannot be sharded by ZeRO-3"):
        bnb_config(QLoraFinetune(mode="qlora", bits=8), torch.float32, zero3=True)
