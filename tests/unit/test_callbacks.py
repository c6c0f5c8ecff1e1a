"""What a person sees while training (TrainingProgress): log lines with the elapsed time and the time
left when stderr is not a terminal; a bar with step, times, loss and tokens/s when it is; tokens
counted from the batches; and TensorBoard kept to <output.dir>/logs."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

import llmft.callbacks
from llmft.callbacks import CountTokens, TrainingProgress, batch_tokens, clock, count_tokens, tensorboard_callback


@pytest.fixture
def clock_at(monkeypatch):
    """Set the time TrainingProgress reads (seconds)."""
    now = [1000.0]
    monkeypatch.setattr(llmft.callbacks.time, "perf_counter", lambda: now[0])

    def set_to(seconds: float) -> None:
        now[0] = 1000.0 + seconds

    return set_to


def _run(progress: TrainingProgress, state: TrainerState, clock_at, steps: list[tuple[int, float, dict]]) -> None:
    args = TrainingArguments(output_dir="unused", report_to="none")
    control = TrainerControl()
    progress.on_train_begin(args, state, control)
    for step, seconds, logs in steps:
        clock_at(seconds)
        state.global_step = step
        progress.on_step_end(args, state, control)
        if logs:
            progress.on_log(args, state, control, logs=logs)
    progress.on_train_end(args, state, control)


def test_log_lines_say_elapsed_and_left(clock_at, caplog):
    state = TrainerState(max_steps=100)
    with caplog.at_level(logging.INFO, logger="llmft"):
        _run(
            TrainingProgress(terminal=False),
            state,
            clock_at,
            [(20, 62.0, {"loss": 1.23456, "learning_rate": 1e-4}), (100, 310.0, {"loss": 0.5})],
        )
    assert caplog.messages == [
        "step 20/100 (1:02 elapsed, ~4:08 left) loss=1.235 learning_rate=0.0001",
        "step 100/100 (5:10 elapsed) loss=0.5",
    ]


def test_a_resumed_run_counts_its_pace_from_where_it_resumed(clock_at, caplog):
    state = TrainerState(max_steps=100, global_step=50)
    with caplog.at_level(logging.INFO, logger="llmft"):
        _run(TrainingProgress(terminal=False), state, clock_at, [(60, 30.0, {"loss": 1.0})])
    assert caplog.messages == ["step 60/100 (0:30 elapsed, ~2:00 left) loss=1"]  # 10 steps in 30 s, 40 to go


def test_a_terminal_gets_a_bar_with_step_times_loss_and_tokens(clock_at, capsys):
    state = TrainerState(max_steps=4)
    progress = TrainingProgress(terminal=True)
    args = TrainingArguments(output_dir="unused", report_to="none")
    progress.on_train_begin(args, state, TrainerControl())
    progress.count({"input_ids": torch.ones(2, 8), "attention_mask": torch.tensor([[1] * 8, [1] * 4 + [0] * 4])})
    clock_at(2.0)
    state.global_step = 1
    progress.on_step_end(args, state, TrainerControl())
    progress.on_log(args, state, TrainerControl(), logs={"loss": 2.5})
    bar = capsys.readouterr().err
    assert re.search(r"training 1/4 .*elapsed, ~.* left, loss 2\.5, 6 tok/s", bar), bar
    progress.close()
    assert progress.bar is None


def test_only_the_main_process_shows_progress(clock_at, caplog, capsys):
    state = TrainerState(max_steps=4, is_world_process_zero=False)
    with caplog.at_level(logging.INFO, logger="llmft"):
        _run(TrainingProgress(terminal=True), state, clock_at, [(1, 1.0, {"loss": 1.0})])
    assert caplog.messages == [] and capsys.readouterr().err == ""


def test_tokens_are_counted_from_the_batches_a_trainer_collates():
    assert batch_tokens({"input_ids": torch.ones(1, 9)}) == 9  # padding-free: every id is a token
    assert batch_tokens({"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}) == 5
    assert batch_tokens([{"prompt": "x"}]) == 0  # e.g. GRPO's prompts: no tokens yet

    class Trainer:
        def __init__(self) -> None:
            self.data_collator = lambda features: {"input_ids": torch.ones(1, len(features))}
            self.callback_handler = type("Handler", (), {"callbacks": [TrainingProgress()]})()

    trainer = Trainer()
    count_tokens(trainer)
    assert isinstance(trainer.data_collator, CountTokens)
    trainer.data_collator([1, 2, 3])
    progress = trainer.callback_handler.callbacks[0]
    assert progress.pending == 3
    progress.on_evaluate(None, TrainerState(), None)  # an evaluation's batches are not trained tokens
    assert progress.pending == 0


def test_clock():
    assert [clock(s) for s in (0, 62, 3723.4)] == ["0:00", "1:02", "1:02:03"]


def test_tensorboard_writes_only_to_the_logs_folder(tmp_path):
    callback = tensorboard_callback(tmp_path / "logs")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state = TrainerState(global_step=1)
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    callback.on_train_end(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 1.0})  # the final evaluation, after training
    callback.on_train_end(args, state, TrainerControl())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) >= 1
