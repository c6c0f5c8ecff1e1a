"""`llmft export`: a run, adapter or model as one GGUF file (llama.cpp, Ollama) or a standalone
Hugging Face folder, verified before it is kept.

1. What is refused needs no weights: an unknown --to or --type, an --out that exists, an
   architecture or config the format cannot carry (`gguf_file.gguf_arch`, `gguf_file.unsupported`).
2. An adapter is merged into its base first, with `llmft merge`'s checks (`merge_adapter`).
3. The export is written into a temporary directory next to --out, read back with transformers
   (`from_pretrained(dir, gguf_file=...)` for GGUF) and compared with the source (`check.py`).
   Only then is it renamed to --out; a failure leaves nothing there and says what differed.
4. Next to a GGUF, an Ollama Modelfile (`modelfile.py`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmft.config.model import ModelConfig
from llmft.data.tokenize import end_of_turn_ids
from llmft.errors import UserError
from llmft.export.check import ExportCheck, check_export
from llmft.export.gguf_file import GGUF_TYPES, gguf_arch, unsupported, write_gguf
from llmft.export.modelfile import modelfile
from llmft.export.vocab import gguf_vocab
from llmft.modeling.sources import ModelSource, load_causal_lm, resolve_source
from llmft.rundir import usual_file_modes

log = logging.getLogger("llmft")
FORMATS = ("gguf", "hf")
HF_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportResult:
    out: Path
    check: ExportCheck
    modelfile: Path | None = None
    note: str | None = None  # what the user still has to do (an Ollama TEMPLATE by hand)


def export(
    model: str, to: str, out: str | Path, type_name: str | None = None, template: str | None = None, gguf_file: str | None = None
) -> ExportResult:
    out = Path(out).expanduser()
    type_name = type_name or ("f16" if to == "gguf" else "f32")
    types = GGUF_TYPES if to == "gguf" else HF_TYPES
    if to not in FORMATS:
        raise UserError(f"--to: {to!r} is not a format llmft exports; choose one of {', '.join(FORMATS)}")
    if type_name not in types:
        raise UserError(f"--type: {type_name!r} is not a type --to {to} writes; choose one of {', '.join(types)}")
    if out.exists():
        raise UserError(f"--out: {out} already exists; llmft never writes over existing files")
    source = resolve_source(model, gguf_file, template)
    if source.reward:
        raise UserError(f"export: {source.describe()} is a reward model (a one-score head); llmft exports causal LMs")
    if to == "gguf":
        _refuse_unsupported(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".llmft-export", dir=out.parent))
    # a model loaded from a GGUF file: its tokenizer's pre-tokenizer name is read there
    gguf_source = Path(source.base.path).expanduser() / source.base.gguf_file if source.base.gguf_file else None
    try:
        if source.adapter is not None:
            source = _merged(source, work / "merged")
        model_, tokenizer = load_causal_lm(source)
        if to == "gguf":
            return _export_gguf(model_, tokenizer, Path(model).name, gguf_source, out, work, type_name)
        return _export_hf(model_, tokenizer, out, work, type_name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _refuse_unsupported(source: ModelSource) -> None:
    from llmft.modeling.load import read_config

    config = read_config(source.base)
    gguf_arch(config)
    problems = unsupported(config)
    if problems:
        raise UserError(
            f"export: {source.base.describe()} has {', '.join(problems)}, which a GGUF of architecture "
            f"{gguf_arch(config)} does not carry (so it could not be read back and verified); export with --to hf"
        )


def _merged(source: ModelSource, directory: Path) -> ModelSource:
    from llmft.modeling.merge import merge_adapter

    result = merge_adapter(source.base, source.adapter, directory)
    log.info("merged the adapter first (%s)", result.check.describe() if result.check else "not verified")
    return ModelSource(ModelConfig(path=str(directory)), template=source.template)


def _export_gguf(
    model: Any, tokenizer: Any, name: str, gguf_source: Path | None, out: Path, work: Path, type_name: str
) -> ExportResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab = gguf_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], gguf_source)
    written = work / out.name
    write_gguf(model, vocab, written, type_name, name=name)
    try:
        exported = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=out.name, dtype=torch.float32).eval()
        exported_tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=out.name)
    except Exception as exc:
        raise UserError(
            f"export check failed: transformers cannot read the written GGUF back ({exc}); nothing was written to {out}"
        ) from exc
    check = check_export(model, tokenizer, exported, exported_tokenizer, type_name, [exported_tokenizer.eos_token_id])
    _keep_or_refuse(check, out)
    os.replace(written, out)
    os.chmod(out, 0o644)
    text, note = modelfile(out.name, tokenizer, vocab.add_bos)
    path = out.with_suffix(".Modelfile")
    if path.exists():
        note = (note + "; " if note else "") + f"{path} exists and was left as it was"
    else:
        path.write_text(text)
    if note:
        log.info("Ollama Modelfile: %s", note)
    log.info("exported %s (%s)", out, check.describe())
    return ExportResult(out, check, modelfile=path, note=note)


def _export_hf(model: Any, tokenizer: Any, out: Path, work: Path, type_name: str) -> ExportResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = work / "hf"
    stops = end_of_turn_ids(tokenizer)
    generation = (
        model.generation_config if model.generation_config is not None else GenerationConfig.from_model_config(model.config)
    )
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation
    # cast copies (the source stays fp32), one per storage, so that tied weights stay tied and are saved once
    copies: dict[int, torch.Tensor] = {}
    state = {key: copies.setdefault(value.data_ptr(), value.to(HF_TYPES[type_name])) for key, value in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state)
    config = json.loads((folder / "config.json").read_text())  # it records the model's dtype, not the weights'
    (folder / "config.json").write_text(
        json.dumps({**config, "dtype": str(HF_TYPES[type_name]).removeprefix("torch.")}, indent=2) + "\n"
    )
    tokenizer.save_pretrained(folder)
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(folder)
    saved = exported.generation_config.eos_token_id
    check = check_export(model, tokenizer, exported, exported_tokenizer, type_name, saved if isinstance(saved, list) else [saved])
    _keep_or_refuse(check, out)
    usual_file_modes(folder)
    os.replace(folder, out)
    log.info("exported %s (%s)", out, check.describe())
    return ExportResult(out, check)


def _keep_or_refuse(check: ExportCheck, out: Path) -> None:
    if not check.passed:
        raise UserError(
            f"export check failed: the exported model read back with transformers does not match the source "
            f"({check.describe()}); nothing was written to {out}"
        )
