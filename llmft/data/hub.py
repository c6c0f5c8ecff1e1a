"""Datasets on the Hugging Face Hub: a `data.train` / `data.eval` entry `path: hub:ID[:config][@split]`
(`hub:tatsu-lab/alpaca@train`, `hub:org/ds:subset@validation`; the split defaults to `train`), read
through `datasets.load_dataset`. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) `datasets` reads the
copy in its own cache (HF_DATASETS_CACHE); `hub_problem` says before the model loads when that copy is
missing, so `llmft train`, `validate` and `plan` refuse it alike (llmft/preflight.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmft.errors import UserError

PREFIX = "hub:"
_REF = re.compile(r"^hub:(?P<id>[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?)(?::(?P<config>[\w.\-]+))?(?:@(?P<split>[\w.\-]+))?$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    config: str | None
    split: str

    @property
    def name(self) -> str:
        """How records of this source are named: `hub:ID@split` (`[row]` follows)."""
        return f"{PREFIX}{self.repo_id}{':' + self.config if self.config else ''}@{self.split}"


def is_hub(path: str) -> bool:
    return path.startswith(PREFIX)


def parse(path: str, key: str) -> HubRef:
    match = _REF.match(path)
    if match is None:
        raise UserError(
            f"{key}: {path!r} is not a hub dataset reference; write hub:ID[:config][@split], "
            "e.g. hub:tatsu-lab/alpaca@train or hub:org/ds:subset@validation"
        )
    return HubRef(match["id"], match["config"], match["split"] or "train")


def offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE or getattr(datasets.config, "HF_DATASETS_OFFLINE", False))


def load(ref: HubRef, key: str, streaming: bool = False) -> Any:
    """The split as a `datasets.Dataset` (memory-mapped from the cache) or, streaming, an
    `IterableDataset`; every failure a UserError naming `key` and what to do."""
    import datasets
    from datasets.utils.logging import disable_progress_bar, set_verbosity_error

    set_verbosity_error()  # "Using the latest cached version ...": the run log says where data came from
    disable_progress_bar()
    try:
        return datasets.load_dataset(ref.repo_id, ref.config, split=ref.split, streaming=streaming)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        raise UserError(f"{key}: cannot load {ref.name}: {_first_line(exc)}; {_fix(ref)}") from None


def rows(ref: HubRef, key: str, streaming: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of the split: `hub:ID@split[row]`."""
    for index, row in enumerate(load(ref, key, streaming)):
        yield f"{ref.name}[{index}]", row


def fingerprint(ref: HubRef, key: str) -> str:
    """What identifies the split's content, for llmft's tokenized-data cache key: datasets' own
    fingerprint of the cached copy (it follows the revision) and its files' sizes and times."""
    import os

    dataset = load(ref, key)
    files = [f["filename"] for f in getattr(dataset, "cache_files", [])]
    stamps = [f"{name}:{os.stat(name).st_size}:{os.stat(name).st_mtime_ns}" for name in files if os.path.exists(name)]
    return "|".join([str(getattr(dataset, "_fingerprint", ref.name)), *stamps])


def hub_problem(path: str, key: str, unreachable: Callable[[], str | None]) -> str | None:
    """What stops the hub dataset `path` (recipe key `key`) from loading on this machine, worded with
    the fix; None when it loads. Offline it must be in the datasets cache, with that config and split;
    online the hub must answer (`unreachable`: why not, or None) unless the cache holds it."""
    try:
        ref = parse(path, key)
    except UserError as exc:
        return str(exc).removeprefix(f"{key}: ")
    if not offline():
        why = unreachable()
        if why is None:
            return None
        problem = _cache_problem(ref)
        if problem is None:
            return None  # datasets falls back to the cached copy by itself
        return f"cannot reach the Hugging Face Hub ({why}) to download {ref.name}; {_fix(ref)}"
    problem = _cache_problem(ref)
    return None if problem is None else f"{ref.name}: {problem}; {_fix(ref)}"


def _cache_problem(ref: HubRef) -> str | None:
    """Why the datasets cache cannot give the split without the network; None when it can."""
    import datasets

    try:
        builder = _offline_builder(ref)
    except Exception as exc:  # noqa: BLE001 - not in the cache, ambiguous config, ...
        return f"not in the datasets cache ({datasets.config.HF_DATASETS_CACHE}): {_first_line(exc)}"
    splits = builder.info.splits or {}
    if splits and ref.split not in splits:
        return f"the cached copy has no split {ref.split!r} (it has {', '.join(splits)})"
    return None


def _offline_builder(ref: HubRef) -> Any:
    import datasets
    from datasets.utils.logging import set_verbosity_error

    set_verbosity_error()
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True  # look in the cache only: never the network here
    try:
        return datasets.load_dataset_builder(ref.repo_id, ref.config)
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _fix(ref: HubRef) -> str:
    return (
        f'download it once where the hub can be reached (python -c "import datasets; datasets.load_dataset('
        f"'{ref.repo_id}'{', ' + repr(ref.config) if ref.config else ''})\"), or point the entry at local files"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
