"""What `llmft eval` prints and writes: a table (two models side by side with the difference),
`eval.json` with every figure, and the generated answers as JSONL for a person to read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmft.evaluation.run import EvalResult

#: Figures where lower is better (the difference column marks improvement either way).
LOWER_IS_BETTER = {"loss", "perplexity"}
#: Counts, shown but not compared.
COUNTS = {"tokens", "examples", "answers", "pairs", "prompts", "dropped", "truncated", "skipped"}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: list[EvalResult]) -> str:
    """One row per figure; with two results, a third column B - A marked + when B is better."""
    keys = list(dict.fromkeys((m, k) for r in results for m, figures in r.metrics.items() for k in figures))
    head = ["metric", *(f"{'AB'[i]}" if len(results) > 1 else "value" for i in range(len(results)))]
    if len(results) == 2:
        head.append("B - A")
    rows = [head]
    for measure, key in keys:
        values = [r.metrics.get(measure, {}).get(key) for r in results]
        row = [f"{measure}.{key}", *(_format(v) if v is not None else "-" for v in values)]
        if len(results) == 2 and key not in COUNTS and all(isinstance(v, (int, float)) for v in values):
            delta = values[1] - values[0]
            better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
            row.append(f"{delta:+.4f}" + (" +" if better and delta else ""))
        elif len(results) == 2:
            row.append("")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = [f"{'AB'[i]}: {r.model}" for i, r in enumerate(results)] if len(results) > 1 else [f"model: {results[0].model}"]
    notes = [f"note: {n}" for r in results for n in r.notes]
    return "\n".join([*legend, f"data: {results[0].data}", "", *lines, *([""] + notes if notes else [])])


def write(results: list[EvalResult], out_dir: Path) -> list[Path]:
    """eval.json (every figure of every model) and one JSONL per measure and model with its rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "eval.json"]
    labels = ["A", "B"] if len(results) > 1 else [""]
    payload: dict[str, Any] = {"results": [r.to_dict() for r in results]}
    for label, result in zip(labels, results):
        for measure, rows in result.rows.items():
            path = out_dir / f"{measure}{'-' + label if label else ''}.jsonl"
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            written.append(path)
    (out_dir / "eval.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return written
