"""What makes a checkpoint complete (its manifest, checked file by file), the rule for checkpoints
without one, rotation that never removes a complete checkpoint for a failed one, and failed writes
reported as what they are. Synthetic checkpoints: no model is trained here."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmft.checkpoint import (
    checkpoint_guard,
    final_guard,
    manifest_problems,
    rotate,
    structure_problems,
    write_failure,
    write_manifest,
)
from llmft.errors import UserError
from llmft.resume import checkpoints, problems
from llmft.rundir import CHECKPOINT_MANIFEST


def fake_checkpoint(run: Path, step: int, manifest: bool = True, weights: str = "model.safetensors") -> Path:
    """What the Trainer writes into checkpoint-N/ (weights, optimizer, scheduler, RNG, state)."""
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32) * step}, str(path / weights))
    torch.save({"state": {0: {"exp_avg": torch.ones(64) * step}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if manifest:
        write_manifest(path, step)
    return path


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def text(found: list[tuple[str, str]]) -> str:
    return "; ".join(f"{rel} {what}" for rel, what in found)


def test_the_manifest_lists_every_file_with_its_size_and_checksum(tmp_path):
    checkpoint = fake_checkpoint(tmp_path, 3)
    manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["step"] == 3 and manifest["hash"] == "xxh3_64"
    assert sorted(manifest["files"]) == [
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    entry = manifest["files"]["optimizer.pt"]
    assert entry["size"] == (checkpoint / "optimizer.pt").stat().st_size and len(entry["xxh3_64"]) == 16
    assert manifest_problems(checkpoint) == []
    assert not list(checkpoint.glob("*.partial"))


def test_damage_is_named_file_by_file(tmp_path):
    checkpoint = fake_checkpoint(tmp_path, 3)
    cut(checkpoint / "model.safetensors")
    assert "model.safetensors is cut short" in text(manifest_problems(checkpoint))

    checkpoint = fake_checkpoint(tmp_path, 6)
    (checkpoint / "optimizer.pt").unlink()
    found = manifest_problems(checkpoint)
    assert found == [("optimizer.pt", found[0][1])] and found[0][1].startswith("is missing (the manifest lists it")

    checkpoint = fake_checkpoint(tmp_path, 9)
    data = bytearray((checkpoint / "optimizer.pt").read_bytes())
    data[100:200] = bytes(100)  # a block lost in a crash: same size, zeros inside
    (checkpoint / "optimizer.pt").write_bytes(bytes(data))
    assert "optimizer.pt does not match its checksum" in text(manifest_problems(checkpoint))
    assert manifest_problems(checkpoint, contents=False) == []  # sizes and headers alone cannot see it

    (checkpoint / CHECKPOINT_MANIFEST).write_text("{not json")
    assert f"{CHECKPOINT_MANIFEST} is unreadable" in text(manifest_problems(checkpoint))


def test_safetensors_headers_are_checked_without_a_manifest(tmp_path):
    checkpoint = fake_checkpoint(tmp_path, 3, manifest=False, weights="adapter_model.safetensors")
    assert structure_problems(checkpoint) == []
    cut(checkpoint / "adapter_model.safetensors", 0.9)
    assert "adapter_model.safetensors is cut short" in text(structure_problems(checkpoint))
    (checkpoint / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    assert "adapter_model.safetensors is cut short" in text(structure_problems(checkpoint))
    cut(checkpoint / "optimizer.pt")
    assert "optimizer.pt is not a complete torch archive" in text(structure_problems(checkpoint))
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "trainer_state.json").unlink()
    found = text(structure_problems(checkpoint))
    assert "optimizer.pt is missing: resuming would restart the optimizer's state from zero" in found
    assert "trainer_state.json is missing" in found


def test_checkpoints_without_a_manifest_the_rule(tmp_path):
    """Before every manifest: an older llmft's checkpoint, checked by structure. After one: a save
    that did not finish, never used."""
    old = fake_checkpoint(tmp_path, 3, manifest=False)
    new = fake_checkpoint(tmp_path, 6)
    unfinished = fake_checkpoint(tmp_path, 9, manifest=False)
    assert problems(old) == ([], True)
    assert problems(new) == ([], False)
    found, _ = problems(unfinished)
    assert text(found) == f"{CHECKPOINT_MANIFEST} is missing: its save did not finish (checkpoint-6, before it, has one)"
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-6"]


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    failed = fake_checkpoint(tmp_path, 6, manifest=False)  # e.g. its save hit a full disk
    assert rotate(tmp_path, keep=1) == [tmp_path / "checkpoint-2"]  # checkpoint-4 stays: 6 does not count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    write_manifest(failed, 6)
    assert rotate(tmp_path, keep=1) == [tmp_path / "checkpoint-4"]
    assert rotate(tmp_path, keep=None) == []


@pytest.mark.parametrize(
    "exc, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device, errno 28"),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "errno 28"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "a write failed: [enforce"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
        (ValueError("a bug"), None),
        (ConnectionError("peer went away"), None),
    ],
)
def test_failed_writes_are_recognised(exc, reason):
    found = write_failure(exc)
    assert found == reason if reason is None else reason in found


def test_a_failed_checkpoint_save_names_the_directory_and_the_free_space(tmp_path):
    fake_checkpoint(tmp_path, 3)
    target = tmp_path / "checkpoint-6"
    with pytest.raises(UserError) as info, checkpoint_guard(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert message.startswith(f"saving checkpoint-6: writing to {target} failed (No space left on device, errno 28); ")
    assert " free of " in message and "checkpoint-3 is the newest complete checkpoint" in message
    with (
        pytest.raises(UserError, match=r"saving the final model: .*\(checkpoint-3 is the newest complete one\)"),
        final_guard(tmp_path),
    ):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(ValueError), checkpoint_guard(target):  # not a write: passes through
        raise ValueError("a bug")
