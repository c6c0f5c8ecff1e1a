"""The model's shape, as the memory plan needs it: read from its config, never from its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Linear:
    """`count` linear layers of one name (e.g. the 30 `q_proj`s of a 30-layer model)."""

    name: str
    in_features: int
    out_features: int
    count: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class ModelDims:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    #: every linear layer except the output head, grouped by name (what LoRA can target)
    linears: tuple[Linear, ...]
    #: all parameters (a tied embedding counted once)
    params: int
    #: counted from the model's modules (built on the meta device) rather than from the formula
    exact: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Parameters of the output head that are not the input embedding's."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def linear_params(self) -> int:
        return sum(linear.params for linear in self.linears)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (linears, plus two norms)."""
        return self.linear_params // max(self.layers, 1) + 2 * self.hidden

    @property
    def largest_tensor(self) -> int:
        return max([self.embedding_params] + [l.in_features * l.out_features for l in self.linears])

    @classmethod
    def llama(
        cls,
        *,
        hidden: int,
        layers: int,
        heads: int,
        intermediate: int,
        vocab: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        tied_embeddings: bool = False,
        attention_bias: bool = False,
        model_type: str = "llama",
    ) -> ModelDims:
        """A Llama-shaped decoder (q/k/v/o attention, gated MLP, RMS norms) from its dimensions."""
        kv_heads = kv_heads or heads
        head_dim = head_dim or hidden // heads
        q, kv = heads * head_dim, kv_heads * head_dim
        linears = (
            Linear("q_proj", hidden, q, layers, attention_bias),
            Linear("k_proj", hidden, kv, layers, attention_bias),
            Linear("v_proj", hidden, kv, layers, attention_bias),
            Linear("o_proj", q, hidden, layers),
            Linear("gate_proj", hidden, intermediate, layers),
            Linear("up_proj", hidden, intermediate, layers),
            Linear("down_proj", intermediate, hidden, layers),
        )
        norms = (2 * layers + 1) * hidden
        embeddings = vocab * hidden * (1 if tied_embeddings else 2)
        params = embeddings + sum(l.params for l in linears) + norms
        return cls(model_type, hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied_embeddings, linears, params)


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def dims_from_config(config: Any, task: str = "causal_lm", trust_remote_code: bool = False) -> ModelDims:
    """ModelDims of a transformers config. The model is built on the meta device (no memory, no
    weights) to count its parameters and linear layers exactly; if that fails, a Llama-shaped
    model of the config's dimensions is assumed."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _get(text, "hidden_size", "n_embd", "d_model")
    heads = _get(text, "num_attention_heads", "n_head")
    layers = _get(text, "num_hidden_layers", "n_layer", "num_layers")
    if not (hidden and heads and layers):
        raise ValueError(
            f"the config ({type(config).__name__}) does not state hidden_size, num_attention_heads and num_hidden_layers"
        )
    shape = dict(
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=_get(text, "num_key_value_heads", "n_head_kv", default=heads),
        head_dim=_get(text, "head_dim", default=hidden // heads),
        intermediate=_get(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        vocab=_get(text, "vocab_size"),
        tied_embeddings=bool(_get(config, "tie_word_embeddings", default=False)),
        model_type=getattr(config, "model_type", type(config).__name__),
    )
    try:
        linears, params = _count_on_meta(config, task, trust_remote_code)
    except Exception:  # unusual code paths: fall back to the formula, which says so (exact=False)
        return ModelDims.llama(**shape, attention_bias=bool(getattr(text, "attention_bias", False)))
    return ModelDims(
        shape["model_type"],
        shape["hidden"],
        shape["layers"],
        shape["heads"],
        shape["kv_heads"],
        shape["head_dim"],
        shape["intermediate"],
        shape["vocab"],
        shape["tied_embeddings"],
        linears,
        params,
        exact=True,
    )


def _count_on_meta(config: Any, task: str, trust_remote_code: bool) -> tuple[tuple[Linear, ...], int]:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "reward" else AutoModelForCausalLM
    if task == "reward":  # llmft's reward head: one score
        config = copy.deepcopy(config)
        config.num_labels = 1
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings() if task != "reward" else getattr(model, "score", None)
    groups: dict[tuple[str, int, int, bool], int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            key = (name.rsplit(".", 1)[-1], module.in_features, module.out_features, module.bias is not None)
            groups[key] = groups.get(key, 0) + 1
    linears = tuple(Linear(n, i, o, c, b) for (n, i, o, b), c in groups.items())
    return linears, sum(p.numel() for p in model.parameters())
