"""Preference stages' throughput and memory: TRL's `DPOTrainer` / `RewardTrainer` / `KTOTrainer` /
`ORPOTrainer` vs llmft on the same pairs, side by side.

    python benchmarks/preference_vs_trl.py              # dpo on issue 14's job (reads ../shared/data), ~20 min on 2 cores
    python benchmarks/preference_vs_trl.py --stage rm   # the same pairs, a reward model (TRL's RewardTrainer)
    python benchmarks/preference_vs_trl.py --stage kto  # each pair as a desirable and an undesirable reply
    python benchmarks/preference_vs_trl.py --stage orpo
    python benchmarks/preference_vs_trl.py --quick      # small model built in code, ~1 min
    python benchmarks/preference_vs_trl.py --only trl,llmft
    python benchmarks/preference_vs_trl.py --long-prompts   # dpo with long shared prompts (below)

The job (issue 14): SmolLM2-135M-Instruct, LoRA r=8 alpha 16 on all linear layers, the first 24 pairs
of dpo_en_demo.json whose chosen and rejected conversations both fit in 1,000 tokens, max_length
1024, micro-batch 2 x accumulation 4, learning rate 5e-6, beta 0.1, linear schedule, one epoch, bf16
where the CPU has it (else fp32 for every tool). Rows, each tool in its own process (peak RSS is its
own), back to back:

- `trl`: TRL's DPOTrainer (rm: RewardTrainer, LoRA with the score head trained in full; kto:
  KTOTrainer on the 48 replies, micro-batches of 2 replies; orpo: TRL's experimental ORPOTrainer) at
  its defaults (gradient checkpointing, dropout disabled), the model loaded as llmft loads it;
- `llmft`: `llmft train` as a recipe runs it (padding-free scoring, each pair's prompt once, fused
  ops; on a CPU dpo, rm and orpo micro-batches a pair per pass, kto's whole);
- `llmft-whole`: llmft with `training.max_tokens_per_forward: null` (dpo, rm and orpo: each
  micro-batch of pairs in one pass, where `auto` on a CPU runs it a pair at a time);
- `llmft-padded`: llmft with `data.padding_free: false` and `training.fused_ops: false` (what llmft
  did before the fast path: TRL's trainer on llmft's pairs).

`--long-prompts`: the same pairs' questions asked at the end of a conversation: each pair's prompt
is preceded by the earlier pairs' exchanges (question and chosen reply, nearest first) as long as both
sides fit in 1,000 tokens, and a pair is taken when its prompt is at least 60% of its longer side —
where a pair's prompt computed once (instead of once per side) shows.

Each row: the Trainer's train_runtime, pairs/s (kto: replies/s), the non-pad tokens/s both sides
carry, peak RSS and the logged losses (the same batches in the same order: the losses must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import ROOT  # noqa: E402
from sft_vs_trl import versions  # noqa: E402

TOOLS = ("trl", "llmft", "llmft-whole", "llmft-padded")
VARIANTS = {
    "llmft": {},
    "llmft-whole": {"training": {"max_tokens_per_forward": None}},
    "llmft-padded": {"data": {"padding_free": False}, "training": {"fused_ops": False}},
}


@dataclass
class PairJob:
    name: str
    model: dict  # the recipe's model section
    rows: list[dict]  # {"prompt": [messages], "chosen": [message], "rejected": [message]}
    max_length: int = 1024
    micro: int = 2
    accum: int = 4
    lr: float = 5e-6
    beta: float = 0.1
    rank: int = 8
    stage: str = "dpo"  # or rm, kto, orpo
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)


ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


def _messages(turns) -> list[dict]:
    turns = turns if isinstance(turns, list) else [turns]
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]


def full_job(data: Path, precision: str, pairs: int = 24, fit: int = 1000) -> PairJob:
    from llmft.config import load_raw
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_tokenizer

    model = load_raw(ROOT / "recipes" / "quickstart.yaml")["model"]
    tokenizer = load_tokenizer(ModelConfig(**model))
    rows = []
    for record in json.loads(data.read_text()):
        row = {
            "prompt": _messages(record["conversations"]),
            "chosen": _messages(record["chosen"]),
            "rejected": _messages(record["rejected"]),
        }
        sides = [
            len(tokenizer.apply_chat_template(row["prompt"] + row[s], tokenize=True)["input_ids"]) for s in ("chosen", "rejected")
        ]
        if max(sides) <= fit:
            rows.append(row)
        if len(rows) == pairs:
            break
    return PairJob("smollm2-135m", model, rows, precision=precision)


def long_prompt_job(data: Path, precision: str, pairs: int = 24, fit: int = 1000, prompt_share: float = 0.6) -> PairJob:
    """Pairs whose prompt is a long conversation: the earlier pairs' exchanges, nearest first, before
    the pair's own question, as many as let both sides fit in `fit` tokens (module docstring)."""
    from llmft.config import load_raw
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_tokenizer

    model = load_raw(ROOT / "recipes" / "quickstart.yaml")["model"]
    tokenizer = load_tokenizer(ModelConfig(**model))

    def length(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])

    records = json.loads(data.read_text())
    exchanges = [_messages(r["conversations"]) + _messages(r["chosen"])[:1] for r in records]
    rows = []
    for i, record in enumerate(records):
        question, chosen, rejected = (
            _messages(record["conversations"]),
            _messages(record["chosen"]),
            _messages(record["rejected"]),
        )
        history: list[dict] = []
        for earlier in reversed(exchanges[:i]):
            longer = earlier + history + question
            if max(length(longer + chosen), length(longer + rejected)) > fit:
                break
            history = earlier + history
        prompt = history + question
        longest = max(length(prompt + chosen), length(prompt + rejected))
        if longest <= fit and length(prompt) >= prompt_share * longest:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if len(rows) == pairs:
            break
    return PairJob("smollm2-135m-long-prompts", model, rows, precision=precision)


def quick_job(workdir: Path, precision: str) -> PairJob:
    """A 2-layer Llama (hidden 256) and 16 pairs of 20-200 tokens: 2 steps of 2 x 4."""
    sys.path.insert(0, str(ROOT / "tests"))
    from jobs import quick_job as sft_quick
    from tiny import CORPUS

    job = sft_quick(workdir, precision)
    rng = random.Random(0)
    words = " ".join(CORPUS).split()

    def text(lo, hi):
        return " ".join(rng.choices(words, k=rng.randint(lo, hi)))

    rows = [
        {
            "prompt": [{"role": "user", "content": text(4, 60)}],
            "chosen": [{"role": "assistant", "content": text(8, 120)}],
            "rejected": [{"role": "assistant", "content": text(8, 120)}],
        }
        for _ in range(16)
    ]
    return PairJob(job.name, job.model, rows, max_length=512, lr=1e-4, precision=precision)


STAGES = ("dpo", "rm", "kto", "orpo")
#: Stages whose micro-batches run in passes of whole pairs (`training.max_tokens_per_forward`).
PASSES = ("dpo", "rm", "orpo")


def kto_rows(rows: list[dict]) -> list[dict]:
    """Each pair as two unpaired replies: the chosen one desirable, the rejected one not."""
    return [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"} for r in rows for side in ("chosen", "rejected")
    ]


def make_job(args: argparse.Namespace, workdir: Path) -> PairJob:
    from llmft.modeling.precision import cpu_has_fast_bf16

    precision = args.precision or ("bf16" if cpu_has_fast_bf16() else "fp32")
    if args.quick:
        job = quick_job(workdir, precision)
    elif args.long_prompts:
        job = long_prompt_job(Path(args.data), precision)
    else:
        job = full_job(Path(args.data), precision)
    job.stage = args.stage
    return job


def run_trl(job: PairJob, out: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer

    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model, load_tokenizer

    base = ModelConfig(**job.model)
    tokenizer = load_tokenizer(base)
    lora = {"r": job.rank, "lora_alpha": 2 * job.rank, "target_modules": "all-linear"}
    if job.stage == "rm":
        model = load_model(base, torch.float32, task="reward")
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**_trl_args(job, out)),
            train_dataset=datasets.Dataset.from_list(
                [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in job.rows]
            ),
            processing_class=tokenizer,
            peft_config=LoraConfig(**lora, task_type="SEQ_CLS", modules_to_save=["score"]),
        )
        data = trainer.train_dataset
        tokens = sum(len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"]))
        metrics = trainer.train().metrics
        return {"train_s": metrics["train_runtime"], "tokens": tokens, "losses": _losses(trainer.state.log_history)}
    model = load_model(base, torch.float32)
    if job.stage == "kto":
        trainer_cls, config, rows = KTOTrainer, KTOConfig(beta=job.beta, **_trl_args(job, out)), kto_rows(job.rows)
    elif job.stage == "orpo":
        from llmft.builders.orpo import orpo_classes

        config_cls, trainer_cls = orpo_classes()
        config, rows = config_cls(beta=job.beta, **_trl_args(job, out)), job.rows
    else:
        trainer_cls, config, rows = DPOTrainer, DPOConfig(beta=job.beta, **_trl_args(job, out)), job.rows
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(**lora, task_type="CAUSAL_LM"),
    )
    tokens = chat_tokens(job) if job.stage in ("kto", "orpo") else _trl_tokens(job.stage, trainer.train_dataset)
    metrics = trainer.train().metrics
    return {"train_s": metrics["train_runtime"], "tokens": tokens, "losses": _losses(trainer.state.log_history)}


def _trl_tokens(stage: str, data) -> int:
    """Non-pad tokens of TRL's dpo rows (both sides of each pair)."""
    return sum(len(p) + len(c) + len(p) + len(r) for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))


def chat_tokens(job: PairJob) -> int:
    """kto, orpo (whose TRL trainers tokenize for both tools): the tokens of each rendered
    conversation the stage trains on (kto: each reply with its prompt; orpo: both sides of a pair)."""
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(**job.model))
    sides = ("completion",) if job.stage == "kto" else ("chosen", "rejected")
    rows = kto_rows(job.rows) if job.stage == "kto" else job.rows
    return sum(
        len(tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=True)["input_ids"]) for r in rows for side in sides
    )


def _trl_args(job: PairJob, out: Path) -> dict:
    """The TrainingArguments both TRL trainers take for the job."""
    return dict(
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
        use_cpu=True,
        disable_tqdm=True,
    )


def llmft_recipe(job: PairJob, out: Path, variant: str) -> dict:
    jsonl = out.parent / f"{out.name}-pairs.jsonl"
    rows = kto_rows(job.rows) if job.stage == "kto" else job.rows
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "model": job.model,
        "stage": {"name": "rm"} if job.stage == "rm" else {"name": job.stage, "beta": job.beta},
        "data": {"train": str(jsonl), "max_length": job.max_length, "cache": False},
        "finetune": {"mode": "lora", "rank": job.rank, "alpha": 2 * job.rank, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {
            "epochs": 1,
            "micro_batch_size": job.micro,
            "gradient_accumulation_steps": job.accum,
            "learning_rate": job.lr,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "precision": job.precision,
            **job.extra,
        },
        "output": {"dir": str(out)},
    }
    for section, values in VARIANTS[variant].items():
        raw[section].update(values)
    return raw


def run_llmft(job: PairJob, out: Path, variant: str) -> dict:
    from llmft.config import validate_recipe
    from llmft.data.dataset import prepare_for
    from llmft.modeling.load import prepare_tokenizer
    from llmft.run import train

    recipe = validate_recipe(llmft_recipe(job, out, variant))
    if job.stage in ("dpo", "rm"):
        prepared = prepare_for(recipe, prepare_tokenizer(recipe))
        tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in prepared.train)
    else:  # TRL's trainer tokenizes
        tokens = chat_tokens(job)
    result = train(recipe)
    return {"train_s": result.metrics["train_runtime"], "tokens": tokens, "losses": _losses(result.log_history)}


def _losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def child(tool: str, args: argparse.Namespace, workdir: Path) -> None:
    import logging

    if tool != "trl":  # llmft as `llmft train` starts it (tcmalloc where installed, kernel caches capped)
        from llmft.allocator import reexec_with_tcmalloc
        from llmft.config.training import TrainingConfig

        reexec_with_tcmalloc(TrainingConfig())
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("llmft").setLevel(logging.INFO)  # the run log's "path: ..." line
    job = make_job(args, workdir)
    out = workdir / tool
    started = time.perf_counter()
    result = run_trl(job, out) if tool == "trl" else run_llmft(job, out, tool)
    result.update(
        wall_s=time.perf_counter() - started,
        pairs=len(job.rows) * (2 if job.stage == "kto" else 1),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        precision=job.precision,
        stage=job.stage,
        job=job.name,
    )
    (workdir / f"{tool}.json").write_text(json.dumps(result))


def spawn(tool: str, args: argparse.Namespace, workdir: Path) -> dict:
    argv = [sys.executable, __file__, f"--child={tool}", "--workdir", str(workdir), "--data", args.data, "--stage", args.stage]
    argv += ["--precision", args.precision] if args.precision else []
    argv += ["--long-prompts"] if args.long_prompts else []
    subprocess.run(
        argv + (["--quick"] if args.quick else []),
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"},
    )
    return json.loads((workdir / f"{tool}.json").read_text())


def table(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    unit = "replies" if first["stage"] == "kto" else "pairs"
    lines = [
        versions(),
        f"{first['stage']} ({first.get('job', '')}): {first['pairs']} {unit}, {first['precision']}",
        f"{'tool':<13} {'train s':>8} {unit + '/s':>8} {'tok/s':>7} {'RSS MB':>7}  losses",
    ]
    for tool, r in results.items():
        losses = " ".join(f"{x:.4f}" for x in r["losses"])
        lines.append(
            f"{tool:<13} {r['train_s']:>8.1f} {r['pairs'] / r['train_s']:>8.3f} {r['tokens'] / r['train_s']:>7.1f} "
            f"{r['peak_rss_mb']:>7.0f}  {losses}"
        )
    if "trl" in results:
        base = results["trl"]
        for tool, r in results.items():
            if tool != "trl":
                lines.append(
                    f"{tool} / trl: {unit}/s x{base['train_s'] / r['train_s']:.2f}, peak RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "preference" / "dpo_en_demo.json"))
    parser.add_argument("--only", help=f"comma-separated tools among {', '.join(TOOLS)} (default: all)")
    parser.add_argument("--long-prompts", action="store_true", help="pairs with long shared prompts (module docstring)")
    parser.add_argument("--stage", choices=STAGES, default="dpo")
    parser.add_argument("--quick", action="store_true", help="small model built in code")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 where the CPU has it, else fp32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args, Path(args.workdir))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix=f"llmft-{args.stage}-bench-"))
    tools = args.only.split(",") if args.only else [t for t in TOOLS if args.stage in PASSES or t != "llmft-whole"]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"--only: unknown tool(s) {', '.join(unknown)}; choose among {', '.join(TOOLS)}")
    print(table({tool: spawn(tool, args, workdir) for tool in tools}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
