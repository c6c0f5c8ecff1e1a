"""Trainer callbacks llmft always attaches: the random-init loss alarm, TensorBoard, and what ends
each checkpoint's save (the base fingerprint, the manifest, the rotation of older checkpoints)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmft.config.recipe import Recipe
from llmft.errors import TrainingDiverged

log = logging.getLogger("llmft")


def random_init_suspected(loss: float, vocab_size: int, tolerance: float = 0.10) -> bool:
    """A randomly initialised LM predicts ~uniformly: its loss is ~ln(vocab)."""
    uniform = math.log(vocab_size)
    return abs(loss - uniform) <= tolerance * uniform


class RandomInitAlarm(TrainerCallback):
    """After the first logged loss, warn loudly if it looks like an untrained model's."""

    def __init__(self, vocab_size: int, model_path: str):
        self.vocab_size = vocab_size
        self.model_path = model_path
        self.checked = False
        self.fired = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.checked or not logs or "loss" not in logs:
            return
        self.checked = True
        loss = float(logs["loss"])
        if random_init_suspected(loss, self.vocab_size):
            self.fired = True
            bar = "!" * 78
            log.warning(
                "\n%s\nFIRST LOSS %.3f IS WITHIN 10%% OF ln(vocab)=%.3f: the model behaves as if randomly "
                "initialised.\nmodel.path=%s claims to be pretrained; check that it is the checkpoint you meant.\n%s",
                bar,
                loss,
                math.log(self.vocab_size),
                self.model_path,
                bar,
            )


class LogLines(TrainerCallback):
    """One readable line per log event (replaces the Trainer's dict printing)."""

    ORDER = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        keys = [k for k in self.ORDER if k in logs] + sorted(k for k in logs if k not in self.ORDER)
        fields = " ".join(f"{k}={_fmt(logs[k])}" for k in keys)
        log.info("step %d/%d %s", state.global_step, state.max_steps, fields)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def callbacks_for(recipe: Recipe, output_dir: Path, vocab_size: int) -> list[Any]:
    from llmft.launch.ranks import is_main_process

    callbacks: list[Any] = [LogLines()]
    if recipe.stage.traits.next_token_loss:  # ln(vocab) says nothing about pairwise, KTO or policy losses
        callbacks.insert(0, RandomInitAlarm(vocab_size, recipe.model.path))
    if "tensorboard" in recipe.training.report_to and is_main_process():  # one events file per run
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(output_dir / "logs"))))
    callbacks.append(CompleteCheckpoints(keep=recipe.training.save_total_limit))  # last: the manifest ends each save
    return callbacks


class CompleteCheckpoints(TrainerCallback):
    """After each checkpoint-N/ is saved (every process has written its part): copy the run's base
    fingerprint into it, write its manifest, the last file of the save (`llmft.checkpoint`), then
    apply `training.save_total_limit` (`keep`): llmft rotates checkpoints itself, once a newer one
    is complete, never before. Attached last, so no other callback writes into the checkpoint
    after its manifest."""

    def __init__(self, keep: int | None):
        self.keep = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from llmft.checkpoint import checkpoint_guard, copy_fingerprint, rotate, write_manifest
        from llmft.launch.ranks import wait_for_everyone

        output_dir = Path(args.output_dir)
        checkpoint = output_dir / f"checkpoint-{state.global_step}"
        wait_for_everyone()  # ZeRO shards and RNG states are written by every process
        if state.is_world_process_zero and checkpoint.is_dir():
            with checkpoint_guard(checkpoint):
                copy_fingerprint(output_dir, checkpoint)
                write_manifest(checkpoint, state.global_step)
            for old in rotate(output_dir, self.keep):
                log.info("training.save_total_limit: removed %s", old.name)
        wait_for_everyone()  # no process reads the checkpoint back before it is complete


class StopOnSignal(TrainerCallback):
    """On SIGINT/SIGTERM, finish the current step, save a checkpoint and stop."""

    def __init__(self) -> None:
        self.received: str | None = None

    def handle(self, signum: int, frame: Any) -> None:
        import signal

        self.received = signal.Signals(signum).name

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._anywhere(args):
            control.should_save = True
            control.should_training_stop = True

    def _anywhere(self, args: Any) -> bool:
        """Several processes stop at the same step, even when the signal reached only some of them
        by then (saving a checkpoint is collective: one process ahead would wait forever)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received is not None
        flag = torch.tensor([self.received is not None], dtype=torch.int32, device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = "a signal to another process"
        return bool(flag.item())


class AlreadyDone(Exception):
    """Raised by StopWhenDone before a step past the end would run."""


class StopWhenDone(TrainerCallback):
    """transformers (5.x) resuming from a checkpoint taken at the last step, when that step does not end
    an epoch, trains one step more than max_steps (step 7/6): stop before that step begins. Nothing
    else reaches a step with global_step >= max_steps."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if 0 < state.max_steps <= state.global_step:
            raise AlreadyDone()


class StopOnNonFinite(TrainerCallback):
    """Stop at the first logged NaN/inf loss, before anything is saved from the broken state."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"the loss became {loss} at step {state.global_step}; training stopped. Checkpoints saved "
                "before this step are intact. Lower training.learning_rate, check the data, or use fp32/bf16."
            )
