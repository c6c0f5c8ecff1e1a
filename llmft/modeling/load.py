"""Load the tokenizer and the pretrained model named by `model:`, refusing silent failures.

A wrong path must never give a randomly initialised model: missing or newly initialised
weights stop the run and are named.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from llmft.config.model import ModelConfig
from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.modeling.hub import hub_problem, is_hub_id, looks_local

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_hub(source: str, key: str) -> None:
    """Stop at once, with the fix, when `source` is a hub id this machine cannot fetch (offline and not
    cached, or the hub unreachable), rather than after huggingface_hub's retries."""
    problem = hub_problem(source, key) if is_hub_id(source) else None
    if problem is not None:
        raise UserError(f"{key}: {problem}")


def check_model_path(cfg: ModelConfig) -> None:
    """Fail early, with the key and the fix, on paths that cannot hold the model."""
    problem = model_path_problem(cfg)
    if problem is not None:
        raise UserError(f"{problem[0]}: {problem[1]}")


def model_path_problem(cfg: ModelConfig) -> tuple[str, str] | None:
    """(key, problem) when `model.path` (or `model.gguf_file`) cannot hold the model; None when it can
    (or is a hub id: `llmft.modeling.hub` says whether this machine can fetch it)."""
    path = Path(os.path.expanduser(cfg.path))
    if not path.exists():
        if (path.parent / "adapter_config.json").is_file():  # <run>/merged of a run whose merge did not happen
            return (
                "model.path",
                f"directory not found: {cfg.path}; {path.parent} holds a LoRA adapter that was not merged "
                f"there (its run's log says why): llmft merge --adapter {path.parent} --out {cfg.path}",
            )
        if looks_local(cfg.path):
            return "model.path", f"directory not found: {cfg.path}"
        return None
    if not path.is_dir():
        return (
            "model.path",
            f"{cfg.path} is a file; give the directory that holds it"
            + (" and its name as model.gguf_file" if path.suffix == ".gguf" else ""),
        )
    if cfg.gguf_file:
        if not (path / cfg.gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            return (
                "model.gguf_file",
                f"{cfg.gguf_file} not found in {cfg.path}"
                + (f"; GGUF files there: {', '.join(found)}" if found else "; the directory has no .gguf file"),
            )
        return None
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return (
            "model.path",
            f"{cfg.path} holds a LoRA adapter, not a model; set model.path to its base "
            "model and finetune.adapter_path to this directory",
        )
    if not (path / "config.json").is_file():
        return "model.path", f"{cfg.path} has no config.json; is it a model directory?"
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not list(path.glob("model-*.safetensors")):
        return "model.path", f"{cfg.path} has a config.json but no weights ({', '.join(WEIGHT_FILES)})"
    return None


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    source = cfg.tokenizer or cfg.path
    key = "model.tokenizer" if cfg.tokenizer else "model.path"
    check_hub(source, key)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file and not cfg.tokenizer:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(source), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{key}: cannot load a tokenizer from {source}: {_short(exc)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{key}: {source} gives a slow (Python) tokenizer; llmft needs a fast one for exact label masks")
    tokenizer.padding_side = "right"
    return tokenizer


def prepare_tokenizer(recipe: Recipe) -> Any:
    """The run's tokenizer: the chat template the stage renders with (`data.template`, or the
    tokenizer's own) installed, and a pad token distinct from EOS."""
    from llmft.data.templates import install_template

    tokenizer = load_tokenizer(recipe.model)
    if recipe.stage.traits.chat_template:
        log.info(install_template(tokenizer, recipe.data.template, recipe.data.enable_thinking))
    log.info(arrange_pad_token(tokenizer))
    return tokenizer


def arrange_pad_token(tokenizer: Any) -> str:
    """Give the tokenizer a pad token distinct from EOS, so EOS is never treated as padding.

    Returns a sentence saying what was done. Prefers tokens the vocabulary already has, so the
    embedding matrix keeps its size.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return f"pad token: {tokenizer.pad_token!r} (the tokenizer's own)"
    template = getattr(tokenizer, "chat_template", None) or ""
    candidates = [tokenizer.unk_token] + list(getattr(tokenizer, "additional_special_tokens", None) or [])
    for token in candidates:
        if token and token not in (eos, tokenizer.bos_token) and token not in template:
            tokenizer.pad_token = token
            return f"pad token: {token!r} (was {'EOS' if eos else 'unset'}; EOS stays supervised)"
    tokenizer.add_special_tokens({"pad_token": "<|llmft_pad|>"})
    return "pad token: added '<|llmft_pad|>' (the vocabulary had no free special token); embeddings resized"


#: What a model is loaded as: the causal LM itself, or (rm) the same checkpoint under a one-score
#: sequence-classification head, read at the last non-pad token.
TASKS = ("causal_lm", "reward")
#: Weights the task's new head adds: the only ones allowed to be missing from the checkpoint.
NEW_HEAD_PREFIXES = {"causal_lm": (), "reward": ("score.",)}


def load_model(
    cfg: ModelConfig,
    dtype: torch.dtype,
    vocab_size: int | None = None,
    task: str = "causal_lm",
    quantization: Any = None,
    head_from_adapter: bool = False,
) -> Any:
    """Load the pretrained model for `task`; refuse to go on if any weight other than the task's new
    head was not in the checkpoint. `head_from_adapter`: the caller loads a trained head next (a
    reward model's LoRA adapter carries its score head), so the head is not announced as fresh."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"task is one of {TASKS} (got {task!r})")
    check_model_path(cfg)
    check_hub(cfg.path, "model.path")
    check_attention(cfg)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": cfg.attn_implementation,
        "trust_remote_code": cfg.trust_remote_code,
        "output_loading_info": True,
    }
    if task == "reward":
        kwargs["num_labels"] = 1
    if quantization is not None:  # finetune.mode: qlora (a BitsAndBytesConfig)
        kwargs["quantization_config"] = quantization
    if cfg.gguf_file:
        kwargs.update(gguf_kwargs(cfg.gguf_file))
    if cfg.rope_scaling is not None:  # the model is built from a config carrying the scaled RoPE
        from llmft.modeling.rope import apply_rope_scaling

        config = read_config(cfg)
        log.info(apply_rope_scaling(config, cfg.rope_scaling))
        if "num_labels" in kwargs:
            config.num_labels = kwargs.pop("num_labels")
        kwargs["config"] = config
    auto = AutoModelForSequenceClassification if task == "reward" else AutoModelForCausalLM
    try:
        model, info = auto.from_pretrained(os.path.expanduser(cfg.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path: cannot load a model from {cfg.path}: {_short(exc)}") from None
    guard_loading_info(cfg.path, info, new_head=NEW_HEAD_PREFIXES[task], announce=not head_from_adapter)
    if cfg.gguf_file:
        detach_gguf_quantizer(model)
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)
    return model


def read_config(cfg: ModelConfig) -> Any:
    """The model's transformers config (config.json, or the GGUF file's metadata), without weights."""
    from transformers import AutoConfig

    check_model_path(cfg)
    check_hub(cfg.path, "model.path")
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        return AutoConfig.from_pretrained(os.path.expanduser(cfg.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path: cannot read a model config from {cfg.path}: {_short(exc)}") from None


def gguf_kwargs(gguf_file: str) -> dict[str, Any]:
    """Ask transformers to unpack every GGUF weight into a dense, trainable tensor."""
    kwargs: dict[str, Any] = {"gguf_file": gguf_file}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF
        return kwargs
    kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    return kwargs


def detach_gguf_quantizer(model: Any) -> None:
    """After a dequantizing GGUF load the weights are plain tensors; drop the GGUF quantizer so
    the model trains and saves like any other (transformers refuses both while it is attached)."""
    packed = [name for name, module in model.named_modules() if "Gguf" in type(module).__name__]
    if packed:
        raise UserError(f"model.gguf_file: some weights stayed GGUF-packed ({', '.join(packed[:3])}); they cannot train")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def guard_loading_info(path: str, info: dict[str, Any], new_head: tuple[str, ...] = (), announce: bool = True) -> None:
    """Refuse weights that were missing from the checkpoint (they would be random), except the
    task's new head (weights named with a `new_head` prefix), which is expected to start fresh (and
    is said to, when `announce`: not when a trained head is loaded over it next)."""
    everything_missing = sorted(info.get("missing_keys") or [])
    fresh = [k for k in everything_missing if k.startswith(new_head)]
    if fresh and announce:
        log.info("new head, initialised fresh (the only weights allowed to be missing): %s", ", ".join(fresh))
    missing = [k for k in everything_missing if k not in fresh]
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        shown = missing[:8] + mismatched[:8]
        more = len(missing) + len(mismatched) - len(shown)
        raise UserError(
            f"model.path: {path} does not hold every weight of the model "
            f"({len(missing)} missing, {len(mismatched)} with the wrong shape); they would be randomly "
            f"initialised, so training will not start. First ones: {', '.join(shown)}"
            + (f" and {more} more" if more > 0 else "")
            + ". Check that model.path points at the right checkpoint."
        )


def check_attention(cfg: ModelConfig) -> None:
    for key, problem in attention_problems(cfg, cuda=torch.cuda.is_available()):
        raise UserError(f"{key}: {problem}")


def attention_problems(cfg: ModelConfig, cuda: bool, probe: bool = True) -> list[tuple[str, str]]:
    """(key, problem) pairs for `model.attn_implementation` on a device with (`cuda`) or without a CUDA
    GPU; `probe`: that device is this machine, so its installed packages count."""
    if cfg.attn_implementation != "flash_attention_2":
        return []
    import importlib.util

    if not cuda:
        return [("model.attn_implementation", "flash_attention_2 needs a CUDA GPU; use sdpa on this machine")]
    if probe and importlib.util.find_spec("flash_attn") is None:
        return [
            (
                "model.attn_implementation",
                "flash_attention_2 needs the flash-attn package (pip install 'llmft[gpu]'); or use sdpa",
            )
        ]
    return []


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
