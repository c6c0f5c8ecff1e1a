"""Progress a person can see: a tqdm bar (step, elapsed, ETA) when stderr is a terminal, plain log
lines at every quarter when it is not (a file, CI)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("llmft")
T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """Yield `items` (`total` of them) while showing how far along `desc` is."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        # explicit disable=False: `llmft`'s CLI sets TQDM_DISABLE for the libraries' own bars
        yield from tqdm(items, total=total, desc=desc, unit="batch", file=sys.stderr, disable=False, leave=False)
        return
    started, marks = time.perf_counter(), {round(total * q / 4) for q in (1, 2, 3)} if total >= 4 else set()
    for done, item in enumerate(items, start=1):
        yield item
        if done in marks:
            elapsed = time.perf_counter() - started
            log.info("%s: %d/%d (%.0f s, about %.0f s left)", desc, done, total, elapsed, elapsed * (total - done) / done)
