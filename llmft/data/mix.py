"""`data.mix: interleave`: records drawn one at a time from several sources, each draw from source i
with probability p_i (`DatasetSpec.probability`), seeded, so the same seed gives the same sequence.

The same sampler serves records held in memory and streamed ones: a source is a function that opens
it afresh (`all_exhausted` starts a source that ran out again until every source has run out once,
as `datasets.interleave_datasets` does)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

T = TypeVar("T")
Stop = Literal["first_exhausted", "all_exhausted"]


def interleave(
    sources: Sequence[Callable[[], Iterator[T]]], probabilities: Sequence[float], stop: Stop, rng: random.Random
) -> Iterator[tuple[int, T]]:
    """(source index, record) drawn by `probabilities` until `stop`. A source with probability 0 is
    never drawn (and counts as run out)."""
    if len(sources) != len(probabilities):
        raise ValueError("one probability per source")
    opened = [source() for source in sources]
    exhausted = [p <= 0 for p in probabilities]
    indices = range(len(sources))
    while True:
        i = rng.choices(indices, weights=probabilities)[0]
        try:
            record = next(opened[i])
        except StopIteration:
            exhausted[i] = True
            if stop == "first_exhausted" or all(exhausted):
                return
            opened[i] = sources[i]()
            try:
                record = next(opened[i])
            except StopIteration:
                return  # an empty source never fills up: stop rather than draw forever
        yield i, record


def interleave_lists(
    items: Sequence[Sequence[T]], probabilities: Sequence[float], stop: Stop, seed: int | str
) -> tuple[list[T], list[int]]:
    """`interleave` over records in memory: the mixed records and how many came from each source."""
    counts = [0] * len(items)
    out: list[T] = []
    factories = [lambda part=part: iter(part) for part in items]
    for i, record in interleave(factories, probabilities, stop, random.Random(f"{seed}:mix")):
        counts[i] += 1
        out.append(record)
    return out, counts
