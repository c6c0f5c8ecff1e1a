"""curves.png: which logged numbers are drawn, in which panel, and that the picture is a real PNG
(for a finished run, and for a run in progress read from its newest checkpoint)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from llmft.curves import draw, figure, panel_of, plot_run, series
from llmft.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 1.0, "epoch": 0.5, "step": 1},
    {"loss": 2.0, "learning_rate": 9e-4, "grad_norm": 0.9, "epoch": 1.0, "step": 2},
    {"eval_loss": 2.2, "eval_accuracy": 0.5, "eval_runtime": 0.1, "epoch": 1.0, "step": 2},
    {"loss": float("nan"), "reward": 0.3, "reward_std": 0.1, "rewards/margins": 0.2, "step": 3},
    {"train_loss": 2.1, "train_runtime": 3.0, "total_flos": 1e9, "step": 3},
]


def test_series_keeps_losses_rewards_and_accuracies_in_order():
    curves = series(HISTORY)
    assert curves == {
        "loss": [(1, 2.5), (2, 2.0)],  # the NaN at step 3 is left out
        "eval_loss": [(2, 2.2)],
        "eval_accuracy": [(2, 0.5)],
        "reward": [(3, 0.3)],
        "rewards/margins": [(3, 0.2)],
    }
    assert [panel_of(k) for k in curves] == ["loss", "loss", "accuracy", "reward", "reward"]
    # pace, schedule and the run's closing summary are not curves
    for key in ("learning_rate", "grad_norm", "epoch", "eval_runtime", "train_loss", "reward_std", "total_flos"):
        assert panel_of(key) is None, key


def test_one_panel_per_kind_one_line_per_series(tmp_path):
    fig = figure(series(HISTORY), "run")
    drawn = [(ax.get_ylabel(), [(line.get_label(), len(line.get_xdata())) for line in ax.get_lines()]) for ax in fig.axes]
    assert drawn == [
        ("loss", [("loss", 2), ("eval_loss", 1)]),
        ("reward", [("reward", 1), ("rewards/margins", 1)]),
        ("accuracy", [("eval_accuracy", 1)]),
    ]
    out = draw(series(HISTORY), tmp_path / "sub" / "curves.png", "run")
    assert out.read_bytes()[:8] == PNG


def test_plot_run_reads_the_newest_trainer_state(tmp_path):
    run = tmp_path / "run"
    for step, loss in ((2, [3.0, 2.0]), (4, [3.0, 2.0, 1.5, 1.0])):
        checkpoint = run / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        history = [{"loss": value, "step": i + 1} for i, value in enumerate(loss)]
        (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        os.utime(checkpoint / "trainer_state.json", (step, step))  # checkpoint-4 is the newer
    out = plot_run(run)
    assert out == run / "curves.png" and out.read_bytes()[:8] == PNG
    other = plot_run(run, tmp_path / "elsewhere.png")
    assert other.read_bytes()[:8] == PNG


def test_plot_run_says_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="directory not found"):
        plot_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no trainer_state.json in it or in a checkpoint-N/"):
        plot_run(tmp_path / "empty")
    with pytest.raises(UserError, match="nothing to draw"):
        draw(series([{"learning_rate": 1e-3, "step": 1}]), tmp_path / "c.png", "run")
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # as if not installed
    with pytest.raises(UserError) as info:
        draw(series(HISTORY), tmp_path / "c.png", "run")
    assert str(info.value) == "drawing curves needs matplotlib, which is not installed: pip install matplotlib"
