"""Trainer callbacks llmft always attaches: the random-init loss alarm, TensorBoard, and the base
fingerprint copied into each checkpoint."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmft.config.recipe import Recipe
from llmft.errors import TrainingDiverged
from llmft.rundir import BASE_FINGERPRINT

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

    callbacks: list[Any] = [LogLines(), FingerprintInCheckpoints()]
    if recipe.stage.traits.next_token_loss:  # ln(vocab) says nothing about pairwise, KTO or policy losses
        callbacks.insert(0, RandomInitAlarm(vocab_size, recipe.model.path))
    if "tensorboard" in recipe.training.report_to and is_main_process():  # one events file per run
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(output_dir / "logs"))))
    return callbacks


class FingerprintInCheckpoints(TrainerCallback):
    """Copy the run's base fingerprint into each checkpoint-N/, so an adapter continued or merged
    from a checkpoint is checked against its base too (a few KB per checkpoint)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import shutil

        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        source = Path(args.output_dir) / BASE_FINGERPRINT
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and source.is_file() and checkpoint.is_dir():
            shutil.copyfile(source, checkpoint / BASE_FINGERPRINT)


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


class StopOnNonFinite(TrainerCallback):
    """Stop at the first logged NaN/inf loss, before anything is saved from the broken state."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"the loss became {loss} at step {state.global_step}; training stopped. Checkpoints saved "
                "before this step are intact. Lower training.learning_rate, check the data, or use fp32/bf16."
            )
