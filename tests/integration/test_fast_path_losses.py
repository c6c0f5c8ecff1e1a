"""Per-token losses at learning rate 0 (fp32): llmft's default path — padding-free micro-batches,
per-example attention, fused ops, chunked loss — against TRL's tokenization run through the plain
model one row at a time (the benchmark's check, on the tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import CONVERSATIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from jobs import Job, prompt_completion  # noqa: E402
from loss_check import compare, llmft_losses, reference_losses  # noqa: E402


def test_every_common_token_loss_agrees(tiny_model_dir, tmp_path):
    rows = [prompt_completion(c[-2]["content"], c[-1]["content"]) for c in CONVERSATIONS] * 2
    job = Job("tiny", {"path": str(tiny_model_dir)}, rows, max_length=128, micro=3, precision="fp32")
    result = compare(reference_losses(job), llmft_losses(job, tmp_path / "run"))
    assert result["unmatched_rows"] == 0
    assert result["tokens"] >= 8 * 3
    assert result["max_abs_diff"] < 1e-4
    assert result["only_llmft"] == 0  # llmft trains nothing TRL does not
    assert result["only_reference"] == len(rows)  # TRL's extra: the newline after each end-of-turn
