"""SFT throughput and memory: plain TRL `SFTTrainer` vs llmft on the same job, side by side.

Job (issue 6): SmolLM2-135M-Instruct (the quickstart GGUF), LoRA r=8 on all linear layers, the
first 64 records of alpaca_en_demo.json as prompt -> completion, max_length 512, micro-batch 4 x
accumulation 4, one epoch, learning rate 2e-4, bf16 where the tool uses it.

Each run is a separate process (so peak RSS is the run's own), timed from process start. Prints
one table: wall time of training, time to first step, non-pad and supervised tokens/s, peak RSS,
model-FLOPs utilisation against a bf16 matmul peak measured here, and the losses.

    python benchmarks/sft_vs_trl.py [--data ../shared/data/sft/alpaca_en_demo.json] [--only trl|llmft|trl-packed]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS, MAX_LENGTH, MICRO, ACCUM, LR, RANK = 64, 512, 4, 4, 2e-4, 8


def matmul_peak_gflops(dtype: str = "bfloat16", n: int = 1024, repeats: int = 20) -> float:
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def rows(data: Path) -> list[dict]:
    records = json.loads(data.read_text())[:RECORDS]
    out = []
    for r in records:
        prompt = r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")
        out.append({"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": r["output"]}]})
    return out


def completion_tokens(tokenizer, records: list[dict]) -> int:
    """Tokens of the completions (what prompt -> completion training supervises), counted the same
    way for both tools: rendered conversation minus rendered prompt, capped at MAX_LENGTH."""
    total = 0
    for r in records:
        whole = len(tokenizer.apply_chat_template(r["prompt"] + r["completion"])["input_ids"])
        prompt = len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"])
        total += max(0, min(whole, MAX_LENGTH) - prompt)
    return total


def run_trl(data: Path, out: Path, packing: bool) -> dict:
    """TRL at its defaults (gradient checkpointing, bf16 autocast), model loaded as llmft loads it."""
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from llmft.config import load_recipe
    from llmft.modeling.load import load_model, load_tokenizer

    started = time.perf_counter()
    base = load_recipe(ROOT / "recipes" / "quickstart.yaml").model
    tokenizer = load_tokenizer(base)
    model = load_model(base, torch.float32)
    config = SFTConfig(
        output_dir=str(out), max_length=MAX_LENGTH, per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, num_train_epochs=1, learning_rate=LR, bf16=True,
        logging_steps=1, save_strategy="no", report_to="none", packing=packing, use_cpu=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=datasets.Dataset.from_list(rows(data)), processing_class=tokenizer,
        peft_config=LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    supervised = completion_tokens(tokenizer, rows(data))
    first = time.perf_counter() - started
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_s": train_s, "first_step_s": first, "tokens": tokens, "supervised": supervised, "losses": losses}


def run_llmft(data: Path, out: Path) -> dict:
    from llmft.config import load_raw, validate_recipe
    from llmft.run import train

    started = time.perf_counter()
    jsonl = out.parent / "llmft_data.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n" for r in rows(data)))
    recipe = {"model": load_raw(ROOT / "recipes" / "quickstart.yaml")["model"], "stage": {"name": "sft"}}
    recipe["data"] = {"train": str(jsonl), "max_length": MAX_LENGTH, "cache": False}
    recipe["finetune"] = {"mode": "lora", "rank": RANK, "alpha": 2 * RANK, "dropout": 0.0, "target_modules": "all-linear"}
    recipe["training"] = {"epochs": 1, "micro_batch_size": MICRO, "gradient_accumulation_steps": ACCUM,
                          "learning_rate": LR, "logging_steps": 1, "save_strategy": "no", "report_to": [], "precision": "bf16"}
    recipe["output"] = {"dir": str(out)}
    marks: dict[str, float] = {}
    import llmft.callbacks as callbacks
    from transformers import TrainerCallback

    class Mark(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["begin"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            marks["end"] = time.perf_counter()

    original = callbacks.callbacks_for
    callbacks.callbacks_for = lambda *a, **k: [*original(*a, **k), Mark()]
    result = train(validate_recipe(recipe))
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    return {"train_s": marks["end"] - marks["begin"], "first_step_s": marks["begin"] - started,
            "tokens": None, "supervised": None, "losses": losses}


def llmft_token_counts(data: Path, workdir: Path) -> tuple[int, int]:
    from llmft.config.data import DataConfig
    from llmft.config.loader import load_recipe
    from llmft.data.dataset import prepare_data
    from llmft.run import prepare_tokenizer

    jsonl = workdir / "llmft_data.jsonl"
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    tokenizer = prepare_tokenizer(recipe)
    prepared = prepare_data("sft", DataConfig(train=str(jsonl), max_length=MAX_LENGTH, cache=False), tokenizer, 42)
    return prepared.reports["train"].tokens, prepared.reports["train"].supervised_tokens


def child(tool: str, data: Path, workdir: Path) -> None:
    out = workdir / tool
    result = run_llmft(data, out) if tool == "llmft" else run_trl(data, out, packing=tool == "trl-packed")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (workdir / f"{tool}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sft" / "alpaca_en_demo.json"))
    parser.add_argument("--only", choices=("trl", "trl-packed", "llmft"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data), Path(args.workdir))
        return
    workdir = Path(tempfile.mkdtemp(prefix="llmft-bench-"))
    tools = [args.only] if args.only else ["trl", "trl-packed", "llmft"]
    for tool in tools:
        subprocess.run([sys.executable, __file__, "--child", tool, "--data", args.data, "--workdir", str(workdir)], check=True,
                       env={**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    results = {t: json.loads((workdir / f"{t}.json").read_text()) for t in tools}
    if "llmft" in results:
        results["llmft"]["tokens"], results["llmft"]["supervised"] = llmft_token_counts(Path(args.data), workdir)
    peak = matmul_peak_gflops()
    flops_per_token = 6 * 135e6  # model FLOPs per trained token (forward + backward), 135M parameters
    print(f"cores {os.cpu_count()}, bf16 matmul peak measured {peak:.0f} GFLOP/s")
    print(f"{'tool':<11} {'train s':>8} {'1st step s':>10} {'tok/s':>7} {'sup tok/s':>9} {'RSS MB':>7} {'MFU':>6}  losses")
    for tool, r in results.items():
        tps, sps = r["tokens"] / r["train_s"], r["supervised"] / r["train_s"]
        mfu = tps * flops_per_token / (peak * 1e9)
        losses = " ".join(f"{x:.3f}" for x in r["losses"])
        print(f"{tool:<11} {r['train_s']:>8.1f} {r['first_step_s']:>10.1f} {tps:>7.1f} {sps:>9.1f} {r['peak_rss_mb']:>7.0f} {mfu:>6.1%}  {losses}")
    if "trl" in results and "llmft" in results:
        t, l = results["trl"], results["llmft"]
        print(f"llmft / trl: supervised tokens/s x{(l['supervised'] / l['train_s']) / (t['supervised'] / t['train_s']):.2f}, "
              f"peak RSS x{l['peak_rss_mb'] / t['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
