"""The measures `llmft eval` takes, each a function of a loaded model and an eval set.

- `lm`: token-mean negative log-likelihood of the supervised tokens (the replies with their end-of-turn
  token, as sft trains; every token for text) and its perplexity.
- `generate`: an answer generated for each conversation's prompt (everything before its last reply),
  scored against that reply (exact match, ROUGE-L, BLEU, chrF); the answers are kept for the report.
- `preference`: for a policy on preference pairs: the chosen-minus-rejected log-prob margin; with a
  reference (an adapter's base, or `--reference`), the implicit reward r = log p - log p_ref of each
  side, its accuracy (r_chosen > r_rejected) and mean margin, as DPO defines them.
- `reward`: for a reward model on preference pairs: pairwise accuracy and mean margin of its scores.
- `win_rate`: answers of the model and of its reference to the same prompts, both scored by a reward
  model: the share the model wins (a tie counts half).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmft.data.formats import Conversation, Pair
from llmft.data.pairs import encode_reply
from llmft.data.tokenize import build_pt_blocks, build_sft_examples
from llmft.errors import UserError
from llmft.evaluation.data import EvalSet
from llmft.evaluation.generation import generate, generate_with_ids, prompt_ids
from llmft.evaluation.scoring import reward_scores, supervised_logps
from llmft.evaluation.text_metrics import generation_metrics
from llmft.modeling.reward import reward_input_ids


@dataclass(frozen=True)
class EvalOptions:
    metrics: tuple[str, ...] | None = None  # None: what the data and the model allow (`default_measures`)
    max_length: int = 1024  # longer examples are cut at the end (counted)
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    batch_size: int = 8  # prompts per generation batch
    max_tokens_per_batch: int = 4096  # padded tokens per scoring forward pass
    rewards: tuple[Any, ...] = ()  # `verify`: reward entries (`stage.rewards` entries, llmft.config.rewards)
    allow_python_rewards: bool = False
    harness: Any = None  # lm-evaluation-harness tasks (`llmft.evaluation.harness.HarnessOptions`), run after the measures


@dataclass
class Loaded:
    """A model ready to measure, and what it is measured against."""

    name: str
    model: Any
    tokenizer: Any
    reward: bool = False  # a reward model
    reference: Any = None  # a second causal LM for reference log-probs and answers (None: see `adapter_reference`)
    reference_tokenizer: Any = None
    judge: Any = None  # (reward model, its tokenizer) for win_rate
    notes: list[str] = field(default_factory=list)

    @property
    def adapter_reference(self) -> bool:
        """A peft model without an explicit reference: its base (the adapter disabled) is the reference."""
        return self.reference is None and hasattr(self.model, "disable_adapter")

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.adapter_reference


def _plain(messages: Sequence[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def split_reply(conversation: Conversation) -> tuple[list[dict], str] | None:
    """(prompt messages, reference reply): everything before the last assistant message, and it."""
    last = max((i for i, m in enumerate(conversation.messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return None
    return _plain(conversation.messages[:last]), conversation.messages[last]["content"]


def lm(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    if data.kind == "conversation":
        examples, report = build_sft_examples(tokenizer, data.records, options.max_length)
    elif data.kind == "text":
        examples, report = build_pt_blocks(tokenizer, data.records, options.max_length)
    else:
        raise UserError("lm: measures conversations or text; for preference pairs use `preference` or `reward`")
    if not examples:
        raise UserError(f"lm: no examples to measure. {report.summary('--data')}")
    sums = supervised_logps(loaded.model, examples, tokenizer.pad_token_id, options.max_tokens_per_batch, desc="lm")
    tokens = sum(n for _, n in sums)
    loss = -sum(s for s, _ in sums) / max(tokens, 1)
    dropped = sum(report.dropped.values())
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": tokens,
        "examples": len(examples),
        **({"dropped": dropped} if dropped else {}),
        **({"truncated": report.truncated} if report.truncated else {}),
    }


def generate_answers(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    if data.kind != "conversation":
        raise UserError("generate: needs conversations whose last message is the reference reply")
    split = [(c, split_reply(c)) for c in data.records]
    usable = [(c, s) for c, s in split if s is not None]
    if not usable:
        raise UserError("generate: no conversation has a reply after a prompt to compare an answer with")
    prompts = [prompt_ids(loaded.tokenizer, prompt, c.tools) for c, (prompt, _) in usable]
    answers = generate(
        loaded.model, loaded.tokenizer, prompts, options.max_new_tokens, options.temperature, options.seed, options.batch_size
    )
    references = [reference for _, (_, reference) in usable]
    metrics: dict[str, Any] = {**generation_metrics(answers, references), "answers": len(answers)}
    if len(usable) < len(split):
        metrics["skipped"] = len(split) - len(usable)
    rows = [
        {"where": c.where, "prompt": prompt, "reference": ref, "answer": answer}
        for (c, (prompt, ref)), answer in zip(usable, answers)
    ]
    return {**metrics, "_rows": rows}


def _side_logps(model: Any, tokenizer: Any, pairs: Sequence[Pair], options: EvalOptions, desc: str) -> list[tuple[float, float]]:
    examples = [encode_reply(tokenizer, p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
    sums = supervised_logps(model, examples, tokenizer.pad_token_id, options.max_tokens_per_batch, desc=desc)
    return [(sums[2 * i][0], sums[2 * i + 1][0]) for i in range(len(pairs))]


def preference(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    if data.kind != "pair":
        raise UserError("preference: needs preference pairs (chosen and rejected replies)")
    policy = _side_logps(loaded.model, loaded.tokenizer, data.records, options, "preference: policy")
    margins = [c - r for c, r in policy]
    out: dict[str, Any] = {
        "logp_margin": sum(margins) / len(margins),
        "logp_margin_positive": _share(m > 0 for m in margins),
        "pairs": len(margins),
    }
    if not loaded.has_reference:
        loaded.notes.append("preference: no reference model (give --reference), so no implicit reward")
        return out
    if loaded.adapter_reference:
        with loaded.model.disable_adapter():
            reference = _side_logps(loaded.model, loaded.tokenizer, data.records, options, "preference: reference")
    else:
        reference = _side_logps(loaded.reference, loaded.reference_tokenizer, data.records, options, "preference: reference")
    implicit = [(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(policy, reference)]
    return {
        **out,
        "reference_logp_margin": sum(c - r for c, r in reference) / len(reference),
        "implicit_reward_accuracy": _share(x > 0 for x in implicit),
        "implicit_reward_margin": sum(implicit) / len(implicit),
    }


def reward(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    if data.kind != "pair":
        raise UserError("reward: needs preference pairs (chosen and rejected replies)")
    tokenizer = loaded.tokenizer
    sequences = [reward_input_ids(tokenizer, p.prompt, side) for p in data.records for side in (p.chosen, p.rejected)]
    scores = reward_scores(loaded.model, sequences, tokenizer.pad_token_id, options.max_tokens_per_batch)
    margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(data.records))]
    return {"accuracy": _share(m > 0 for m in margins), "margin": sum(margins) / len(margins), "pairs": len(margins)}


def win_rate(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    if loaded.judge is None:
        raise UserError("win_rate: give --reward-model RM_DIR to judge the answers")
    if not loaded.has_reference:
        raise UserError("win_rate: needs a reference to compete with (an adapter's base, or --reference MODEL)")
    prompts = _prompts(data)
    ids = [prompt_ids(loaded.tokenizer, p) for p in prompts]
    ours = generate(
        loaded.model,
        loaded.tokenizer,
        ids,
        options.max_new_tokens,
        options.temperature,
        options.seed,
        options.batch_size,
        desc="win_rate: model",
    )
    if loaded.adapter_reference:
        theirs = generate(
            loaded.model,
            loaded.tokenizer,
            ids,
            options.max_new_tokens,
            options.temperature,
            options.seed,
            options.batch_size,
            adapter_off=True,
            desc="win_rate: reference",
        )
    else:
        ref_ids = [prompt_ids(loaded.reference_tokenizer, p) for p in prompts]
        theirs = generate(
            loaded.reference,
            loaded.reference_tokenizer,
            ref_ids,
            options.max_new_tokens,
            options.temperature,
            options.seed,
            options.batch_size,
            desc="win_rate: reference",
        )
    judge, judge_tokenizer = loaded.judge
    sequences = [
        reward_input_ids(judge_tokenizer, p, [{"role": "assistant", "content": a}])
        for p, a in [*zip(prompts, ours), *zip(prompts, theirs)]
    ]
    scores = reward_scores(judge, sequences, judge_tokenizer.pad_token_id, options.max_tokens_per_batch, desc="win_rate: judge")
    n = len(prompts)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores[:n], scores[n:])]
    rows = [
        {"prompt": p, "answer": a, "reference_answer": b, "reward": sa, "reference_reward": sb}
        for p, a, b, sa, sb in zip(prompts, ours, theirs, scores[:n], scores[n:])
    ]
    return {
        "win_rate": sum(wins) / n,
        "reward": sum(scores[:n]) / n,
        "reference_reward": sum(scores[n:]) / n,
        "prompts": n,
        "_rows": rows,
    }


def verify(loaded: Loaded, data: EvalSet, options: EvalOptions) -> dict[str, Any]:
    """Answers to each conversation's prompt, scored by the rewards GRPO trains with (`--reward`, or the
    recipe's `stage.rewards`): the mean of each reward over the answers it scores."""
    from llmft.data.tokenize import end_of_turn_ids
    from llmft.rewards import Sample, load_rewards

    if not options.rewards:
        raise UserError("verify: give the rewards to score with (--reward accuracy:numeric ..., or a grpo --recipe)")
    if data.kind != "conversation":
        raise UserError("verify: needs conversations or question/answer records")
    usable = [(c, s) for c, s in ((c, split_reply(c)) for c in data.records) if s is not None]
    if not usable:
        raise UserError("verify: no record has a prompt and a reply")
    rewards = load_rewards(
        options.rewards, end_ids=end_of_turn_ids(loaded.tokenizer), allow_python=options.allow_python_rewards, prefix="--reward"
    )
    prompts = [prompt_ids(loaded.tokenizer, prompt, c.tools) for c, (prompt, _) in usable]
    answers = generate_with_ids(
        loaded.model,
        loaded.tokenizer,
        prompts,
        options.max_new_tokens,
        options.temperature,
        options.seed,
        options.batch_size,
        desc="verify",
    )
    samples = [
        Sample(text, c.record, ids, prompt, reference, c.where) for (c, (prompt, reference)), (text, ids) in zip(usable, answers)
    ]
    scored = {reward.name: reward(samples) for reward in rewards}
    metrics: dict[str, Any] = {}
    for name, values in scored.items():
        given = [v for v in values if v is not None]
        metrics[name] = sum(given) / len(given) if given else None
    rows = [
        {
            "where": s.where,
            "prompt": s.prompt,
            "reference": s.reference,
            "answer": s.completion,
            **{name: values[i] for name, values in scored.items()},
        }
        for i, s in enumerate(samples)
    ]
    return {**metrics, "answers": len(samples), "_rows": rows}


def _prompts(data: EvalSet) -> list[list[dict]]:
    if data.kind == "pair":
        return [_plain(p.prompt) for p in data.records]
    if data.kind == "conversation":
        return [s[0] for s in map(split_reply, data.records) if s is not None]
    raise UserError("win_rate: needs prompts: conversations or preference pairs")


def _share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / max(len(values), 1)


Measure = Callable[[Loaded, EvalSet, EvalOptions], dict[str, Any]]
MEASURES: dict[str, Measure] = {
    "lm": lm,
    "generate": generate_answers,
    "preference": preference,
    "reward": reward,
    "win_rate": win_rate,
    "verify": verify,
}


def default_measures(data: EvalSet, loaded: Loaded, options: EvalOptions) -> tuple[str, ...]:
    """What the data and the model allow, when `--metrics` is not given."""
    if loaded.reward:
        if data.kind != "pair":
            raise UserError("a reward model is measured on preference pairs (chosen and rejected replies)")
        return ("reward",)
    judged = ("win_rate",) if loaded.judge is not None and loaded.has_reference else ()
    if data.kind == "conversation" and options.rewards:
        return ("lm", "verify", *judged)
    return {"conversation": ("lm", "generate"), "text": ("lm",), "pair": ("preference",)}[data.kind] + judged


def parse_rewards(values: Sequence[str]) -> tuple[Any, ...]:
    """`--reward` values as reward entries: `TYPE`, `accuracy:MATCH`, or one entry as JSON
    (`{"type": "accuracy", "column": "label"}`), validated as `stage.rewards` entries are."""
    import json

    from pydantic import TypeAdapter, ValidationError

    from llmft.config.rewards import RewardSpec

    entries = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                entries.append(json.loads(value))
            except ValueError as exc:
                raise UserError(f"--reward: {value!r} is not valid JSON ({exc})") from None
            continue
        kind, _, match = value.partition(":")
        entries.append({"type": kind, **({"match": match} if match else {})})
    try:
        return tuple(TypeAdapter(list[RewardSpec]).validate_python(entries))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'type'}: {e['msg']}" for e in exc.errors())
        raise UserError(
            f"--reward: {problems} (types: accuracy[:exact|normalized|numeric|math], format, answer_line, "
            "json, length, no_repeat, ends_cleanly)"
        ) from None
