"""The SFT jobs the benchmark trains with each tool: the same model, rows and settings for both.

- `full_job`: issue 6's job — SmolLM2-135M-Instruct (the quickstart GGUF), LoRA r=8 on all linear
  layers, the first 64 records of alpaca_en_demo.json as prompt -> completion, max_length 512,
  micro-batch 4 x accumulation 4, one epoch, learning rate 2e-4, bf16 where the CPU has it.
- `quick_job`: the same shape on a small Llama built in code (seconds; no files needed), for the
  CI regression guard.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    name: str
    model: dict  # the recipe's model section (path, gguf_file)
    rows: list[dict]  # {"prompt": [messages], "completion": [messages]}
    max_length: int = 512
    micro: int = 4
    accum: int = 4
    lr: float = 2e-4
    rank: int = 8
    precision: str = "bf16"  # or fp32
    params: float = 135e6  # for model-FLOPs utilisation
    extra: dict = field(default_factory=dict)


def prompt_completion(instruction: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": instruction}], "completion": [{"role": "assistant", "content": answer}]}


def full_job(data: Path, precision: str, records: int = 64) -> Job:
    from llmft.config import load_raw

    items = json.loads(data.read_text())[:records]
    rows = [prompt_completion(r["instruction"] + (f"\n{r['input']}" if r.get("input") else ""), r["output"]) for r in items]
    return Job("smollm2-135m", load_raw(ROOT / "recipes" / "quickstart.yaml")["model"], rows, precision=precision)


def quick_job(workdir: Path, precision: str) -> Job:
    """A 2-layer Llama (hidden 256, vocabulary 32,768) and 32 conversations of 15-200 tokens: 4 steps
    of micro-batch 4 x accumulation 2."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from tiny import CORPUS, build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = workdir / "quick-model"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32768,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(0)
    words = " ".join(CORPUS).split()
    rows = [
        prompt_completion(" ".join(rng.choices(words, k=rng.randint(4, 30))), " ".join(rng.choices(words, k=rng.randint(8, 100))))
        for _ in range(32)
    ]
    params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return Job("quick (2-layer Llama, hidden 256)", {"path": str(model_dir)}, rows, accum=2, precision=precision, params=params)
