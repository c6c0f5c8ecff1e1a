"""`<output.dir>/curves.png`: what a run logged, drawn: its losses (training and eval), rewards and
accuracies, each kind in its own panel, against the step. Read from `trainer_state.json`'s
log_history (the newest one: a run in progress has one in each checkpoint), so any stage's run can
be drawn, finished or not (`llmft plot RUN_DIR`). Drawn with matplotlib's Agg canvas: no display,
no pyplot state."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmft.errors import UserError
from llmft.rundir import CURVES, TRAINER_STATE, newest_trainer_state

#: The panels, in order: a logged key goes to the first whose word it contains.
PANELS = (("loss", "loss"), ("reward", "reward"), ("accurac", "accuracy"))
#: The numbers a run logs once at its end, or about its pace: not curves.
NOT_CURVES = ("train_", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")

Series = dict[str, list[tuple[int, float]]]


def panel_of(key: str) -> str | None:
    """Which panel a logged key is drawn in (`loss`, `reward`, `accuracy`), or None."""
    if key.startswith(NOT_CURVES) or key.endswith("_std"):
        return None
    name = key.lower()
    return next((panel for word, panel in PANELS if word in name), None)


def series(log_history: Sequence[dict[str, Any]]) -> Series:
    """{logged key: [(step, value), ...]} for every key drawn (see `panel_of`), in the order logged;
    values that are not finite numbers are left out."""
    out: Series = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if panel_of(key) is not None:
                out.setdefault(key, []).append((step, float(value)))
    return out


def figure(curves: Series, title: str) -> Any:
    """A matplotlib Figure (on the Agg canvas): one panel per kind of curve, that kind's curves in it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UserError("drawing curves needs matplotlib, which is not installed: pip install matplotlib") from None
    panels = [panel for _, panel in PANELS if any(panel_of(key) == panel for key in curves)]
    if not panels:
        raise UserError(f"{title}: nothing to draw: its log_history has no loss, reward or accuracy yet")
    fig = Figure(figsize=(7, 2.6 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for key, points in curves.items():
            if panel_of(key) != panel:
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize="medium")
    return fig


def draw(curves: Series, out: Path, title: str) -> Path:
    """`figure(curves, title)` written as a PNG to `out`."""
    fig = figure(curves, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw a run directory's curves (`<run_dir>/curves.png` unless `out` is given) from its newest
    trainer_state.json."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise UserError(f"RUN_DIR: directory not found: {run_dir}")
    state = newest_trainer_state(run)
    if state is None:
        raise UserError(f"{run_dir}: no {TRAINER_STATE} in it or in a checkpoint-N/ (nothing has been logged there yet)")
    history = json.loads(state.read_text()).get("log_history") or []
    title = str(run) if state.parent == run else f"{run} ({state.parent.name})"
    return draw(series(history), Path(out).expanduser() if out else run / CURVES, title)
