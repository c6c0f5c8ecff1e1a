"""`data:` — where the training text comes from and how it becomes token ids and labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmft.config.base import Section

DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "csv", "qa", "text", "preference", "kto"]
TemplateName = Literal[
    "chatml",
    "qwen",
    "qwen3",
    "llama2",
    "llama3",
    "llama3.1",
    "mistral",
    "mistral-v7",
    "vicuna",
    "alpaca",
    "baichuan2",
    "chatglm3",
    "phi3",
    "gemma",
    "gemma3",
    "deepseek-r1",
    "default",
]


class DatasetSpec(Section):
    path: str = Field(
        description="A .json (array), .jsonl, .csv, .txt, .parquet or .arrow file; a directory (every such file "
        "in it, sorted by name); a directory written by `datasets.Dataset.save_to_disk`; or a Hugging Face Hub "
        "dataset `hub:ID[:config][@split]` (split default `train`; offline: from the datasets cache)."
    )
    format: DataFormat = Field(
        default="auto",
        description="Record layout: `alpaca` (instruction/input/output), `sharegpt` (conversations of "
        "from/value, optional tools), `messages` (OpenAI role/content), `csv` (human/assistant "
        "columns), `qa` (question/answer, MedicalGPT's GRPO data), `text` (pre-training), `preference` "
        "(chosen/rejected), `kto` (completion + boolean label). `auto` detects it from the first record and reports what it found.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename fields before reading the format: `{llmft_field: your_column}`, e.g. "
        "`{instruction: question, output: answer}`.",
    )
    samples: int | None = Field(
        default=None,
        gt=0,
        description="Use exactly this many records: a seeded random subset if the source has more, "
        "whole repeats plus a seeded subset if it has fewer.",
    )
    weight: float | None = Field(
        default=None,
        gt=0,
        description="Mixing weight: use weight x the source's records (2 = twice, 0.5 = a seeded half). "
        "Not together with `samples`.",
    )
    probability: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="`data.mix: interleave` (train entries): the chance each drawn record comes from this source. "
        "Entries without one share what the others leave equally; all given must sum to 1.",
    )
    text_unit: Literal["line", "file"] = Field(
        default="line", description="`.txt` files: one document per non-empty line, or the whole file as one."
    )

    @model_validator(mode="after")
    def _samples_or_weight(self) -> DatasetSpec:
        if self.samples is not None and self.weight is not None:
            raise ValueError("set samples or weight, not both")
        return self


def _as_list(value: object) -> object:
    """Accept a single path or spec where a list is expected."""
    if isinstance(value, (str, dict)):
        value = [value]
    if isinstance(value, list):
        return [{"path": v} if isinstance(v, str) else v for v in value]
    return value


class DataConfig(Section):
    train: list[DatasetSpec] = Field(
        min_length=1,
        description="Training datasets: a path, or a list of paths or `{path, format, ...}` entries.",
    )
    eval: list[DatasetSpec] = Field(
        default_factory=list,
        description="Evaluation datasets, in the same form as `train`.",
    )
    eval_split: float | int | None = Field(
        default=None,
        gt=0,
        description="Hold out part of the training records for evaluation instead: a fraction "
        "(0 < x < 1) or a count, chosen with `training.seed`. Not together with `eval`.",
    )
    mix: Literal["concat", "interleave"] = Field(
        default="concat",
        description="How several `train` entries combine: one after another, or drawn record by record at "
        "random (each entry's `probability`), seeded with `training.seed`. Records per source are in the run log "
        "and `llmft data`.",
    )
    mix_stop: Literal["first_exhausted", "all_exhausted"] = Field(
        default="first_exhausted",
        description="`mix: interleave`: stop when the first source runs out, or when every source has run out "
        "once (sources that ran out start again meanwhile, so small ones are repeated).",
    )
    streaming: bool = Field(
        default=False,
        description="pt/sft: read records lazily and tokenize them during training, so memory stays flat in "
        "the corpus size (.jsonl, .txt, .parquet, .arrow and hub sources are read a record at a time). Needs "
        "`training.max_steps`; turns off the tokenized-data cache, packing, length grouping and `eval_split` "
        "(eval entries are still read whole).",
    )
    max_train_samples: int | None = Field(
        default=None, gt=0, description="Use at most this many training examples (after the split)."
    )
    max_eval_samples: int | None = Field(default=None, gt=0, description="Use at most this many eval examples.")
    max_length: int = Field(
        default=1024,
        gt=1,
        description="Longest sequence in tokens. SFT records beyond it follow `truncation`; PT text is "
        "cut into blocks of this length; packed sequences are this long.",
    )
    mask_prompt: bool = Field(
        default=True,
        description="SFT: train only on assistant tokens (with each turn's end-of-turn token). "
        "False trains on every token of the rendered conversation (same as `train_on: all`).",
    )
    train_on: Literal["all_turns", "last_turn", "all"] = Field(
        default="all_turns",
        description="SFT: supervise every assistant turn, only the last one, or every token. A message "
        'with `"loss": false` is never supervised.',
    )
    truncation: Literal["truncate_right", "truncate_left", "drop"] = Field(
        default="truncate_right",
        description="SFT records longer than `max_length`: keep the start, keep the end, or drop the "
        "record. Counted either way; a record left with no supervised token is dropped.",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        default="error",
        description="A bad record (one that does not fit its format, a JSONL line or CSV row that cannot be "
        "read, a conversation the stage would train wrongly: docs/data.md): stop with every problem listed, or "
        "skip it (counted; the count and the first examples are in the run log and `llmft data`).",
    )
    template: TemplateName | None = Field(
        default=None,
        description="Chat template to render conversations with. Empty: the tokenizer's own "
        "`chat_template`. The template used is saved with the output.",
    )
    enable_thinking: bool = Field(
        default=True,
        description="Reasoning templates (qwen3, or a model's own that reads `enable_thinking`): false makes "
        "thinking off the template's default, so the generation prompt ends with an empty reasoning block "
        "(Qwen3's `<think>\\n\\n</think>\\n\\n`) that the reply follows; saved with the tokenizer. A record "
        "with reasoning then fails the template-prefix check. Refused for a template without the switch.",
    )
    train_on_reasoning: bool = Field(
        default=True,
        description="sft, dpo: supervise an assistant turn's reasoning block (`<think>...</think>`, "
        "from `reasoning_content`, `thinking` or inline) with its reply. False masks the block, tags "
        "included, and trains only the reply after it (docs/data.md: what is trained).",
    )
    packing: bool = Field(
        default=False,
        description="Pack several examples into each `max_length` sequence. Examples never attend to "
        "each other (positions restart per example), so the loss equals the unpacked loss.",
    )
    padding_free: bool = Field(
        default=True,
        description="pt/sft: concatenate each micro-batch's examples into one row instead of padding them "
        "to the longest; dpo/kto/grpo: score the padded sequences TRL's trainer batches (chosen and "
        "rejected, completions) as one such row. Positions restart per sequence and attention stays "
        "within each, so the loss is the padded batch's. Used for models that take attention from "
        "transformers' registry; elsewhere batches are padded and the run log says why.",
    )
    group_by_length: bool = Field(
        default=False,
        description="Batch examples of similar length together to waste less padding (when not packing).",
    )
    num_proc: int = Field(default=1, gt=0, description="Processes that tokenize in parallel.")
    cache: bool = Field(
        default=True,
        description="Reuse tokenized data from an earlier run when nothing that affects it changed "
        "(data file contents, tokenizer, template, options, llmft version).",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where tokenized data is cached. Default: `$XDG_CACHE_HOME/llmft/data` (~/.cache/llmft/data).",
    )

    _coerce_lists = field_validator("train", "eval", mode="before")(_as_list)

    @field_validator("eval_split")
    @classmethod
    def _fraction_or_count(cls, value: float | int | None) -> float | int | None:
        if isinstance(value, float) and not value.is_integer() and value >= 1:
            raise ValueError("a fraction is below 1; a count is a whole number")
        if isinstance(value, float) and value >= 1:
            return int(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.eval_split is not None and self.eval:
            raise ValueError("set eval or eval_split, not both")
        if not self.mask_prompt and "train_on" in self.model_fields_set and self.train_on != "all":
            raise ValueError("mask_prompt: false trains on every token; remove train_on or set it to 'all'")
        given = [spec.probability for spec in self.train if spec.probability is not None]
        if given and self.mix != "interleave":
            raise ValueError("train entries' probability needs mix: interleave")
        if any(spec.probability is not None for spec in self.eval):
            raise ValueError("probability applies to train entries (mix: interleave); eval entries are read whole")
        if given and (sum(given) > 1 + 1e-6 or (len(given) == len(self.train) and abs(sum(given) - 1) > 1e-6)):
            raise ValueError(f"train entries' probabilities sum to {sum(given):g}; they must sum to 1")
        if self.mix_stop != "first_exhausted" and self.mix != "interleave":
            raise ValueError("mix_stop applies to mix: interleave; remove it or set mix: interleave")
        if self.streaming:
            for key in ("packing", "group_by_length", "eval_split", "max_train_samples"):
                if getattr(self, key) not in (None, False):
                    raise ValueError(f"streaming reads records lazily and cannot honour {key}; remove {key}")
            if any(spec.samples is not None or spec.weight is not None for spec in self.train):
                raise ValueError("streaming cannot resample a source (samples, weight); use mix: interleave with probability")
        if self.packing and self.group_by_length:
            raise ValueError("packing and group_by_length exclude each other; packing wastes no padding")
        return self

    @property
    def supervision(self) -> str:
        """What SFT supervises: `all_turns`, `last_turn` or `all`."""
        return "all" if not self.mask_prompt else self.train_on

    @property
    def probabilities(self) -> list[float]:
        """`mix: interleave`: each train entry's draw probability (unset ones share the rest equally)."""
        given = [spec.probability for spec in self.train]
        rest = 1 - sum(p for p in given if p is not None)
        unset = sum(p is None for p in given)
        return [p if p is not None else max(rest, 0) / unset for p in given]

    @property
    def has_eval(self) -> bool:
        return bool(self.eval) or self.eval_split is not None
