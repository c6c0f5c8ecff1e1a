"""Fold a LoRA adapter into its base model and write a standalone model directory.

The merge is checked by the code itself: the merged model's logits must equal the base+adapter
logits on a probe conversation (fp32, max abs difference <= 1e-4) before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmft.config.model import ModelConfig
from llmft.errors import UserError

log = logging.getLogger("llmft")
TOLERANCE = 1e-4
PROBE = [
    {"role": "user", "content": "Explain in one sentence why the sky is blue."},
    {"role": "assistant", "content": "Sunlight scatters off air molecules, and blue light scatters most."},
]


@dataclass
class MergeResult:
    out_dir: Path
    max_abs_diff: float | None  # None when verification was skipped


def probe_ids(tokenizer: Any) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(PROBE, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(" ".join(m["content"] for m in PROBE))["input_ids"]
    return torch.tensor([ids])


def merge_adapter(base: ModelConfig, adapter_dir: str | Path, out_dir: str | Path, verify: bool = True) -> MergeResult:
    from peft import PeftModel

    from llmft.modeling.load import load_model, load_tokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"--adapter: no adapter_config.json in {adapter_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out: {out_dir} is not empty; llmft never writes over existing files")
    import json

    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(base.model_copy(update={"tokenizer": str(adapter_dir)}) if has_tokenizer else base)
    # a reward model's adapter (rm stage) sits on a sequence-classification head, saved with it
    seq_cls = json.loads((adapter_dir / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
    model = load_model(base, torch.float32, vocab_size=len(tokenizer), task="reward" if seq_cls else "causal_lm")
    if seq_cls:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        expected = model(ids).logits if verify else None
        merged = model.merge_and_unload().eval()
        diff = (merged(ids).logits - expected).abs().max().item() if verify else None
    if diff is not None and diff > TOLERANCE:
        raise UserError(
            f"merge check failed: merged logits differ from base+adapter by {diff:.2e} (> {TOLERANCE}); "
            "nothing was written. Is the base model the one the adapter was trained on?"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info(
        "merged %s into %s -> %s%s",
        adapter_dir,
        base.path,
        out_dir,
        f" (max |logit diff| {diff:.1e})" if diff is not None else " (not verified)",
    )
    return MergeResult(out_dir, diff)
