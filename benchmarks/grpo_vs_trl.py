"""GRPO time per step: TRL's `GRPOTrainer` vs llmft on the same prompts, side by side.

    python benchmarks/grpo_vs_trl.py            # ~15 min on 2 cores
    python benchmarks/grpo_vs_trl.py --steps 2

The job: SmolLM2-135M-Instruct, LoRA r=16 alpha 32 on all linear layers, the first prompts of
examples/data/arithmetic_train.jsonl (the GRPO demo's task), 2 prompts x 4 completions of at most
32 tokens per step at temperature 0.7, loss dr_grpo, beta 0 (no reference), learning rate 1e-4,
fp32 (bf16 where the CPU has it). Both tools reward the same thing, the right number
(`llmft.rewards`' numeric accuracy). Rows, each tool in its own process, back to back:
`trl` (TRL's defaults otherwise: gradient checkpointing), `llmft` (as a recipe runs it). Each row:
seconds per step (the Trainer's train_runtime / steps), completions/s, peak RSS and the losses;
sampling differs between the tools, so completion lengths (and the losses) do, and the table gives
the mean completion length each tool generated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import ROOT  # noqa: E402
from sft_vs_trl import versions  # noqa: E402

DATA = ROOT / "examples" / "data" / "arithmetic_train.jsonl"
SETTINGS = dict(prompts_per_step=2, generations=4, completion=32, temperature=0.7, lr=1e-4, rank=16)


def rows(steps: int) -> list[dict]:
    lines = DATA.read_text().splitlines()[: steps * SETTINGS["prompts_per_step"]]
    return [json.loads(line) for line in lines]


def precision() -> str:
    from llmft.modeling.precision import cpu_has_fast_bf16

    return "bf16" if cpu_has_fast_bf16() else "fp32"


def accuracy(completions: list, answer: list, **_: object) -> list[float]:
    """1.0 where the completion's last number equals the record's answer (llmft's numeric match)."""
    from llmft.rewards.answers import accuracy as score

    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [score(t, a, "numeric") for t, a in zip(texts, answer)]


def run_trl(steps: int, out: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from llmft.config import load_raw
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model, load_tokenizer

    base = ModelConfig(**load_raw(ROOT / "recipes" / "quickstart.yaml")["model"])
    tokenizer = load_tokenizer(base)
    s = SETTINGS
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=s["prompts_per_step"] * s["generations"],
        num_generations=s["generations"],
        max_completion_length=s["completion"],
        temperature=s["temperature"],
        loss_type="dr_grpo",
        beta=0.0,
        learning_rate=s["lr"],
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=precision() == "bf16",
        disable_tqdm=True,
    )
    data = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in rows(steps)]
    trainer = GRPOTrainer(
        model=load_model(base, torch.float32),
        reward_funcs=accuracy,
        args=config,
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=s["rank"], lora_alpha=2 * s["rank"], target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    metrics = trainer.train().metrics
    return _result(metrics, trainer.state.log_history)


def run_llmft(steps: int, out: Path) -> dict:
    from llmft.config import load_raw, validate_recipe
    from llmft.run import train

    s = SETTINGS
    data = out.parent / "llmft-prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(steps)))
    recipe = validate_recipe(
        {
            "model": load_raw(ROOT / "recipes" / "quickstart.yaml")["model"],
            "data": {"train": str(data), "max_length": 256, "cache": False},
            "finetune": {
                "mode": "lora",
                "rank": s["rank"],
                "alpha": 2 * s["rank"],
                "dropout": 0.0,
                "target_modules": "all-linear",
            },
            "stage": {
                "name": "grpo",
                "num_generations": s["generations"],
                "max_completion_length": s["completion"],
                "temperature": s["temperature"],
                "loss_type": "dr_grpo",
                "beta": 0.0,
                "rewards": [{"type": "accuracy", "match": "numeric"}],
            },
            "training": {
                "max_steps": steps,
                "micro_batch_size": s["prompts_per_step"] * s["generations"],
                "learning_rate": s["lr"],
                "scheduler": "linear",
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "save_strategy": "no",
                "report_to": [],
                "precision": precision(),
            },
            "output": {"dir": str(out)},
        }
    )
    result = train(recipe)
    return _result(result.metrics, result.log_history)


def _result(metrics: dict, history: list[dict]) -> dict:
    logged = [h for h in history if "loss" in h]
    lengths = [h["completions/mean_length"] for h in logged if "completions/mean_length" in h]
    return {
        "train_s": metrics["train_runtime"],
        "steps": len(logged),
        "losses": [h["loss"] for h in logged],
        "mean_length": sum(lengths) / len(lengths) if lengths else float("nan"),
    }


def child(tool: str, steps: int, workdir: Path) -> None:
    import logging

    if tool == "llmft":
        from llmft.allocator import reexec_with_tcmalloc
        from llmft.config.training import TrainingConfig

        reexec_with_tcmalloc(TrainingConfig())
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("llmft").setLevel(logging.INFO)
    result = run_trl(steps, workdir / tool) if tool == "trl" else run_llmft(steps, workdir / tool)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (workdir / f"{tool}.json").write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", choices=("trl", "llmft"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, Path(args.workdir))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="llmft-grpo-bench-"))
    results = {}
    for tool in [args.only] if args.only else ["trl", "llmft"]:
        argv = [sys.executable, __file__, f"--child={tool}", "--workdir", str(workdir), "--steps", str(args.steps)]
        env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
        subprocess.run(argv, check=True, env=env)
        results[tool] = json.loads((workdir / f"{tool}.json").read_text())
    completions = SETTINGS["prompts_per_step"] * SETTINGS["generations"]
    print(versions())
    print(f"{precision()}, {completions} completions of <= {SETTINGS['completion']} tokens per step")
    print(f"{'tool':<6} {'s/step':>7} {'compl/s':>8} {'mean len':>8} {'RSS MB':>7}  losses")
    for tool, r in results.items():
        per_step = r["train_s"] / r["steps"]
        losses = " ".join(f"{x:.4f}" for x in r["losses"])
        print(
            f"{tool:<6} {per_step:>7.1f} {completions / per_step:>8.2f} {r['mean_length']:>8.1f} {r['peak_rss_mb']:>7.0f}  {losses}"
        )
    if len(results) == 2:
        t, l = results["trl"], results["llmft"]
        print(f"llmft / trl: time per step x{(l['train_s'] / l['steps']) / (t['train_s'] / t['steps']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
