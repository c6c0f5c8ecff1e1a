"""A tokenizer as GGUF metadata: the tokens, their types, the merges, the special ids, the chat
template, and the end-of-turn token as EOS (so llama.cpp and Ollama stop where the model was
trained to).

Only byte-level BPE (GPT-2 style: SmolLM2, Qwen2/3, Llama 3) is written: it is GGUF's `gpt2`
tokenizer, which transformers' GGUF reader rebuilds as the same BPE. How the text is split before
the merges (`tokenizer.ggml.pre`) is named from the tokenizer's pre-tokenizer: GPT-2's own regex,
or a split regex transformers' GGUF reader knows by name. A model loaded from a GGUF keeps its
file's name. Anything else (sentencepiece vocabularies such as Llama 2's or Mistral v0.1's, an
unknown split) is refused before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.data.tokenize import special_ids, turn_end_id
from llmft.errors import UserError

#: gguf.TokenType values (the package's enum, spelled out to keep this module import-light)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
#: llama.cpp's names for split regexes, preferred over the aliases transformers also accepts
PREFERRED_PRE = ("llama-bpe", "qwen2", "tekken", "gpt-4o", "qwen35")


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    eos_id: int  # the end-of-turn token (what the template closes an assistant turn with)
    bos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def gguf_vocab(tokenizer: Any, rows: int, gguf_source: Path | None = None) -> GgufVocab:
    """The tokenizer as GGUF's `gpt2` vocabulary of `rows` tokens (the embedding's rows: ids the
    tokenizer lacks become unused `[PAD<id>]` tokens, as llama.cpp pads)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec):
        kind = model.get("type", "?") + ("" if _byte_level(spec) else ", not byte-level")
        raise UserError(
            f"export: the tokenizer is {kind}; llmft writes byte-level BPE tokenizers (GPT-2 style: SmolLM2, "
            "Qwen2/3, Llama 3) into GGUF, the kind transformers reads back to verify the file. "
            "Export with --to hf instead"
        )
    pre = _source_pre(gguf_source) or _pre_name(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    if len(vocab) > rows:
        raise UserError(f"export: the tokenizer has {len(vocab)} tokens but the model's embedding only {rows} rows")
    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [UNUSED] * rows
    for token, i in vocab.items():
        tokens[i], types[i] = token, NORMAL
    special = special_ids(tokenizer)
    for i in getattr(tokenizer, "added_tokens_decoder", {}):
        types[i] = CONTROL if i in special else USER_DEFINED
    for i in special:
        types[i] = CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    eos = turn_end_id(tokenizer)
    if eos is None:
        raise UserError("export: the tokenizer has no EOS token and its chat template no special end-of-turn token")
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    return GgufVocab(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre,
        eos_id=eos,
        bos_id=bos,
        unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=bool(probe) and bos is not None and probe[0] == bos,
        chat_template=getattr(tokenizer, "chat_template", None),
    )


def write_vocab(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_eot_token_id(vocab.eos_id)
    for add, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_unk_token_id, vocab.unk_id)):
        if value is not None:
            add(value)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and "ByteLevel" in json.dumps(spec.get("decoder"))


def _pre_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how the text is split before the merges."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM/SmolLM2: GPT-2's split, every digit on its own
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        names = [n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex]
        if names:
            return next((n for n in PREFERRED_PRE if n in names), names[0])
    raise UserError(
        f"export: the tokenizer splits text with a pre-tokenizer llmft cannot name for llama.cpp ({json.dumps(pre_tokenizer)[:200]}); "
        "known: GPT-2's, SmolLM's, and the split regexes of Llama 3, Qwen2 and others. Export with --to hf instead"
    )


def _source_pre(gguf_source: Path | None) -> str | None:
    """The `tokenizer.ggml.pre` of the GGUF file the model was loaded from."""
    if gguf_source is None or not gguf_source.is_file():
        return None
    from gguf import GGUFReader

    field = GGUFReader(gguf_source).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
