"""The pieces of `llmft export` that need no model: the q/k layout transformers undoes, which
tokenizers are written, the pre-tokenizer names, and the Ollama Modelfile's template."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import build_tokenizer

from llmft.data.templates import CHATML, LLAMA3, TEMPLATES, to_jinja
from llmft.errors import UserError
from llmft.export.gguf_file import permute_rows
from llmft.export.modelfile import go_template, matching_row, modelfile
from llmft.export.vocab import CONTROL, NORMAL, UNUSED, gguf_vocab


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_transformers_reader_undoes_the_permutation(heads):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.arange(heads * 8 * 3, dtype=np.float32).reshape(heads * 8, 3)
    permuted = permute_rows(weights, heads)
    assert not np.array_equal(permuted, weights)
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted, heads, heads)
    assert np.array_equal(undone, weights)


def test_vocab_marks_special_tokens_pads_and_uses_the_end_of_turn_as_eos():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"  # the template still closes turns with <|im_end|>
    vocab = gguf_vocab(tokenizer, rows=len(tokenizer) + 2)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert vocab.eos_id == end and vocab.pre == "gpt2" and not vocab.add_bos
    assert vocab.types[end] == CONTROL and vocab.types[tokenizer.convert_tokens_to_ids("e")] == NORMAL
    assert vocab.tokens[-2:] == [f"[PAD{len(tokenizer)}]", f"[PAD{len(tokenizer) + 1}]"] and vocab.types[-1] == UNUSED
    assert all(len(m.split(" ")) == 2 for m in vocab.merges) and vocab.chat_template == tokenizer.chat_template


def test_only_byte_level_bpe_is_written():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<unk>")
    tokenizer.chat_template = to_jinja(CHATML)
    with pytest.raises(UserError, match="the tokenizer is WordLevel, not byte-level; llmft writes byte-level BPE"):
        gguf_vocab(tokenizer, rows=2)


def test_pre_tokenizer_names():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from llmft.export.vocab import _pre_name

    def split(regex):
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
                {"type": "ByteLevel", "use_regex": False},
            ],
        }

    assert _pre_name({"type": "ByteLevel", "use_regex": True}) == "gpt2"
    assert _pre_name(split(PRETOKENIZE_REGEX)) == "qwen2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}
    assert _pre_name(smollm) == "smollm"
    with pytest.raises(UserError, match="cannot name for llama.cpp"):
        _pre_name(split(r"\w+"))


def test_modelfile_for_chatml_with_its_default_system_prompt():
    tokenizer = build_tokenizer()  # ChatML with "You are a tiny test model." when no system message is given
    row = matching_row(tokenizer)
    assert row is not None and row.name in ("chatml", "qwen") and row.default_system == "You are a tiny test model."
    text, note = modelfile("m.gguf", tokenizer, add_bos=False)
    assert note is None and text.startswith(
        'FROM ./m.gguf\nTEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n'
    )
    assert 'SYSTEM """You are a tiny test model."""' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert '{{ if and (ne .Role "assistant") $last }}<|im_start|>assistant\n{{ end }}' in text


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "phi3", "alpaca"])
def test_each_named_template_is_recognised(name):
    row = TEMPLATES[name]
    specials = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tokenizer = build_tokenizer(extra_special=specials)
    tokenizer.chat_template = to_jinja(row)
    found = matching_row(tokenizer)
    assert found is not None  # chatml with Qwen's default system prompt is qwen, whichever name it is found under
    fields = ("start", "system", "user", "assistant", "default_system", "prompt", "tool")
    assert [getattr(found, f) for f in fields] == [getattr(row, f) for f in fields]


def test_llama3_go_template_leaves_bos_to_llama_cpp():
    template = go_template(LLAMA3, lambda s: s.replace("{bos}", ""))
    assert template.startswith("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>")


def test_a_template_that_cannot_be_mapped_gets_a_note():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    text, note = modelfile("m.gguf", tokenizer, add_bos=False)
    assert note is not None and "write TEMPLATE by hand" in note and 'TEMPLATE """' not in text
    assert text.startswith("FROM ./m.gguf\n# llmft could not derive") and 'PARAMETER stop "<|im_end|>"' in text
