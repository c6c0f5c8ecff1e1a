"""Write a transformers causal LM as a GGUF file, with the `gguf` package's own architecture and
tensor-name tables (`MODEL_ARCH_NAMES`, `get_tensor_name_map`) and its quantizers (`gguf.quants`).

What goes in, per `--type` (llama.cpp's choices for these types):

- every 1-D tensor (norms, biases) as F32;
- every 2-D weight as the type; for q8_0 a weight whose rows are not a whole number of 32-value
  blocks is written as F16 instead.

Llama-architecture files store q_proj / k_proj rows permuted per head (llama.cpp's rotary layout:
the two halves of each head interleaved); transformers' GGUF reader undoes exactly this
(`LlamaTensorProcessor._reverse_permute_weights`). Qwen2/Qwen3 files are not permuted.

The config written is what llama.cpp and transformers' reader both read: sizes, heads, head size,
RoPE base, RMSNorm epsilon, context length; the output projection is left out when tied to the
embedding (that is how both readers tell). What neither reads back is refused first
(`unsupported`): RoPE scaling, biases on Llama's linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmft.errors import UserError
from llmft.export.vocab import GgufVocab, write_vocab
from llmft.modeling.families import FAMILIES, family

#: llama.cpp architectures whose q/k rows are stored permuted (see the module docstring)
PERMUTED_QK = {"llama"}
Q8_BLOCK = 32


@dataclass(frozen=True)
class GgufType:
    name: str
    file_type: int  # gguf.LlamaFileType
    weights: str  # gguf.GGMLQuantizationType name for 2-D weights


GGUF_TYPES = {
    "f32": GgufType("f32", 0, "F32"),
    "f16": GgufType("f16", 1, "F16"),
    "bf16": GgufType("bf16", 32, "BF16"),
    "q8_0": GgufType("q8_0", 7, "Q8_0"),
}


def gguf_arch(config: Any) -> str:
    """The llama.cpp architecture a model of this config is written as, or a UserError naming those supported."""
    arch = family(config.model_type).gguf
    if arch is None:
        supported = ", ".join(f"{t} (as {f.gguf})" for t, f in FAMILIES.items() if f.gguf)
        raise UserError(f"export: model type {config.model_type!r} cannot be written as GGUF; supported: {supported}")
    return arch


def unsupported(config: Any) -> list[str]:
    """What in this config a GGUF of its architecture would not carry (and so could not be verified)."""
    problems = []
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"RoPE scaling ({rope.get('rope_type')})")
    if gguf_arch(config) == "llama":
        problems += [f"{key}: true" for key in ("attention_bias", "mlp_bias") if getattr(config, key, False)]
    return problems


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_gguf(model: Any, vocab: GgufVocab, path: Path, type_name: str, name: str) -> None:
    """Write `model` (fp32 or wider) with `vocab` to `path` as `type_name`."""
    import gguf

    config = model.config
    arch = gguf_arch(config)
    kind = GGUF_TYPES[type_name]
    writer = gguf.GGUFWriter(path, arch)
    # transformers' reader takes a llama file named exactly "mistral" for its own Mistral layout and then fails
    writer.add_name(name if name != "mistral" else "mistral-export")
    writer.add_file_type(kind.file_type)
    if type_name == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float((config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(vocab.tokens))
    write_vocab(writer, vocab)
    for gguf_name, array in tensors(model, arch):
        add_tensor(writer, gguf_name, array, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tensors(model: Any, arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for each weight, named by the package's map for `arch`."""
    import gguf

    config = model.config
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    out, unknown = [], []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        mapped = names.get_name(stem)
        if mapped is None:
            unknown.append(hf_name)
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if arch in PERMUTED_QK and suffix == "weight" and mapped.endswith((".attn_q", ".attn_k")):
            heads = config.num_attention_heads if mapped.endswith(".attn_q") else config.num_key_value_heads
            array = permute_rows(array, heads)
        out.append((f"{mapped}.{suffix}", array))
    if unknown:
        raise UserError(f"export: no GGUF name for {', '.join(unknown[:5])} (model type {config.model_type})")
    return out


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: within each head, rows [first half, second half] interleaved."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def add_tensor(writer: Any, name: str, array: np.ndarray, kind: GgufType) -> None:
    import gguf

    qtype = gguf.GGMLQuantizationType[kind.weights] if array.ndim > 1 else gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and array.shape[-1] % Q8_BLOCK:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
