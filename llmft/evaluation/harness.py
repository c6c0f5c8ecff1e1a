"""`llmft eval --harness TASKS`: lm-evaluation-harness tasks on a model llmft loaded (an adapter
applied, the run's tokenizer), where the `lm-eval` package and each task's data are on this machine.

The harness reads a task's data with `datasets.load_dataset`: from the Hugging Face cache, the hub
when it can be reached, or local files named by a task YAML (`--harness-include DIR`). Whatever is
missing is an error naming the task and the way to get it, before any model time is spent.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

from llmft.errors import UserError

log = logging.getLogger("llmft")

INSTALL = "pip install 'llmft[harness]' (or pip install lm-eval)"


@dataclass(frozen=True)
class HarnessOptions:
    tasks: tuple[str, ...]
    include: str | None = None  # a directory of task YAMLs (lm-eval's include_path)
    num_fewshot: int | None = None  # None: each task's own default
    chat: bool = False  # render prompts with the model's chat template (lm-eval's apply_chat_template)
    limit: int | None = None  # documents per task (the first ones)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"--harness needs lm-evaluation-harness, which is not installed: {INSTALL}") from None
    return lm_eval


#: lm-eval's task index per include directory: built once (it reads thousands of task YAMLs).
_MANAGERS: dict[str | None, Any] = {}


def task_manager(options: HarnessOptions) -> Any:
    """lm-eval's task index (its own tasks and `options.include`), each asked-for task checked."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if options.include not in _MANAGERS:
        _MANAGERS[options.include] = TaskManager(include_path=options.include) if options.include else TaskManager()
    manager = _MANAGERS[options.include]
    known = set(manager.all_tasks)
    for task in options.tasks:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" or in {options.include}" if options.include else " (--harness-include DIR adds task YAMLs)"
            raise UserError(f"--harness: no lm-eval task {task!r} among its {len(known)} tasks{where}{hint}")
    return manager


def load_tasks(manager: Any, options: HarnessOptions) -> None:
    """Load each task with its data: a task whose data is not on this machine is refused here."""
    from lm_eval.tasks import get_task_dict

    for name in options.tasks:
        try:
            get_task_dict([name], manager)
        except Exception as exc:  # datasets raises many kinds (not found, offline, connection)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"--harness {name}: its data could not be loaded on this machine ({type(exc).__name__}: {first}). "
                "lm-eval reads task data with datasets.load_dataset: run it once where the hub can be reached "
                "(the data is then cached), or give a task YAML whose data_files are local (--harness-include DIR)."
            ) from None


def run(model: Any, tokenizer: Any, options: HarnessOptions, batch_size: int) -> dict[str, Any]:
    """The tasks' figures as `{task.metric: value}` (standard errors left out), and `_rows`: each
    scored request (the document, what the model answered or the log-likelihoods, the metric) for a
    person to read."""
    _lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(options)
    load_tasks(manager, options)  # a task without its data stops here, named
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size)
    log.info(
        "eval: harness %s (lm-eval, %s)",
        ", ".join(options.tasks),
        f"first {options.limit} documents" if options.limit else "all documents",
    )
    output = simple_evaluate(
        model=lm,
        tasks=list(options.tasks),
        num_fewshot=options.num_fewshot,
        limit=options.limit,
        apply_chat_template=options.chat,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=manager,
    )
    figures: dict[str, Any] = {}
    for task, metrics in output["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            figures[f"{task}.{metric}" + (f"[{filt}]" if filt not in ("", "none") else "")] = value
        figures[f"{task}.documents"] = len(output["samples"].get(task, []))
    rows = [
        {"task": task, "doc_id": s["doc_id"], "doc": s["doc"], "target": s["target"], "responses": s["filtered_resps"]}
        | {m: s[m] for m in s.get("metrics", []) if m in s}
        for task, samples in output["samples"].items()
        for s in samples
    ]
    return {**figures, "_rows": rows}
