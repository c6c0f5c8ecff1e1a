"""What makes a checkpoint-N/ complete, and saving one (or the final model) without leaving
anything that looks complete when it is not.

A save ends with a manifest (`rundir.CHECKPOINT_MANIFEST`), written last: every file the save wrote,
with its size and a checksum of its whole contents, taken after that file was flushed to disk
(fsync), then the manifest itself written to a temporary name, flushed and renamed into place. A
manifest on disk therefore means every file it lists reached the disk whole; a checkpoint without
one never finished saving (or was written by an llmft from before manifests). Resuming checks a
checkpoint against its manifest (`manifest_problems`): every file present, of its size, with its
checksum, safetensors headers agreeing with their files, and what a resume needs (the trainer
state, the weights, the optimizer state) there.

The checksum is xxh3-64 over the whole file. The damage looked for is accidental (writes lost in
a crash or power cut, a copy cut short, blocks left zeroed), not tampering, so a 64-bit
non-cryptographic hash is enough; xxh3 runs at several GB/s on one core, near the speed of reading
the file from the page cache, where SHA-256 runs at 0.5-2 GB/s. Nothing is sampled: a lost write
can be anywhere in a file. A save reads back what it just wrote (still in the page cache), and a
resume reads the checkpoint it is about to load. (`xxhash` comes with `datasets`.)

A checkpoint without a manifest can only be checked by its structure (`structure_problems`): the
files a resume needs present, safetensors headers agreeing with their file sizes, torch archives
with a readable index, JSON that parses. Which checkpoints get that benefit of the doubt is
`llmft.resume`'s rule.

A write that fails (disk full, quota, read-only file system, I/O error) is a `UserError` naming the
directory and the space left on its file system (`save_guard`), whatever the library that wrote
said (torch's archive writer reports a full disk as `unexpected pos`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmft.errors import UserError
from llmft.rundir import BASE_FINGERPRINT, CHECKPOINT_MANIFEST

FORMAT = 1
HASH = "xxh3_64"
_CHUNK = 8 << 20
_TEMPORARY = CHECKPOINT_MANIFEST + ".partial"
#: Weights a checkpoint may hold: full, sharded full, LoRA; DeepSpeed keeps its own under global_stepN/.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
#: How torch's archive writer (optimizer.pt, rng_state.pth, DeepSpeed's shards) words a failed write.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "basic_ios::clear", "PytorchStreamWriter failed")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # safetensors' io::Error

Problem = tuple[str, str]  # (file, what is wrong with it)


# --- listing ------------------------------------------------------------------------------------


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Every checkpoint-N/ directory, complete or not, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=step_of)


def has_manifest(checkpoint: Path) -> bool:
    return (checkpoint / CHECKPOINT_MANIFEST).is_file()


def _files(checkpoint: Path) -> list[str]:
    """Every file under `checkpoint` but the manifest, as sorted relative POSIX paths."""
    found = []
    for root, _, names in os.walk(checkpoint):
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(checkpoint).as_posix()
            if rel not in (CHECKPOINT_MANIFEST, _TEMPORARY) and path.is_file():
                found.append(rel)
    return sorted(found)


# --- writing ------------------------------------------------------------------------------------


def digest(path: Path, sync: bool = False) -> str:
    """xxh3-64 of the whole file (hex); with `sync`, the file is flushed to disk too."""
    import xxhash

    hasher = xxhash.xxh3_64()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while count := f.readinto(buffer):
            hasher.update(view[:count])
        if sync:
            os.fsync(f.fileno())
    return hasher.hexdigest()


def _sync_dir(directory: Path) -> None:
    """Make the names in `directory` durable (some file systems cannot: nothing to do there)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_manifest(checkpoint: Path, step: int) -> Path:
    """Record every file of a saved checkpoint (flushing each to disk first), then the manifest,
    atomically: the last thing a save writes."""
    files = {}
    for rel in _files(checkpoint):
        path = checkpoint / rel
        files[rel] = {"size": path.stat().st_size, HASH: digest(path, sync=True)}
    for directory in {(checkpoint / rel).parent for rel in files} | {checkpoint}:
        _sync_dir(directory)
    temporary = checkpoint / _TEMPORARY
    with open(temporary, "w") as f:
        json.dump({"format": FORMAT, "step": step, "hash": HASH, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, checkpoint / CHECKPOINT_MANIFEST)
    _sync_dir(checkpoint)
    _sync_dir(checkpoint.parent)
    return checkpoint / CHECKPOINT_MANIFEST


def drop_manifest(checkpoint: Path) -> None:
    """Before a checkpoint-N/ is (re)written: while its files change it must not look complete."""
    (checkpoint / CHECKPOINT_MANIFEST).unlink(missing_ok=True)
    (checkpoint / _TEMPORARY).unlink(missing_ok=True)


def copy_fingerprint(output_dir: Path, checkpoint: Path) -> None:
    """The run's base fingerprint into the checkpoint, so an adapter continued or merged from it is
    checked against its base too (a few KB)."""
    source = output_dir / BASE_FINGERPRINT
    if source.is_file() and checkpoint.is_dir():
        shutil.copyfile(source, checkpoint / BASE_FINGERPRINT)


def rotate(output_dir: Path, keep: int | None) -> list[Path]:
    """`training.save_total_limit`: delete the checkpoints older than the `keep` newest complete ones
    (with a manifest); one that failed or is being written never counts, so no complete checkpoint
    goes until a newer one is complete. Returns what was deleted."""
    if not keep:
        return []
    dirs = checkpoint_dirs(output_dir)
    complete = [p for p in dirs if has_manifest(p)]
    if len(complete) <= keep:
        return []
    oldest_kept = step_of(complete[-keep])
    doomed = [p for p in dirs if step_of(p) < oldest_kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --- checking -----------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file whose header does not describe exactly the bytes the file holds."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is cut short: {size} bytes, not even a safetensors header"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"is cut short: its header alone should take {length} bytes, the file holds {size}"
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "has an unreadable safetensors header"
    expected = 8 + length + int(end)
    if size < expected:
        return f"is cut short: {size} bytes, its header describes {expected}"
    if size > expected:
        return f"is {size} bytes, its header describes {expected}"
    return None


def _structure_problem(path: Path) -> str | None:
    """What can be told wrong with a file without its checksum."""
    name = path.name
    if name.endswith(".safetensors"):
        return _safetensors_problem(path)
    if name.endswith(".json"):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            return f"is not readable JSON ({exc})"
        return None
    if name.endswith((".pt", ".pth")):
        try:
            with zipfile.ZipFile(path):  # reads the archive's index at its end: a file cut short has none
                pass
        except (zipfile.BadZipFile, OSError):
            return "is not a complete torch archive (cut short?)"
    return None


def _missing_parts(checkpoint: Path, accounted: set[str]) -> list[Problem]:
    """What a resume needs that the checkpoint lacks (files already reported in `accounted` are left out)."""
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.iterdir())
    found: list[Problem] = []
    if TRAINER_STATE not in accounted and not (checkpoint / TRAINER_STATE).is_file():
        found.append((TRAINER_STATE, "is missing (the Trainer writes it last: the save did not finish)"))
    if not deepspeed and not any((checkpoint / w).is_file() or w in accounted for w in WEIGHTS):
        found.append((" or ".join(WEIGHTS[::2]), "is missing: the checkpoint holds no model weights"))
    if not deepspeed and OPTIMIZER not in accounted and not (checkpoint / OPTIMIZER).is_file():
        found.append((OPTIMIZER, "is missing: resuming would restart the optimizer's state from zero"))
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file() and "model.safetensors.index.json" not in accounted:
        with contextlib.suppress(ValueError, AttributeError):
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            found += [(s, "is missing (model.safetensors.index.json names it)") for s in shards if not (checkpoint / s).is_file()]
    return found


def manifest_problems(checkpoint: Path, contents: bool = True) -> list[Problem]:
    """What is wrong with a checkpoint that has a manifest, each naming its file; [] when every file
    it lists is there, whole and (with `contents`) unchanged. Without `contents` only sizes and
    headers are checked (no file is read through)."""
    path = checkpoint / CHECKPOINT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("hash") != HASH:
            what = f"format {manifest.get('format')!r}, hash {manifest.get('hash')!r}"
            return [(CHECKPOINT_MANIFEST, f"is of a kind this llmft does not know ({what})")]
        files: dict[str, Any] = manifest["files"]
        if not all(isinstance(e.get("size"), int) and isinstance(e.get(HASH), str) for e in files.values()):
            raise ValueError("an entry without its size or checksum")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        return [(CHECKPOINT_MANIFEST, f"is unreadable ({exc})")]
    found: list[Problem] = []
    for rel, entry in files.items():
        file = checkpoint / rel
        if not file.is_file():
            found.append((rel, f"is missing (the manifest lists it, {_bytes(entry['size'])})"))
            continue
        size = file.stat().st_size
        if size != entry["size"]:
            how = "cut short" if size < entry["size"] else "longer than saved"
            found.append((rel, f"is {how}: {size} bytes, the manifest says {entry['size']}"))
            continue
        problem = _safetensors_problem(file) if rel.endswith(".safetensors") else None
        if problem is None and contents and digest(file) != entry[HASH]:
            problem = "does not match its checksum in the manifest: its contents changed after the save"
        if problem:
            found.append((rel, problem))
    return found + _missing_parts(checkpoint, set(files))


def structure_problems(checkpoint: Path) -> list[Problem]:
    """What is wrong with a checkpoint that has no manifest, as far as its files' structure tells."""
    found = _missing_parts(checkpoint, set())
    for rel in _files(checkpoint):
        problem = _structure_problem(checkpoint / rel)
        if problem:
            found.append((rel, problem))
    return found


def describe(problems: list[Problem], shown: int = 4) -> str:
    """`a is ...; b is ...` (the first `shown`, then how many more)."""
    text = "; ".join(f"{rel} {what}" for rel, what in problems[:shown])
    return text + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")


# --- saving -------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def write_failure(exc: BaseException) -> str | None:
    """What went wrong if `exc` is a failed write (any OS error; safetensors' and torch's ways of
    reporting one), else None."""
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError)):  # a collective between processes, not the disk
            return None
        if isinstance(e, OSError):
            if e.errno:
                return f"{e.strerror or os.strerror(e.errno)}, errno {e.errno}"
            return str(e) or type(e).__name__
        text = str(e)
        match = _RUST_OS_ERROR.search(text)
        if match:
            code = int(match.group(1))
            return f"{os.strerror(code)}, errno {code}"
        if any(marker in text for marker in _TORCH_WRITE_FAILED):
            return f"a write failed: {text.strip().splitlines()[0]}"
    return None


#: Less free than this after a failed write: the file system is full.
_FULL = 1 << 20


def free_space(directory: Path) -> str:
    """`N free of M` on the file system holding `directory` (or its nearest existing parent)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    full = ": it is full" if usage.free < _FULL else ""
    return f"{_bytes(usage.free)} free of {_bytes(usage.total)} on its file system{full}"


def newest_complete(output_dir: Path, besides: Path | None = None) -> Path | None:
    """The newest checkpoint with a manifest (not `besides`), unverified: for messages."""
    found = [p for p in checkpoint_dirs(output_dir) if has_manifest(p) and p != besides]
    return found[-1] if found else None


@contextlib.contextmanager
def save_guard(directory: Path, what: str, then: str) -> Iterator[None]:
    """A failed write inside becomes a UserError naming `directory` and its free space; `what` was
    being saved, `then` says what to do. Any other error passes through."""
    try:
        yield
    except Exception as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        raise UserError(f"saving {what}: writing to {directory} failed ({reason}); {free_space(directory)}. {then}") from exc


def checkpoint_guard(checkpoint: Path) -> contextlib.AbstractContextManager[None]:
    """`save_guard` for a checkpoint-N/: says that it does not count and which one does."""
    earlier = newest_complete(checkpoint.parent, besides=checkpoint)
    kept = f"{earlier.name} is the newest complete checkpoint" if earlier else "no earlier checkpoint was complete"
    return save_guard(
        checkpoint,
        checkpoint.name,
        f"Nothing earlier was lost: {checkpoint.name} has no {CHECKPOINT_MANIFEST}, so it is never resumed from, and "
        f"{kept}. Free space (or lower training.save_total_limit), then continue with training.resume_from_checkpoint=auto.",
    )


def final_guard(output_dir: Path) -> contextlib.AbstractContextManager[None]:
    """`save_guard` for the final model, written into output.dir itself."""
    earlier = newest_complete(output_dir)
    if earlier is None:
        then = "No checkpoint was written to continue from: free space, then train again."
    else:
        then = (
            f"The checkpoints are intact ({earlier.name} is the newest complete one): free space, then run again with "
            "training.resume_from_checkpoint=auto to write the final model from it."
        )
    return save_guard(output_dir, "the final model", then)


def guard_trainer_saves(trainer: Any) -> None:
    """Wrap a HF Trainer's checkpoint save (`_save_checkpoint`, which TRL's trainers extend; the
    callback `CompleteCheckpoints` writes the manifest after it): the checkpoint-N/ being written
    first loses any manifest a run before left in it, and a failed write is a UserError."""
    original = trainer._save_checkpoint

    def save(model: Any, trial: Any = None) -> None:
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        if trainer.args.should_save:
            drop_manifest(checkpoint)
        with checkpoint_guard(checkpoint):
            original(model, trial)

    trainer._save_checkpoint = save
