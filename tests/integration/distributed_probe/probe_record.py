"""What a training process records for the distributed tests: each micro-batch's token ids, the
world size the Trainer saw, and the DeepSpeed config it ran with. Used in launched processes (via
sitecustomize) and, with `install`, in-process for the single-process reference runs."""

from __future__ import annotations

import json
import os
from pathlib import Path


def install(run_module, probe_dir: str) -> None:
    """Wrap `llmft.run._train_guarded` so the trainer it gets records its micro-batches (and, with
    LLMFT_TEST_SIGTERM=STEP,RANK, sends SIGTERM to that one process after that step)."""
    original = run_module._train_guarded

    def guarded(trainer, checkpoint):
        batches = []
        step = trainer.training_step
        if os.environ.get("LLMFT_TEST_SIGTERM"):
            at, rank = map(int, os.environ["LLMFT_TEST_SIGTERM"].split(","))
            if int(os.environ.get("RANK", "0")) == rank:
                trainer.add_callback(_sigterm_at(at))

        def training_step(model, inputs, *args, **kwargs):
            batches.append(inputs["input_ids"].tolist())
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = training_step
        result = original(trainer, checkpoint)
        plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
        record = {
            "world_size": trainer.args.world_size,
            "processes": trainer.accelerator.num_processes,
            "deepspeed": plugin.deepspeed_config if plugin is not None else None,
            "batches": batches,
        }
        Path(probe_dir).mkdir(parents=True, exist_ok=True)
        (Path(probe_dir) / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record, default=str))
        return result

    run_module._train_guarded = guarded


def _sigterm_at(at: int):
    import signal

    from transformers import TrainerCallback

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == at:
                os.kill(os.getpid(), signal.SIGTERM)

    return SigtermAt()
