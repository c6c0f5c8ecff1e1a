"""Trainer callbacks llmft always attaches: the progress a person sees (a bar on a terminal, log
lines with the time left elsewhere), the random-init loss alarm, TensorBoard (in <output.dir>/logs
only), W&B and MLflow (`llmft.trackers`), and what ends each checkpoint's save (the base fingerprint, the usual file modes, the
manifest, the rotation of older checkpoints)."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmft.config.recipe import Recipe
from llmft.errors import TrainingDiverged
from llmft.rundir import TENSORBOARD_DIR, usual_file_modes
from llmft.trackers import tracker_callbacks

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


class TrainingProgress(TrainerCallback):
    """What the main process shows while training: a tqdm bar (step, elapsed, time left, loss, tokens/s)
    when stderr is a terminal, and one readable line per log event (replacing the Trainer's dict
    printing), with the elapsed time and the time left: `step 20/100 (1:02 elapsed, ~4:08 left) loss=...`.
    Under the bar those lines are written above it. Tokens come from the batches `count_tokens` sees
    (HF and TRL trainers) or from `state.num_input_tokens_seen` (llmft's PPO trainer)."""

    ORDER = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = terminal
        self.bar: Any = None
        self.started: float | None = None
        self.first_step = 0
        self.tokens = 0  # trained tokens this session, counted by count_tokens on this process
        self.pending = 0  # counted since the last step ended (may hold an evaluation's batches)
        self.first_tokens = 0
        self.world_size = 1
        self.last_loss: Any = None
        self._redirect: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.started = time.perf_counter()
        self.first_step = state.global_step  # > 0 when resuming: the rate counts this session's steps
        self.first_tokens = getattr(state, "num_input_tokens_seen", 0) or 0
        self.tokens = self.pending = 0
        self.world_size = max(1, int(getattr(args, "world_size", 1) or 1))
        terminal = sys.stderr.isatty() if self.terminal is None else self.terminal
        if terminal and state.max_steps:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # disable=False: `llmft`'s CLI sets TQDM_DISABLE for the libraries' own bars
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                file=sys.stderr,
                disable=False,
                dynamic_ncols=True,
                bar_format="{desc} {n_fmt}/{total_fmt} {bar} {elapsed} elapsed, ~{remaining} left{postfix}",
            )
            self._redirect = logging_redirect_tqdm()  # log lines go above the bar, not through it
            self._redirect.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens += self.pending
        self.pending = 0
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(self._postfix(state), refresh=True)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pending = 0  # the evaluation's batches are not trained tokens

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        keys = [k for k in self.ORDER if k in logs] + sorted(k for k in logs if k not in self.ORDER)
        fields = " ".join(f"{k}={_fmt(logs[k])}" for k in keys)
        log.info("step %d/%d%s %s", state.global_step, state.max_steps, self.timing(state), fields)
        if "loss" in logs:
            self.last_loss = logs["loss"]
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(state), refresh=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the bar (also when training stopped with an error)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def timing(self, state: Any) -> str:
        """` (1:02 elapsed, ~4:08 left)`; the time left from this session's pace ('' before training)."""
        if self.started is None:
            return ""
        elapsed = time.perf_counter() - self.started
        done, left = state.global_step - self.first_step, state.max_steps - state.global_step
        if left <= 0 or done <= 0:
            return f" ({clock(elapsed)} elapsed)"
        return f" ({clock(elapsed)} elapsed, ~{clock(elapsed * left / done)} left)"

    def tokens_per_second(self, state: Any) -> float | None:
        tokens = self.tokens * self.world_size or (getattr(state, "num_input_tokens_seen", 0) or 0) - self.first_tokens
        elapsed = time.perf_counter() - self.started if self.started is not None else 0.0
        return tokens / elapsed if tokens > 0 and elapsed > 0 else None

    def _postfix(self, state: Any) -> str:
        parts = []
        if isinstance(self.last_loss, (int, float)):
            parts.append(f"loss {self.last_loss:.4g}")
        rate = self.tokens_per_second(state)
        if rate is not None:
            parts.append(f"{rate:,.0f} tok/s")
        return ", ".join(parts)  # tqdm puts ", " before a postfix

    def count(self, batch: Any) -> None:
        """Add one collated batch's tokens (the non-padding ones, where an attention mask tells)."""
        self.pending += batch_tokens(batch)


def batch_tokens(batch: Any) -> int:
    """Tokens in a collated batch: the attention mask's ones, else every input id; 0 for anything else."""
    if not isinstance(batch, dict):
        return 0
    mask, ids = batch.get("attention_mask"), batch.get("input_ids")
    if hasattr(mask, "sum"):
        return int(mask.sum())
    return int(ids.numel()) if hasattr(ids, "numel") else 0


class CountTokens:
    """A data collator that also counts the tokens of each batch for `TrainingProgress`."""

    def __init__(self, collator: Any, progress: TrainingProgress) -> None:
        self.collator = collator
        self.progress = progress

    def __call__(self, features: Any) -> Any:
        batch = self.collator(features)
        self.progress.count(batch)
        return batch


def count_tokens(trainer: Any) -> None:
    """Let the trainer's TrainingProgress count the tokens its data collator puts in each batch."""
    found = [c for c in getattr(getattr(trainer, "callback_handler", None), "callbacks", ()) if isinstance(c, TrainingProgress)]
    collator = getattr(trainer, "data_collator", None)
    if found and callable(collator) and not isinstance(collator, CountTokens):
        trainer.data_collator = CountTokens(collator, found[0])


def clock(seconds: float) -> str:
    """1:02, 1:02:03."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def callbacks_for(recipe: Recipe, output_dir: Path, vocab_size: int) -> list[Any]:
    from llmft.launch.ranks import is_main_process

    callbacks: list[Any] = [TrainingProgress()]
    if recipe.stage.traits.next_token_loss:  # ln(vocab) says nothing about pairwise, KTO or policy losses
        callbacks.insert(0, RandomInitAlarm(vocab_size, recipe.model.path))
    if "tensorboard" in recipe.training.report_to and is_main_process():
        callbacks.append(tensorboard_callback(output_dir / TENSORBOARD_DIR))
    if is_main_process():
        callbacks += tracker_callbacks(recipe.training.report_to, output_dir)  # wandb, mlflow
    callbacks.append(CompleteCheckpoints(keep=recipe.training.save_total_limit))  # last: the manifest ends each save
    return callbacks


def tensorboard_callback(log_dir: Path) -> Any:
    """transformers' TensorBoard callback writing to `log_dir` only. Given just a writer, it still
    sets its own folder to <output_dir>/runs/<date>_<host> when training begins, and opens a writer
    there for anything logged after training ends (the final evaluation) or after a resume: so its
    folder is set here, and every writer it opens, first or later, writes to `log_dir`."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(log_dir)
    return callback


class CompleteCheckpoints(TrainerCallback):
    """After each checkpoint-N/ is saved (every process has written its part): copy the run's base
    fingerprint into it (an adapter continued or merged from a checkpoint is checked against its
    base too), give its weight files the usual mode (safetensors writes them owner-only), write its
    manifest, the last file of the save (`llmft.checkpoint`), then apply
    `training.save_total_limit` (`keep`): llmft rotates checkpoints itself, once a newer one is
    complete, never before. Attached last, so no other callback writes into the checkpoint after
    its manifest."""

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
                usual_file_modes(checkpoint)
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
