"""A hub id (`model.path: org/name` that is no local directory) is checked before anything tries to
fetch it: offline (`HF_HUB_OFFLINE=1`) it must be in the Hugging Face cache; online the hub must
answer one request within a few seconds. Otherwise the run stops at once with one line saying what
to do, instead of huggingface_hub's retries (a minute and some forty lines) ending in the same
failure."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

#: Seconds the one request to the hub may take before it counts as unreachable.
PROBE_TIMEOUT = 5.0


def looks_local(path: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return path.startswith(("/", "./", "../", "~", ".")) or path.count("/") > 1 or "\\" in path


def is_hub_id(path: str) -> bool:
    """`name` or `org/name` that is not a local path (what transformers would fetch from the hub)."""
    return not Path(os.path.expanduser(path)).exists() and not looks_local(path)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds a downloaded snapshot of `repo_id`."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in snapshots.iterdir())


@functools.lru_cache(maxsize=1)
def unreachable() -> str | None:
    """Why the hub cannot be reached (one request, `PROBE_TIMEOUT` seconds, through huggingface_hub's
    own client and so its proxies); None when it answers. Asked once per process."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except Exception as exc:  # DNS, refused, timed out, proxy: every way of not getting an answer
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    return None


def hub_problem(repo_id: str, key: str) -> str | None:
    """What stops `repo_id` (named by recipe key `key`) from loading on this machine, worded with the
    fix; None when it is cached or the hub answers."""
    from huggingface_hub import constants

    if offline():
        if in_cache(repo_id):
            return None
        return (
            f"{repo_id} is not a local directory, and with HF_HUB_OFFLINE=1 it must be in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), which does not hold it; set {key} to a local model directory, or download "
            "it once where the hub can be reached"
        )
    why = unreachable()
    if why is None:
        return None
    if in_cache(repo_id):
        return (
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}: {why}) to check {repo_id}; it is in the "
            f"Hugging Face cache: run with HF_HUB_OFFLINE=1 to use that copy, or set {key} to a local model directory"
        )
    return (
        f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}: {why}) to download {repo_id}; set {key} to a local "
        "model directory, or run with HF_HUB_OFFLINE=1 once the model is in the Hugging Face cache"
    )


def hub_problems(model: Any) -> list[tuple[str, str]]:
    """(key, problem) for the hub ids a `model:` section names (`path`, `tokenizer`) that this
    machine cannot load."""
    found = []
    for key in ("path", "tokenizer"):
        value = getattr(model, key, None)
        if key == "tokenizer" and value == getattr(model, "path", None):
            continue  # said once, for model.path
        if value and is_hub_id(value):
            problem = hub_problem(value, f"model.{key}")
            if problem is not None:
                found.append((f"model.{key}", problem))
    return found
