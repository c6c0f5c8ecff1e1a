"""Faults injected into real runs of the tiny model, each ending in an exact resume (the losses of an
uninterrupted run within 1e-5) or exit 2 naming the file: kill -9 in the middle of a save, a
truncated weights file, a missing optimizer file, a full disk (a small tmpfs where this machine
lets us mount one, else a simulated ENOSPC), a moved run directory, an older llmft's checkpoints
without a manifest."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONVERSATIONS, make_recipe, write_jsonl
from safetensors.torch import load_file
from transformers import TrainerCallback

import llmft.callbacks
from llmft.cli import EXIT_USER, main
from llmft.config import validate_recipe
from llmft.errors import UserError
from llmft.resume import checkpoints, problems
from llmft.run import train
from llmft.rundir import BASE_FINGERPRINT, CHECKPOINT_MANIFEST, TRAIN_RESULTS

KEY = "training.resume_from_checkpoint"
WEIGHTS = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}


def recipe(model_dir: Path, data: Path, out: Path, mode: str, **training) -> dict:
    settings = {"max_steps": 6, "micro_batch_size": 2, "learning_rate": 5e-3, "save_strategy": "steps", "save_steps": 3}
    return make_recipe(model_dir, data, out, mode=mode, data={"cache": False}, training={**settings, **training})


def losses(history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_resumed_exactly(straight, resumed, out: Path, mode: str) -> None:
    first, second = losses(straight.log_history), losses(resumed.log_history)
    assert sorted(second) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert abs(first[step] - second[step]) < 1e-5, (step, first[step], second[step])
    a, b = load_file(str(straight.output_dir / WEIGHTS[mode])), load_file(str(out / WEIGHTS[mode]))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"messages": CONVERSATIONS[i % len(CONVERSATIONS)]} for i in range(16)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory):
    """One uninterrupted run per mode (checkpoint-3, checkpoint-6, the final model): the losses every
    resume must reproduce, and the run directory the damage tests copy and damage."""
    runs = {}

    def run(mode: str):
        if mode not in runs:
            out = tmp_path_factory.mktemp(f"straight-{mode}") / "run"
            runs[mode] = train(validate_recipe(recipe(tiny_model_dir, data, out, mode)))
        return runs[mode]

    return run


def copy_run(source: Path, destination: Path) -> Path:
    """The run directory copied elsewhere: output.dir changes, which a resume allows."""
    shutil.copytree(source, destination)
    return destination


def resume(model_dir: Path, data: Path, out: Path, mode: str, caplog, wanted: str = "auto"):
    with caplog.at_level("INFO", logger="llmft"):
        return train(validate_recipe(recipe(model_dir, data, out, mode, resume_from_checkpoint=wanted)))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- damaged checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_truncated_weights_are_skipped_by_auto(mode, straight, tiny_model_dir, data, tmp_path, caplog):
    out = copy_run(straight(mode).output_dir, tmp_path / "run")
    name = WEIGHTS[mode]
    cut_in_half(out / "checkpoint-6" / name)
    resumed = resume(tiny_model_dir, data, out, mode, caplog)
    assert f"{KEY}: auto skips checkpoint-6: {name} is cut short: " in caplog.text
    assert f"{KEY}: auto continues from checkpoint-3, the newest complete checkpoint" in caplog.text
    assert "resuming checkpoint-3" in caplog.text
    assert_resumed_exactly(straight(mode), resumed, out, mode)


def test_a_missing_optimizer_file_is_skipped_by_auto(straight, tiny_model_dir, data, tmp_path, caplog):
    out = copy_run(straight("full").output_dir, tmp_path / "run")
    (out / "checkpoint-6" / "optimizer.pt").unlink()
    resumed = resume(tiny_model_dir, data, out, "full", caplog)
    assert f"{KEY}: auto skips checkpoint-6: optimizer.pt is missing (the manifest lists it, " in caplog.text
    assert_resumed_exactly(straight("full"), resumed, out, "full")


@pytest.mark.usefixtures("restore_process_state")
@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncate", "model.safetensors is cut short: {half} bytes, the manifest says {size}"),
        ("unlink", "optimizer.pt is missing (the manifest lists it, "),
    ],
)
def test_a_named_damaged_checkpoint_is_exit_2_naming_the_file(damage, expected, straight, tiny_model_dir, data, tmp_path, capsys):
    out = copy_run(straight("full").output_dir, tmp_path / "run")
    checkpoint = out / "checkpoint-6"
    target = checkpoint / ("model.safetensors" if damage == "truncate" else "optimizer.pt")
    size = target.stat().st_size
    if damage == "truncate":
        cut_in_half(target)
    else:
        target.unlink()
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_model_dir, data, out, "full", resume_from_checkpoint=str(checkpoint))))
    assert main(["train", str(path)]) == EXIT_USER
    err = capsys.readouterr().err
    assert f"error: {KEY}: {checkpoint} cannot be resumed from: " + expected.format(half=size // 2, size=size) in err
    assert "internal error" not in err and "Traceback" not in err


# --- kill -9 --------------------------------------------------------------------------------------

#: The run in a child process, held in the middle of writing checkpoint-6 (its weights written, not
#: yet its optimizer, RNG or trainer state) until the test kills it.
CHILD = """
import json, sys, time
from pathlib import Path
from transformers import Trainer
from llmft.config import validate_recipe
from llmft.run import train

raw, marker = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
original = Trainer._save_optimizer_and_scheduler

def held(self, output_dir):
    if output_dir.endswith("checkpoint-6"):
        marker.touch()
        time.sleep(600)
    return original(self, output_dir)

Trainer._save_optimizer_and_scheduler = held
train(validate_recipe(raw))
"""


def test_kill_9_in_the_middle_of_a_save_then_auto_resumes_exactly(straight, tiny_model_dir, data, tmp_path, caplog):
    out, marker = tmp_path / "run", tmp_path / "saving-checkpoint-6"
    raw = tmp_path / "recipe.json"
    raw.write_text(json.dumps(recipe(tiny_model_dir, data, out, "full")))
    log = tmp_path / "child.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(raw), str(marker)], stderr=stderr)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert child.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the child never reached checkpoint-6"
            time.sleep(0.2)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (out / "checkpoint-6" / "model.safetensors").is_file()  # half a checkpoint on disk
    assert not (out / "checkpoint-6" / CHECKPOINT_MANIFEST).exists()
    assert [p.name for p in checkpoints(out)] == ["checkpoint-3"]

    resumed = resume(tiny_model_dir, data, out, "full", caplog)
    assert (
        f"{KEY}: auto skips checkpoint-6: {CHECKPOINT_MANIFEST} is missing: its save did not finish "
        "(checkpoint-3, before it, has one)"
    ) in caplog.text
    assert_resumed_exactly(straight("full"), resumed, out, "full")


# --- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk, or None where it cannot be mounted (not root, no mount; or
    LLMFT_TEST_NO_TMPFS set, to run the simulated full disk here)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("LLMFT_TEST_NO_TMPFS"):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
        mounted = result.returncode == 0
    try:
        yield disk if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system until `leave` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


class FillDisk(TrainerCallback):
    """Just before the save of `step` (or at the end of training: the final save), leave `leave` bytes."""

    def __init__(self, disk: Path, leave: int, step: int | None):
        self.disk, self.leave, self.step = disk, leave, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            fill(self.disk, self.leave)

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            fill(self.disk, self.leave)


def simulate_full_disk(monkeypatch, what: str) -> None:
    """Without a tmpfs: torch.save (the optimizer) or safetensors (the weights, via transformers) raise ENOSPC."""
    if what == "optimizer":
        real = torch.save

        def save(obj, f, *a, **k):
            if "checkpoint-6" in str(f):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
        return
    import transformers.modeling_utils as modeling_utils

    real_st = modeling_utils.safe_save_file

    def save_st(tensors, filename, *a, **k):
        if ("checkpoint-" not in str(filename)) if what == "final" else ("checkpoint-6" in str(filename)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_st(tensors, filename, *a, **k)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_st)


def page(size: int) -> int:
    return -(-size // 4096) * 4096


@pytest.mark.usefixtures("restore_process_state")
@pytest.mark.parametrize("what", ["weights", "optimizer", "final"])
def test_a_full_disk_is_exit_2_and_loses_nothing(what, straight, small_disk, tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """The save that finds the disk full (checkpoint-6's weights, its optimizer state, or the final
    model) stops the run with exit 2 naming the directory and the free space; checkpoint-6 never
    looks complete, checkpoint-3 stays intact, and once there is room auto continues to the
    uninterrupted run's losses."""
    reference = straight("full")
    out = (small_disk or tmp_path) / "run"
    if small_disk is None:
        simulate_full_disk(monkeypatch, what)
        filler = None
    else:
        written_later = {"trainer_state.json", CHECKPOINT_MANIFEST, BASE_FINGERPRINT}
        sizes = {p.name: p.stat().st_size for p in (reference.output_dir / "checkpoint-6").iterdir()}
        before_optimizer = sum(page(s) for n, s in sizes.items() if n not in written_later and not n.endswith((".pt", ".pth")))
        leave = 64 << 10 if what != "optimizer" else before_optimizer + (32 << 10)
        callback = FillDisk(small_disk, leave, step=None if what == "final" else 6)
        original = llmft.callbacks.callbacks_for
        monkeypatch.setattr(llmft.callbacks, "callbacks_for", lambda *a, **k: [callback, *original(*a, **k)])
        filler = small_disk / "filler"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_model_dir, data, out, "full")))

    assert main(["train", str(path)]) == EXIT_USER
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    if what == "final":
        assert f"error: saving the final model: writing to {out} failed (" in err
        assert "The checkpoints are intact (checkpoint-6 is the newest complete one)" in err
        assert not (out / TRAIN_RESULTS).exists()
        assert [p.name for p in checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    else:
        assert f"error: saving checkpoint-6: writing to {out / 'checkpoint-6'} failed (" in err
        assert f"checkpoint-6 has no {CHECKPOINT_MANIFEST}, so it is never resumed from, and checkpoint-3 is the newest" in err
        assert not (out / "checkpoint-6" / CHECKPOINT_MANIFEST).exists()
        assert [p.name for p in checkpoints(out)] == ["checkpoint-3"]
    if small_disk is not None:
        assert " free of 16.0 MiB on its file system: it is full. " in err
        reason = "a write failed: [enforce fail" if what == "optimizer" else "No space left on device, errno 28"
        assert reason in err
        filler.unlink()
    else:
        assert "No space left on device, errno 28" in err and " free of " in err
    monkeypatch.undo()
    assert problems(out / "checkpoint-3") == ([], False)  # intact, checksums and all

    resumed = train(validate_recipe(recipe(tiny_model_dir, data, out, "full", resume_from_checkpoint="auto")))
    assert_resumed_exactly(reference, resumed, out, "full")


# --- moved, and older llmft ----------------------------------------------------------------------


def test_a_moved_run_directory_resumes_exactly(straight, tiny_model_dir, data, tmp_path, caplog):
    """Interrupted after checkpoint-3 (as a copy of the finished run without what came later), then
    moved: it resumes where it now is."""
    first = copy_run(straight("lora").output_dir, tmp_path / "first")
    shutil.rmtree(first / "checkpoint-6")
    for name in (TRAIN_RESULTS, "trainer_state.json", "adapter_model.safetensors"):
        (first / name).unlink()
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(first, moved)
    resumed = resume(tiny_model_dir, data, moved, "lora", caplog)
    assert "resuming checkpoint-3" in caplog.text
    assert_resumed_exactly(straight("lora"), resumed, moved, "lora")
    assert yaml.safe_load((moved / "recipe.resolved.yaml").read_text())["output"]["dir"] == str(moved)


def test_an_older_llmfts_checkpoints_are_checked_by_their_structure(straight, tiny_model_dir, data, tmp_path, caplog):
    """No manifests anywhere (written before llmft had them): auto checks each checkpoint's files,
    says it could not check their contents, skips one without its optimizer state."""
    out = copy_run(straight("full").output_dir, tmp_path / "run")
    for manifest in out.glob(f"checkpoint-*/{CHECKPOINT_MANIFEST}"):
        manifest.unlink()
    (out / "checkpoint-6" / "optimizer.pt").unlink()
    resumed = resume(tiny_model_dir, data, out, "full", caplog)
    assert f"{KEY}: auto skips checkpoint-6: optimizer.pt is missing: resuming would restart the optimizer's state" in caplog.text
    assert (
        f"{KEY}: checkpoint-3 has no {CHECKPOINT_MANIFEST} (an older llmft's checkpoint, or a save cut off before its "
        "last step): its files were checked for presence and structure, not for their contents"
    ) in caplog.text
    assert_resumed_exactly(straight("full"), resumed, out, "full")
    assert (out / "checkpoint-6" / CHECKPOINT_MANIFEST).is_file()  # rewritten by this llmft, complete


def test_auto_with_every_checkpoint_damaged_starts_afresh_and_says_so(straight, tiny_model_dir, data, tmp_path, caplog):
    out = copy_run(straight("lora").output_dir, tmp_path / "run")
    (out / TRAIN_RESULTS).unlink()  # interrupted, not finished
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        cut_in_half(out / checkpoint / "adapter_model.safetensors")
    resumed = resume(tiny_model_dir, data, out, "lora", caplog)
    assert f"{KEY}: auto skips checkpoint-3: adapter_model.safetensors is cut short" in caplog.text
    assert f"{KEY}: auto found no complete checkpoint in {out} (see above); starting from step 0" in caplog.text
    assert_resumed_exactly(straight("lora"), resumed, out, "lora")


def test_a_finished_run_without_a_good_checkpoint_is_not_overwritten(straight, tiny_model_dir, data, tmp_path):
    out = copy_run(straight("lora").output_dir, tmp_path / "run")
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        (out / checkpoint / "optimizer.pt").unlink()
    with pytest.raises(UserError, match=rf"auto found no complete checkpoint-N in {out}, which holds a finished run"):
        train(validate_recipe(recipe(tiny_model_dir, data, out, "lora", resume_from_checkpoint="auto")))
