"""Command line: parse arguments, call library functions, print, exit.

Exit codes: 0 ok, 2 user error (recipe, data, paths, machine), 1 internal error or a diverged
(NaN) run, 130 stopped by SIGINT/SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from llmft import __version__
from llmft.errors import TrainingDiverged, TrainingInterrupted, UserError
from llmft.evaluation.command import add_eval_command

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(format="[llmft] %(message)s", level=logging.INFO, stream=sys.stderr, force=True)
    quiet = logging.INFO if verbose else logging.ERROR
    for noisy in (
        "bitsandbytes",
        "DeepSpeed",
        "transformers",
        "peft",
        "accelerate",
        "torch",
        "datasets",
        "lm_eval",  # lm-evaluation-harness (llmft eval --harness)
        "lm-eval",
        "httpx",
        "huggingface_hub",
        "kernels",  # bitsandbytes asks it for CPU kernels on import: its offline notice is not news
        "matplotlib",
        "PIL",
        "gguf",  # GGUFWriter announces every file it writes
    ):
        logging.getLogger(noisy).setLevel(quiet)
    if verbose:
        return
    # DeepSpeed resets its logger's level when imported; a filter survives that
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. the GGUF de-quantization bar
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # peft looks for the base model's config.json to see if the vocabulary changed; a GGUF
    # directory has none, and llmft never resizes without saying so.
    warnings.filterwarnings("ignore", message="Could not find a config file")


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from llmft.allocator import reexec_with_tcmalloc
    from llmft.config import load_recipe
    from llmft.launch.ranks import is_main_process
    from llmft.launch.relaunch import needs_launch
    from llmft.run import train

    recipe = load_recipe(args.recipe, args.overrides)
    reexec_with_tcmalloc(recipe.training)  # training.allocator: once, before anything is loaded
    if needs_launch(recipe, os.environ):  # more than one process or DeepSpeed: via accelerate launch
        return launch_processes(recipe, args)
    result = train(recipe)
    if not is_main_process():
        return EXIT_OK
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    print(f"trained: {result.output_dir}" + (f" (loss {losses[0]:.4f} -> {losses[-1]:.4f})" if losses else ""))
    return EXIT_OK


def launch_processes(recipe, args: argparse.Namespace) -> int:
    """Check what can be checked here (exit 2 before starting anything), then launch."""
    from llmft.launch import relaunch
    from llmft.preflight import preflight
    from llmft.resolve import resolve

    preflight(recipe)
    settings = resolve(recipe)  # the precision and the DeepSpeed JSON, refused here rather than in every process
    launched = relaunch.relaunch(recipe, settings.deepspeed, args.recipe, args.overrides, verbose=args.verbose)
    if launched.signal_name:
        print(
            f"stopped: {launched.signal_name} passed on to the training processes, which checkpoint and stop "
            "(see their messages above); continue with training.resume_from_checkpoint=auto",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if launched.returncode:
        print(
            f"error: the training processes failed (launcher exit code {launched.returncode}); see their messages above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from llmft.config import load_recipe
    from llmft.data.hub import is_hub
    from llmft.data.sources import source_files
    from llmft.modeling.hub import hub_problems
    from llmft.preflight import (
        WOULD_STOP,
        hub_data_problems,
        machine_error,
        machine_problems,
        planned_for,
        this_device,
        this_machine,
    )

    recipe = load_recipe(args.recipe, args.overrides)
    found = machine_problems(recipe, args.device)
    if found:
        footer = ""
        # the hub: this machine's either way
        elsewhere = machine_problems(recipe, "cuda") + hub_problems(recipe.model) + hub_data_problems(recipe)
        if args.device is None and this_device() == "cpu" and any(p not in elsewhere for p in found):
            footer = "  (a recipe for a GPU machine? `llmft validate --device cuda` leaves out what only that machine can tell)"
        raise machine_error(found, args.device, source=args.recipe, then=WOULD_STOP, footer=footer)
    launch, d = "", recipe.distributed
    if d.launches or d.uses_deepspeed:  # reads a deepspeed_config file: before anything is printed
        from llmft.launch.deepspeed import config_source, zero_stage

        machines = f" on {d.num_machines} machines" if d.num_machines > 1 else ""
        zero = f", DeepSpeed ZeRO-{zero_stage(d)} ({config_source(d)})" if d.uses_deepspeed else ", data parallel"
        launch = f"  launch {d.num_processes} process{'es' if d.num_processes > 1 else ''}{machines}{zero}"
    ft = recipe.finetune
    detail = f" (rank {ft.rank}, alpha {ft.alpha:g})" if hasattr(ft, "rank") else ""
    t = recipe.training
    print(f"{args.recipe}: OK")
    print(f"  stage {recipe.stage.name}, finetune {ft.mode}{detail}")
    print(f"  model {recipe.model.path}" + (f" [{recipe.model.gguf_file}]" if recipe.model.gguf_file else ""))
    train, held = (sum(len(source_files(spec.path)) for spec in getattr(recipe.data, s)) for s in ("train", "eval"))
    hub = sum(is_hub(spec.path) for spec in [*recipe.data.train, *recipe.data.eval])
    hubs = f" (+ {_count(hub, 'hub dataset')})" if hub else ""
    stream = ", streamed" if recipe.data.streaming else ""
    print(
        f"  data  {_count(train, 'train file')} / {_count(held, 'eval file')}{hubs}, max_length {recipe.data.max_length}{stream}"
    )
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    print(
        f"  train {length}, batch {t.micro_batch_size}x{t.gradient_accumulation_steps}, lr {t.learning_rate:g} {t.scheduler}, {t.optimizer}, precision {t.precision}"
    )
    if launch:
        print(launch)
    print(f"  output {recipe.output.dir}")
    print(f"  paths and machine checked on {this_machine()}{planned_for(args.device)}")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _prepared_data(args: argparse.Namespace) -> tuple:
    from llmft.config import load_recipe
    from llmft.data.dataset import prepare_for
    from llmft.modeling.load import prepare_tokenizer

    recipe = load_recipe(args.recipe, args.overrides, require_builder=False)
    tokenizer = prepare_tokenizer(recipe)
    return prepare_for(recipe, tokenizer), tokenizer, recipe


def cmd_data(args: argparse.Namespace) -> int:
    from llmft.data.stats import describe

    prepared, tokenizer, recipe = _prepared_data(args)
    rows = None
    if recipe.data.packing and recipe.stage.traits.fast_path:
        from llmft.data.packing import pack

        rows = len(pack(prepared.train, recipe.data.max_length))
    print(describe(prepared, tokenizer, color=sys.stdout.isatty(), example_index=args.example, packed_rows=rows))
    return EXIT_OK


def cmd_preprocess(args: argparse.Namespace) -> int:
    from llmft.config import load_recipe
    from llmft.data.cache import cache_root

    if load_recipe(args.recipe, args.overrides, require_builder=False).data.streaming:
        raise UserError("data.streaming: a streamed run tokenizes during training and reads no cache; nothing to preprocess")
    prepared, _, recipe = _prepared_data(args)
    if not recipe.data.cache:
        raise UserError("data.cache: is false, so preprocess has nothing to write; set it to true")
    origin = "already cached" if prepared.from_cache else f"tokenized in {prepared.seconds:.2f} s"
    print(
        f"{cache_root(recipe.data) / prepared.key}: {origin}; {len(prepared.train)} train"
        + (f" / {len(prepared.eval)} eval" if prepared.eval else "")
        + " examples"
    )
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from llmft.config import load_recipe
    from llmft.plan import plan_recipe
    from llmft.plan.render import parse_bytes, render

    recipe = load_recipe(args.recipe, args.overrides, require_builder=False)
    budget = parse_bytes(args.gpu_memory, "--gpu-memory") if args.gpu_memory else None
    planned = plan_recipe(
        recipe,
        source=args.recipe,
        num_processes=args.gpus,
        budget_bytes=budget,
        device=args.device,
        count_data=args.count_data,
        examples=args.examples,
    )
    print(json.dumps(planned.to_dict(), indent=2) if args.format == "json" else render(planned, args.recipe))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from llmft.config.finetune import MODES
    from llmft.config.matrix import SUPPORTED
    from llmft.config.stage import STAGES

    pairs, width = set(SUPPORTED), max(len(m) for m in MODES)
    print("stage  " + "  ".join(f"{m:<{width}}" for m in MODES))
    for stage in STAGES:
        print(f"{stage:<6} " + "  ".join(f"{'yes' if (stage, m) in pairs else '-':<{width}}" for m in MODES))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from llmft.config.recipe import Recipe
    from llmft.docs import config_reference

    if args.format == "markdown":
        print(config_reference(), end="")
    else:
        print(json.dumps(Recipe.model_json_schema(), indent=2))
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from llmft.curves import plot_run

    print(f"curves: {plot_run(args.run_dir, args.out)}")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from llmft.config.model import ModelConfig
    from llmft.modeling.merge import merge_adapter
    from llmft.rundir import base_of

    base = ModelConfig(path=args.base, gguf_file=args.gguf_file) if args.base else base_of(args.adapter)
    result = merge_adapter(base, args.adapter, args.out, verify=not args.no_verify)
    print(f"merged model: {result.out_dir} ({'verified: ' + result.check.describe() if result.check else 'not verified'})")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from llmft.export.run import export

    result = export(args.model, args.to, args.out, type_name=args.type, template=args.template, gguf_file=args.gguf_file)
    print(f"exported: {result.out} (verified: {result.check.describe()})")
    if result.modelfile is not None:
        print(f"Ollama Modelfile: {result.modelfile}" + (f" ({result.note})" if result.note else ""))
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    from llmft.chat import ChatSession, interactive, resolve_source, source_from_recipe

    if bool(args.model) == bool(args.recipe):
        raise UserError("chat: give exactly one of --model DIR and --recipe RECIPE")
    if args.recipe:
        from llmft.config import load_recipe

        source = source_from_recipe(load_recipe(args.recipe))
    else:
        source = resolve_source(args.model, args.gguf_file)
    session = ChatSession(source, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.prompt is not None:
        print(session.reply(args.prompt))
    else:
        interactive(session)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from llmft.serve.server import serve

    serve(args.model, args.host, args.port, args.gguf_file, args.max_queue, args.template)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmft", description="Fine-tune LLMs from one recipe file.")
    parser.add_argument("--version", action="version", version=f"llmft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, fn: Callable, help_text: str) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", help="recipe file (.yaml/.yml/.json)")
        p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. training.learning_rate=1e-4")
        p.set_defaults(fn=fn)

    recipe_command("train", cmd_train, "train from a recipe")
    recipe_command("validate", cmd_validate, "check a recipe, its paths and this machine, and print a summary")
    sub.choices["validate"].add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="check for a run on a CUDA GPU or a CPU (default: this machine's); for another machine's device, "
        "what only that machine can tell (its GPU, its packages) is not checked",
    )
    recipe_command("preprocess", cmd_preprocess, "tokenize the recipe's data into the cache, without training")
    recipe_command("data", cmd_data, "show what the recipe trains on: counts, lengths, a marked example")
    sub.choices["data"].add_argument("--example", type=int, default=0, help="which training example to show")
    recipe_command("plan", cmd_plan, "per-device memory, batch and steps of a recipe, without loading weights")
    plan = sub.choices["plan"]
    plan.add_argument("--gpus", type=int, help="processes (GPUs) to plan for (default: distributed.num_processes)")
    plan.add_argument("--gpu-memory", help="memory per device, e.g. 80GiB or 24GB (default: GPU 0's, or this machine's RAM)")
    plan.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="plan a GPU or a CPU run (default: cuda if a GPU, --gpus or --gpu-memory is given)",
    )
    plan.add_argument(
        "--count-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tokenize the data to count steps even when it is large (default: only when cached or small)",
    )
    plan.add_argument("--examples", type=int, help="number of training examples, instead of counting them")
    plan.add_argument("--format", choices=("text", "json"), default="text")
    sub.add_parser("list", help="the stage x finetune-mode matrix").set_defaults(fn=cmd_list)
    schema = sub.add_parser("schema", help="the recipe's JSON Schema (or markdown reference)")
    schema.add_argument("--format", choices=("json", "markdown"), default="json")
    schema.set_defaults(fn=cmd_schema)
    plot = sub.add_parser(
        "plot",
        help="draw a run's logged curves (loss, eval loss, reward, accuracy) as a PNG",
        description="Draw the losses, rewards and accuracies a run logged (its newest trainer_state.json: "
        "a run in progress is read from its newest checkpoint) into RUN_DIR/curves.png, as every run does when it ends.",
    )
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run's output.dir")
    plot.add_argument("--out", help="where to write the PNG (default: RUN_DIR/curves.png)")
    plot.set_defaults(fn=cmd_plot)
    merge = sub.add_parser("merge", help="fold a LoRA adapter into its base model")
    merge.add_argument("--adapter", required=True, help="adapter directory (an llmft LoRA run's output)")
    merge.add_argument("--out", required=True, help="new directory for the merged model")
    merge.add_argument("--base", help="base model dir or hub id (default: the one in the run's recipe.resolved.yaml)")
    merge.add_argument("--gguf-file", help="GGUF file inside --base")
    merge.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checks: base vs the adapter's recorded base, merged vs base+adapter logits",
    )
    merge.set_defaults(fn=cmd_merge)
    exporting = sub.add_parser(
        "export",
        help="write a run or model as one GGUF file (llama.cpp, Ollama) or a standalone Hugging Face folder, verified",
        description="Export a run (its adapter merged first, with merge's checks), an adapter dir or a model as a GGUF "
        "file or a Hugging Face folder. The export is read back with transformers and its logits and tokenizer compared "
        "with the source before it is kept; a failure leaves nothing at --out.",
    )
    exporting.add_argument("model", metavar="RUN_OR_MODEL", help="run output dir, adapter dir, model dir or hub id")
    exporting.add_argument(
        "--to", required=True, choices=("gguf", "hf"), help="gguf: one .gguf file (+ an Ollama Modelfile); hf: a folder"
    )
    exporting.add_argument("--out", required=True, help="the .gguf file or the folder to write (must not exist)")
    exporting.add_argument("--type", help="gguf: f32, f16 (default), bf16 or q8_0; hf: f32 (default), f16 or bf16")
    exporting.add_argument("--template", help="named chat template for a model without one (see docs/data.md)")
    exporting.add_argument("--gguf-file", help="GGUF file inside RUN_OR_MODEL (a model loaded from GGUF)")
    exporting.set_defaults(fn=cmd_export)
    add_eval_command(sub)
    chat = sub.add_parser("chat", help="chat with a trained run or a model")
    chat.add_argument("--model", help="run output dir, adapter dir, model dir or hub id")
    chat.add_argument("--recipe", help="chat with this recipe's base model instead")
    chat.add_argument("--gguf-file", help="GGUF file inside --model")
    chat.add_argument("--prompt", help="answer this one prompt and exit")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.set_defaults(fn=cmd_chat)
    served = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve MODEL (run dir, adapter dir, model dir, hub id, or GGUF with --gguf-file) at "
        "/v1/chat/completions, /v1/completions and /v1/models, with the chat template it was trained with. "
        "One worker generates; requests wait in a queue of --max-queue, beyond which they get HTTP 503. "
        "Needs pip install 'llmft[serve]'.",
    )
    served.add_argument(
        "model", metavar="MODEL", help="run output dir, adapter dir, model dir or hub id; also its name in the API"
    )
    served.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    served.add_argument("--port", type=int, default=8000)
    served.add_argument("--gguf-file", help="GGUF file inside MODEL")
    served.add_argument("--template", help="named chat template for a model without one (see docs/data.md)")
    served.add_argument("--max-queue", type=int, default=16, help="requests that may wait for the worker (default 16)")
    served.set_defaults(fn=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides may also follow a command's options (`llmft plan r.yaml --gpus 8 a.b=1`)
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `llmft validate r.yaml | head -1`
        sys.stderr.close()
        return EXIT_OK
    except Exception:  # a bug in llmft or a library: show everything
        traceback.print_exc()
        print("internal error (not a problem with your recipe); please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL
