"""Train one `jobs.Job` with plain TRL or with llmft and report what the table needs.

Both report the Trainer's own `train_runtime` (the training loop: data loading, forward, backward,
optimizer), the tokens each tool trained on, and the logged losses."""

from __future__ import annotations

import json
import time
from pathlib import Path

from jobs import Job


def completion_tokens(tokenizer, job: Job) -> int:
    """Supervised tokens as prompt -> completion training counts them: the rendered conversation
    minus the rendered prompt, capped at max_length (the same count for both tools)."""
    total = 0
    for r in job.rows:
        whole = len(tokenizer.apply_chat_template(r["prompt"] + r["completion"])["input_ids"])
        prompt = len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"])
        total += max(0, min(whole, job.max_length) - prompt)
    return total


def run_trl(job: Job, out: Path, packing: bool = False) -> dict:
    """TRL's SFTTrainer at its defaults (gradient checkpointing, autocast), the model loaded as llmft loads it."""
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model, load_tokenizer

    started = time.perf_counter()
    base = ModelConfig(**job.model)
    tokenizer = load_tokenizer(base)
    model = load_model(base, torch.float32)
    config = SFTConfig(
        output_dir=str(out),
        max_length=job.max_length,
        per_device_train_batch_size=job.micro,
        gradient_accumulation_steps=job.accum,
        num_train_epochs=1,
        learning_rate=job.lr,
        bf16=job.precision == "bf16",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        packing=packing,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(job.rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=job.rank, lora_alpha=2 * job.rank, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    supervised = completion_tokens(tokenizer, job)
    first = time.perf_counter() - started
    metrics = trainer.train().metrics
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_s": metrics["train_runtime"],
        "first_step_s": first,
        "tokens": tokens,
        "supervised": supervised,
        "losses": losses,
    }


def llmft_recipe(job: Job, out: Path) -> dict:
    jsonl = out.parent / f"{out.name}-data.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n" for r in job.rows))
    return {
        "model": job.model,
        "stage": {"name": "sft"},
        "data": {"train": str(jsonl), "max_length": job.max_length, "cache": False},
        "finetune": {"mode": "lora", "rank": job.rank, "alpha": 2 * job.rank, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {
            "epochs": 1,
            "micro_batch_size": job.micro,
            "gradient_accumulation_steps": job.accum,
            "learning_rate": job.lr,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "precision": job.precision,
            **job.extra,
        },
        "output": {"dir": str(out)},
    }


#: llmft with one fast-path part switched off at a time (`--ablate`), and all of them; `+passes` switches
#: on the one part `auto` leaves off on this job (micro-batches in passes of <= 512 tokens).
VARIANTS = {
    "llmft": {},
    "-chunked_loss": {"training": {"chunked_loss": False}},
    "-padding_free": {"data": {"padding_free": False}},
    "-fused_ops": {"training": {"fused_ops": False}},
    "+passes": {"training": {"max_tokens_per_forward": 512}},  # off by default where memory allows
    "-tcmalloc": {"training": {"allocator": "system"}},
    "-all": {
        "training": {"chunked_loss": False, "fused_ops": False, "max_tokens_per_forward": None},
        "data": {"padding_free": False},
    },
}


def run_llmft(job: Job, out: Path, variant: str = "llmft") -> dict:
    """llmft's defaults (the recipe names none of the fast-path switches), or a VARIANTS entry."""
    from llmft.config import validate_recipe
    from llmft.config.data import DataConfig
    from llmft.data.dataset import prepare_data
    from llmft.modeling.load import prepare_tokenizer
    from llmft.run import train

    raw = llmft_recipe(job, out)
    for section, values in VARIANTS[variant].items():
        raw[section].update(values)
    recipe = validate_recipe(raw)
    # the benchmark's own count, before the clock starts and before training (after it, a second
    # tokenizer would add to the peak; the GGUF tokenizer alone takes ~5 s to load)
    report = prepare_data("sft", DataConfig(**recipe.data.model_dump()), prepare_tokenizer(recipe), recipe.training.seed).reports[
        "train"
    ]
    started = time.perf_counter()
    result = train(recipe)
    wall = time.perf_counter() - started
    train_s = result.metrics["train_runtime"]
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    return {
        "train_s": train_s,
        "first_step_s": wall - train_s,
        "tokens": report.tokens,
        "supervised": report.supervised_tokens,
        "losses": losses,
    }
