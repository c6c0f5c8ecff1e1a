"""Resume really resumes; SIGTERM checkpoints and stops; a NaN loss stops the run; nothing
written is lost."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch
from conftest import CONVERSATIONS, make_recipe, write_jsonl
from transformers import TrainerCallback

import llmft.callbacks
from llmft.config import validate_recipe
from llmft.errors import TrainingDiverged, TrainingInterrupted, UserError
from llmft.run import train


@pytest.fixture
def data(tmp_path):
    rows = [{"messages": CONVERSATIONS[i % len(CONVERSATIONS)]} for i in range(16)]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def recipe(model_dir, data, out, mode, **training):
    settings = {
        "max_steps": 6,
        "micro_batch_size": 2,
        "learning_rate": 5e-3,
        "save_strategy": "steps",
        "save_steps": 3,
        "report_to": ["tensorboard"],
        **training,
    }
    return make_recipe(model_dir, data, out, mode=mode, data={"cache": False}, training=settings)


def losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


class SendAt(TrainerCallback):
    def __init__(self, step: int, sig: int):
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def with_callback(monkeypatch, callback):
    original = llmft.callbacks.callbacks_for
    monkeypatch.setattr(llmft.callbacks, "callbacks_for", lambda *a, **k: [callback, *original(*a, **k)])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_sigterm_then_resume_matches_an_uninterrupted_run(mode, tiny_model_dir, data, tmp_path, monkeypatch):
    straight = train(validate_recipe(recipe(tiny_model_dir, data, tmp_path / "a", mode)))

    out = tmp_path / "b"
    with monkeypatch.context() as patch:
        with_callback(patch, SendAt(3, signal.SIGTERM))
        with pytest.raises(TrainingInterrupted) as info:
            train(validate_recipe(recipe(tiny_model_dir, data, out, mode)))
    assert info.value.signal_name == "SIGTERM" and info.value.checkpoint.endswith("checkpoint-3")
    assert not (out / "train_results.json").exists()  # not mistaken for a finished run

    resumed = train(validate_recipe(recipe(tiny_model_dir, data, out, mode, resume_from_checkpoint="auto")))
    # TensorBoard: the interrupted and the resumed session both write to logs/, and only there
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) >= 2 and not (out / "runs").exists()
    first, second = losses(straight.log_history), losses(resumed.log_history)
    assert sorted(second) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come back with the checkpoint's state
    for step in range(1, 7):
        assert abs(first[step] - second[step]) < 1e-5, (step, first[step], second[step])
    name = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a" / name)), load_file(str(out / name))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_a_changed_recipe_and_a_finished_run_without_checkpoints(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    train(validate_recipe(recipe(tiny_model_dir, data, out, "lora")))
    changed = recipe(tiny_model_dir, data, out, "lora", resume_from_checkpoint="auto", learning_rate=1e-3)
    with pytest.raises(UserError, match=r"recipe differs .*training.learning_rate: 0.005 -> 0.001"):
        train(validate_recipe(changed))
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    with pytest.raises(UserError, match=r"auto found no complete checkpoint-N in .*, which holds a finished run"):
        train(validate_recipe(recipe(tiny_model_dir, data, out, "lora", resume_from_checkpoint="auto")))


def test_auto_without_a_checkpoint_starts_a_new_run_and_says_so(tiny_model_dir, data, tmp_path, caplog):
    out = tmp_path / "new"
    with caplog.at_level("INFO", logger="llmft"):
        result = train(validate_recipe(recipe(tiny_model_dir, data, out, "lora", resume_from_checkpoint="auto", max_steps=2)))
    assert f"auto found no checkpoint in {out}; starting from step 0" in caplog.text
    assert sorted(losses(result.log_history)) == [1, 2]


def test_auto_skips_an_incomplete_checkpoint(tiny_model_dir, data, tmp_path):
    from llmft.resume import checkpoints

    out = tmp_path / "run"
    train(validate_recipe(recipe(tiny_model_dir, data, out, "lora")))
    shutil.copytree(out / "checkpoint-6", out / "checkpoint-9")
    (out / "checkpoint-9" / "trainer_state.json").unlink()  # as if the process died mid-save
    assert [p.name for p in checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]


class PoisonAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with_callback(monkeypatch, PoisonAt(5))
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 5"):
        train(validate_recipe(recipe(tiny_model_dir, data, out, "full", logging_steps=1)))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (out / "model.safetensors").exists()
