"""GRPO's rewards (`stage.rewards`), independent of TRL: each entry becomes a `Reward` that scores a
batch of `Sample`s, one float in [0, 1] (or None: no reward) per completion.

- `score(entry, completion, record, ...)`: one completion, one entry — what an evaluation calls to
  measure "accuracy under the same rewards GRPO trains with".
- `load_rewards(entries, ...)`: every entry of a recipe, named as TRL logs them
  (`rewards/<name>/mean`), with their weights.
- `check_inputs(entries)`: what can be checked before a model loads (schema files, python imports).

The rules of each reward: `answers` (accuracy), `checks` (format, answer_line, json, length,
no_repeat, ends_cleanly), `custom` (python), `reward_model`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.config.rewards import (
    AccuracyReward,
    AnswerLineReward,
    EndsCleanlyReward,
    FormatReward,
    JsonReward,
    LengthReward,
    NoRepeatReward,
    PythonReward,
    RewardModelReward,
    RewardSpec,
)
from llmft.errors import UserError
from llmft.rewards import answers, checks, custom
from llmft.rewards.reward_model import load_scorer


@dataclass(frozen=True)
class Sample:
    """One completion to score, with what the rewards read besides its text."""

    completion: str
    record: Mapping[str, Any] = field(default_factory=dict)  # the record's columns (accuracy, python)
    completion_ids: Sequence[int] | None = None  # its tokens (ends_cleanly)
    prompt: Sequence[Mapping[str, Any]] = ()  # the conversation it answers (reward_model)
    reference: str | None = None  # the data's own reply to that prompt (length without target_chars)
    where: str = "<record>"  # the record's location, for errors


Batch = Callable[[Sequence[Sample]], list[float | None]]


@dataclass(frozen=True)
class Reward:
    """One `stage.rewards` entry, ready to score: `name` as TRL logs it, `weight`, and the batch function."""

    name: str
    weight: float
    key: str  # stage.rewards.N
    batch: Batch

    def __call__(self, samples: Sequence[Sample]) -> list[float | None]:
        return self.batch(samples)


def column(sample: Sample, name: str, key: str) -> Any:
    """The record's `name` column; a clear error when the record has none."""
    value = sample.record.get(name)
    if value is None:
        have = ", ".join(sorted(map(str, sample.record))) or "none"
        raise UserError(
            f"{sample.where}: the record has no column {name!r}, which {key} reads (its columns: {have}); add it, "
            f"rename yours with data.*.columns ({{{name}: your_column}}), or point {key} at another column"
        )
    return value


def _per_sample(score_one: Callable[[Sample], float | None]) -> Batch:
    return lambda samples: [score_one(s) for s in samples]


def json_schema_validator(path: str, key: str) -> Any:
    """The validator of the JSON Schema file at `path`; errors name `key`."""
    import jsonschema

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key}: file not found: {path}")
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{key}: {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise UserError(f"{key}: {path} holds a {type(schema).__name__}; a JSON Schema is an object")
    try:
        return checks.schema_validator(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.path)) or "the top level"
        raise UserError(f"{key}: {path} is not a valid JSON Schema: {exc.message} (at {where})") from None


def _batch(entry: RewardSpec, key: str, end_ids: Iterable[int], allow_python: bool, dtype: Any) -> Batch:
    """The batch function of one entry: one branch per reward type."""
    if isinstance(entry, AccuracyReward):
        col = f"{key}.column"
        return _per_sample(lambda s: answers.accuracy(s.completion, column(s, entry.column, col), entry.match, entry.tolerance))
    if isinstance(entry, FormatReward):
        return _per_sample(lambda s: checks.format_match(s.completion, entry.regex))
    if isinstance(entry, AnswerLineReward):
        return _per_sample(lambda s: checks.answer_line(s.completion))
    if isinstance(entry, JsonReward):
        validator = json_schema_validator(entry.schema, f"{key}.schema") if entry.schema else None
        return _per_sample(lambda s: checks.json_valid(s.completion, validator))
    if isinstance(entry, LengthReward):
        return _per_sample(lambda s: checks.length(s.completion, entry.target_chars or s.reference))
    if isinstance(entry, NoRepeatReward):
        return _per_sample(lambda s: checks.no_repeat(s.completion))
    if isinstance(entry, EndsCleanlyReward):
        ends = tuple(end_ids)

        def ended(s: Sample) -> float:
            if s.completion_ids is None:
                raise ValueError(f"{key} (ends_cleanly) needs the completion's token ids")
            return checks.ends_cleanly(s.completion_ids, ends)

        return _per_sample(ended)
    if isinstance(entry, RewardModelReward):
        scorer = load_scorer(entry.path, dtype)
        return lambda samples: scorer([s.prompt for s in samples], [s.completion for s in samples])
    if isinstance(entry, PythonReward):
        if not allow_python:
            raise UserError(
                f"{key}: a python reward runs your own code ({entry.function}); set stage.allow_python_rewards: true to allow it"
            )
        function = custom.import_function(entry.function, f"{key}.function")
        name, cols = f"{key}.function ({entry.function})", f"{key}.columns"

        def call(samples: Sequence[Sample]) -> list[float | None]:
            values = {c: [column(s, c, cols) for s in samples] for c in entry.columns}
            return custom.call(function, name, [s.completion for s in samples], values)

        return call
    raise TypeError(f"unknown reward entry {type(entry).__name__}")


def reward_names(entries: Sequence[RewardSpec]) -> list[str]:
    """Each entry's name in the run log and TRL's metrics (`rewards/<name>/mean`): its type, or
    `<type>_<N>` (N its place in the list) when several entries share the type."""
    counts = Counter(e.type for e in entries)
    return [e.type if counts[e.type] == 1 else f"{e.type}_{i}" for i, e in enumerate(entries)]


def load_reward(
    entry: RewardSpec, key: str = "reward", *, end_ids: Iterable[int] = (), allow_python: bool = False, dtype: Any = None
) -> Reward:
    """One entry as a `Reward` (a reward model is loaded here, a python function imported here —
    only with `allow_python`). `end_ids`: the tokens generation stops at (ends_cleanly)."""
    return Reward(entry.type, entry.weight, key, _batch(entry, key, end_ids, allow_python, dtype))


def load_rewards(
    entries: Sequence[RewardSpec],
    *,
    end_ids: Iterable[int] = (),
    allow_python: bool = False,
    dtype: Any = None,
    prefix: str = "stage.rewards",
) -> list[Reward]:
    """Every entry of `stage.rewards`, in order, named by `reward_names`."""
    ends = tuple(end_ids)
    names = reward_names(entries)
    loaded = []
    for i, (entry, name) in enumerate(zip(entries, names)):
        reward = load_reward(entry, f"{prefix}.{i}", end_ids=ends, allow_python=allow_python, dtype=dtype)
        loaded.append(Reward(name, reward.weight, reward.key, reward.batch))
    return loaded


def score(
    entry: RewardSpec | Reward,
    completion: str,
    record: Mapping[str, Any],
    completion_ids: Sequence[int] | None = None,
    end_ids: Iterable[int] = (),
    *,
    prompt: Sequence[Mapping[str, Any]] = (),
    reference: str | None = None,
    allow_python: bool = False,
) -> float | None:
    """The reward one entry gives one completion of one record: a float in [0, 1], or None (no
    reward, e.g. `length` with no target). `record` holds the record's columns (`accuracy` reads
    its `column`). A `reward_model` entry is scored through a `Reward` from `load_reward` (the
    model is loaded once, not per completion); a `python` entry needs `allow_python`."""
    if isinstance(entry, RewardModelReward):
        raise ValueError("a reward model is loaded once: score with load_reward(entry) and pass that Reward instead")
    reward = entry if isinstance(entry, Reward) else load_reward(entry, end_ids=end_ids, allow_python=allow_python)
    sample = Sample(completion, record, completion_ids, prompt, reference)
    return reward([sample])[0]


def check_inputs(entries: Sequence[tuple[str, RewardSpec]]) -> None:
    """Raise `input_problems` (all of them, one per line), if any."""
    problems = input_problems(entries)
    if problems:
        raise UserError("\n".join(problems))


def input_problems(entries: Sequence[tuple[str, RewardSpec]]) -> list[str]:
    """Before any model loads: every JSON Schema file exists and is a valid schema, and every python
    reward's function imports; one `key: problem` line per entry that fails. `entries` are (key, entry)
    pairs of a validated recipe, which holds python entries only when `stage.allow_python_rewards` is true."""
    problems = []
    for key, entry in entries:
        try:
            if isinstance(entry, JsonReward) and entry.schema:
                json_schema_validator(entry.schema, f"{key}.schema")
            elif isinstance(entry, PythonReward):
                custom.import_function(entry.function, f"{key}.function")
        except UserError as exc:
            problems.append(str(exc))
    return problems
