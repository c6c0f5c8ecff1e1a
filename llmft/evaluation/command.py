"""`llmft eval`: its arguments and the command (the measuring is `llmft.evaluation.run`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmft.errors import UserError


def add_eval_command(subparsers: Any) -> None:
    """`llmft eval ...` on the CLI's subparsers."""
    evaluate = subparsers.add_parser(
        "eval",
        help="measure a model on held-out data (loss, generated answers, preference/reward accuracy, win rate)",
        description="Measure a model (run dir, adapter dir, model dir, hub id, or GGUF with --gguf-file) on held-out data "
        "with the chat template it was trained with; --compare puts a second model beside it (e.g. before/after a stage).",
    )
    evaluate.add_argument("model", help="run output dir, adapter dir, model dir or hub id")
    evaluate.add_argument("--compare", help="a second model, measured on the same data with the same settings")
    evaluate.add_argument("--data", help="held-out records: any format llmft reads (conversations, text or preference pairs)")
    evaluate.add_argument("--data-format", default="auto", help="the --data format (default: detected)")
    evaluate.add_argument("--recipe", help="use this recipe's eval split (data.eval or data.eval_split) and its template")
    evaluate.add_argument(
        "--metrics", help="comma-separated: lm, generate, preference, reward, win_rate, verify (default: what the data allows)"
    )
    evaluate.add_argument("--max-samples", type=int, help="measure at most this many records (the first ones)")
    evaluate.add_argument("--max-length", type=int, help="tokens per example (default: the recipe's data.max_length, else 1024)")
    evaluate.add_argument("--max-new-tokens", type=int, default=128, help="longest generated answer")
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; above 0 samples with --seed")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    evaluate.add_argument(
        "--reward",
        action="append",
        help="verify: score answers with this GRPO reward, e.g. accuracy:numeric, "
        "answer_line, or one entry as JSON; repeatable (default with a grpo or ppo --recipe: its stage.rewards)",
    )
    evaluate.add_argument("--reference", help="reference model for implicit rewards and win rate (default: an adapter's base)")
    evaluate.add_argument("--reward-model", help="an rm run's output dir, to judge answers (win_rate)")
    evaluate.add_argument("--template", help="named chat template for a model without one (see docs/data.md)")
    evaluate.add_argument("--gguf-file", help="GGUF file inside MODEL")
    evaluate.add_argument(
        "--out", help="where eval.json and the answers go (default: MODEL/eval for a local dir, else ./llmft-eval)"
    )
    evaluate.add_argument(
        "--harness", help="comma-separated lm-evaluation-harness tasks (needs lm-eval and each task's data on this machine)"
    )
    evaluate.add_argument("--harness-include", help="a directory of lm-eval task YAMLs (e.g. tasks on local data files)")
    evaluate.add_argument("--num-fewshot", type=int, help="--harness: few-shot examples per prompt (default: each task's own)")
    evaluate.add_argument("--harness-chat", action="store_true", help="--harness: render prompts with the model's chat template")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.set_defaults(fn=cmd_eval)


def harness_options(args: argparse.Namespace) -> Any:
    if not args.harness:
        return None
    from llmft.evaluation.harness import HarnessOptions, task_manager

    tasks = tuple(t.strip() for t in args.harness.split(",") if t.strip())
    options = HarnessOptions(tasks, args.harness_include, args.num_fewshot, args.harness_chat, args.max_samples)
    task_manager(options)  # the package and every task name, checked before a model loads
    return options


def cmd_eval(args: argparse.Namespace) -> int:
    from llmft.evaluation import data as eval_data
    from llmft.evaluation.measures import EvalOptions, parse_rewards
    from llmft.evaluation.report import table, write
    from llmft.evaluation.run import evaluate, free, load
    from llmft.modeling.sources import resolve_source

    if args.data and args.recipe:
        raise UserError("eval: give one of --data FILE and --recipe RECIPE (its eval split), not both")
    if not (args.data or args.recipe or args.harness):
        raise UserError("eval: give held-out data (--data FILE, or --recipe RECIPE for its eval split) or --harness TASKS")
    recipe, template = None, args.template
    if args.recipe:
        from llmft.config import load_recipe

        recipe = load_recipe(args.recipe, require_builder=False)
        template = template or recipe.data.template
        data = eval_data.from_recipe(recipe, args.max_samples)
    elif args.data:
        data = eval_data.from_file(args.data, args.data_format, args.max_samples)
    else:
        if args.metrics:
            raise UserError("eval: --metrics measures held-out data: give --data FILE or --recipe RECIPE")
        data = None
    max_length = args.max_length or (recipe.data.max_length if recipe else 1024)
    rewards = parse_rewards(args.reward) if args.reward else tuple(getattr(recipe.stage, "rewards", ()) if recipe else ())
    options = EvalOptions(
        metrics=tuple(args.metrics.split(",")) if args.metrics else None,
        max_length=max_length,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        rewards=rewards,
        allow_python_rewards=bool(recipe and getattr(recipe.stage, "allow_python_rewards", False)),
        harness=harness_options(args),
    )
    reference = resolve_source(args.reference, template=template) if args.reference else None
    results = []
    for model in [args.model, *([args.compare] if args.compare else [])]:
        loaded = load(resolve_source(model, args.gguf_file, template), reference, args.reward_model)
        results.append(evaluate(loaded, data, options))
        free(loaded)
    last = Path(args.compare or args.model).expanduser()
    out = Path(args.out) if args.out else (last / "eval" if last.is_dir() else Path("llmft-eval"))
    written = write(results, out)
    if args.format == "json":
        print(json.dumps({"results": [r.to_dict() for r in results]}, indent=2, ensure_ascii=False))
    else:
        print(table(results))
        print(f"\nwritten: {', '.join(str(p) for p in written)}")
    return 0
