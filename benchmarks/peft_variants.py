"""Each finetune variant on the tiny test model (tests/tiny.py): trainable parameters, and the losses of
one short sft run (the same data, seed, steps and learning rate for all), so their effect and cost can
be compared side by side.

    .venv/bin/python benchmarks/peft_variants.py [--steps 20] [--lr 5e-3]

Prints one row per variant: trainable parameters (as the run log counts them), the first and last
logged loss, and the whole loss curve. The model is random and tiny (2 layers, hidden 32, ~48k
parameters), so the losses show that each variant trains and how fast it moves on one small dataset,
not how the variants rank on a real model. LoRA runs are rank 4, alpha 8, on every linear layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

VARIANTS: dict[str, dict] = {
    "full": {"mode": "full"},
    "freeze: last layer + head": {"mode": "freeze", "trainable_layers": 1, "trainable_modules": ["lm_head"]},
    "lora": {},
    "lora rslora": {"use_rslora": True},
    "lora dora": {"use_dora": True},
    "lora gaussian": {"init": "gaussian"},
    "lora pissa": {"init": "pissa"},
    "lora olora": {"init": "olora"},
    "lora+ (ratio 16)": {"lora_plus_ratio": 16},
}


def run(name: str, finetune: dict, model_dir: Path, data: Path, out: Path, steps: int, lr: float) -> dict:
    from conftest import make_recipe

    from llmft.config import validate_recipe
    from llmft.modeling.adapters import count_parameters
    from llmft.run import train

    mode = finetune.get("mode", "lora")
    knobs = {k: v for k, v in finetune.items() if k != "mode"}
    raw = make_recipe(
        model_dir,
        data,
        out,
        mode=mode,
        finetune=knobs,
        training={"max_steps": steps, "learning_rate": lr, "micro_batch_size": 4, "scheduler": "constant"},
    )
    result = train(validate_recipe(raw))
    trainable, total = count_parameters(result.model)
    losses = [round(h["loss"], 4) for h in result.log_history if "loss" in h]
    return {"variant": name, "trainable": trainable, "total": total, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from conftest import CONVERSATIONS, write_jsonl
    from tiny import save_tiny_model

    torch.set_num_threads(1)  # the tiny model's matmuls are microseconds; threads only add handoffs
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = save_tiny_model(tmp_path / "model")
        data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS] * 4)
        rows = [
            run(n, ft, model_dir, data, tmp_path / f"run{i}", args.steps, args.lr) for i, (n, ft) in enumerate(VARIANTS.items())
        ]
    print(f"{'variant':<28} {'trainable':>10} {'of':>8}  {'first':>7} {'last':>7}")
    for r in rows:
        print(f"{r['variant']:<28} {r['trainable']:>10,} {r['total']:>8,}  {r['losses'][0]:>7.4f} {r['losses'][-1]:>7.4f}")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
