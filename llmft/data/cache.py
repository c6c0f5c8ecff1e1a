"""On-disk cache of tokenized data, keyed by everything that affects it.

The key hashes the data files' bytes, the tokenizer (vocabulary, merges, special tokens, chat
template), the `data:` options that change tokenization, the stage, the seed and the llmft
version. Any change gives a new key, so a stale cache is never read. Entries are written to a
temporary directory and renamed into place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmft import __version__
from llmft.config.data import DataConfig
from llmft.data import hub
from llmft.data.tokenize import Example

FORMAT_VERSION = 3  # 2: records that end after their last reply or train an empty reply are bad records; 3: reports keep lengths
#: `data:` keys that do not change the tokenized examples (applied after the cache).
NOT_IN_KEY = {"cache", "cache_dir", "num_proc", "packing", "group_by_length", "streaming"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmft" / "data"


def cache_root(data: DataConfig) -> Path:
    return Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()


def _hash_files(path: Path, digest: Any) -> None:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def fingerprint(stage: str, data: DataConfig, tokenizer: Any, seed: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    options = data.model_dump(mode="json", exclude=NOT_IN_KEY)
    digest.update(
        json.dumps(
            {"llmft": __version__, "format": FORMAT_VERSION, "stage": stage, "seed": seed, "data": options}, sort_keys=True
        ).encode()
    )
    for i, spec in enumerate([*data.train, *data.eval]):
        if hub.is_hub(spec.path):  # the cached copy's own fingerprint: a new revision gives a new key
            digest.update(hub.fingerprint(hub.parse(spec.path, f"data entry {i}"), spec.path).encode())
        else:
            _hash_files(Path(spec.path).expanduser(), digest)
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    return digest.hexdigest()


def _to_arrays(examples: list[Example]) -> dict[str, np.ndarray]:
    lengths = np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=len(examples))
    ids = np.fromiter((t for e in examples for t in e.input_ids), dtype=np.int32, count=int(lengths.sum()))
    labels = np.fromiter((t for e in examples for t in e.labels), dtype=np.int32, count=int(lengths.sum()))
    return {"input_ids": ids, "labels": labels, "offsets": np.concatenate([[0], np.cumsum(lengths)])}


def _from_arrays(arrays: Any) -> list[Example]:
    ids, labels, offsets = arrays["input_ids"].tolist(), arrays["labels"].tolist(), arrays["offsets"].tolist()
    return [Example(ids[a:b], labels[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def save(root: Path, key: str, splits: dict[str, list[Example]], meta: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)  # mkdtemp makes it owner-only; the entry is renamed into place as it is
    try:
        for name, examples in splits.items():
            np.savez(staging / f"{name}.npz", **_to_arrays(examples))
        (staging / "meta.json").write_text(json.dumps({**meta, "splits": sorted(splits)}, indent=1))
        if final.exists():  # another process finished the same key first: same content
            shutil.rmtree(staging)
        else:
            try:
                os.replace(staging, final)
            except OSError:  # lost the race to another rank between the check and the rename
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def load(root: Path, key: str) -> tuple[dict[str, list[Example]], dict[str, Any]] | None:
    entry = root / key
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    splits = {}
    for name in meta["splits"]:
        with np.load(entry / f"{name}.npz") as arrays:
            splits[name] = _from_arrays(arrays)
    return splits, meta
