"""Load what `llmft eval` measures and run the measures: one model, or two side by side on the same
data with the same settings (`--compare`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from llmft.errors import UserError
from llmft.evaluation.data import EvalSet
from llmft.evaluation.measures import MEASURES, EvalOptions, Loaded, default_measures
from llmft.modeling.sources import ModelSource, load_causal_lm, load_tokenizer_for

log = logging.getLogger("llmft")


@dataclass
class EvalResult:
    model: str
    data: str
    metrics: dict[str, dict[str, Any]]  # measure -> its figures
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # measure -> what a person reads (answers)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "metrics": self.metrics,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def load(source: ModelSource, reference: ModelSource | None = None, judge: str | None = None) -> Loaded:
    """The model to measure; its reference (`reference`, else an adapter's base), and a judging reward model."""
    from llmft.modeling.reward import load_reward_model

    if source.reward:
        path = str(source.adapter or source.base.path)
        model, tokenizer = load_reward_model(path)
        return Loaded(source.describe(), _on_device(model), tokenizer, reward=True)
    model, tokenizer = load_causal_lm(source)
    loaded = Loaded(source.describe(), _on_device(model), tokenizer)
    if reference is not None:
        ref_model, loaded.reference_tokenizer = load_causal_lm(reference)
        loaded.reference = _on_device(ref_model)
    if judge is not None:
        judge_model, judge_tokenizer = load_reward_model(judge)
        loaded.judge = (_on_device(judge_model), judge_tokenizer)
    return loaded


def _on_device(model: Any) -> Any:
    """On the GPU when there is one (the measures put their inputs where the model is)."""
    return model.to("cuda") if torch.cuda.is_available() else model


def evaluate(loaded: Loaded, data: EvalSet | None, options: EvalOptions) -> EvalResult:
    """The measures on `data` (none without data), then the harness tasks of `options.harness`."""
    names = (options.metrics or default_measures(data, loaded, options)) if data is not None else ()
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise UserError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    started = time.perf_counter()
    described = [f"{data.name} ({len(data.records)} records)"] if data is not None else []
    if options.harness is not None:
        described.append(f"lm-eval tasks {', '.join(options.harness.tasks)}")
    result = EvalResult(loaded.name, "; ".join(described), {})
    measures: list[tuple[str, Any]] = [(name, lambda name=name: MEASURES[name](loaded, data, options)) for name in names]
    if options.harness is not None:
        if loaded.reward:
            raise UserError(f"--harness: {loaded.name} is a reward model; lm-eval tasks measure a causal LM")
        from llmft.evaluation import harness

        measures.append(("harness", lambda: harness.run(loaded.model, loaded.tokenizer, options.harness, options.batch_size)))
    for name, measure in measures:
        log.info("eval: %s on %s", name, loaded.name)
        figures = measure()
        rows = figures.pop("_rows", None)
        if rows is not None:
            result.rows[name] = rows
        result.metrics[name] = figures
    result.notes = list(loaded.notes)
    result.seconds = time.perf_counter() - started
    return result


def free(loaded: Loaded) -> None:
    """Let go of a model before loading the next (two 135M fp32 models fit anywhere; a 7B does not)."""
    loaded.model = loaded.reference = loaded.judge = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["EvalOptions", "EvalResult", "evaluate", "free", "load", "load_tokenizer_for"]
