"""Apply the `finetune:` mode to a loaded model: full training, part of it (`freeze`), or LoRA
adapters via peft (DoRA, rsLoRA, the initialisations and LoRA+ are peft's and llmft's options on them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmft.config.finetune import FreezeFinetune, FullFinetune, LoraFinetune, QLoraFinetune
from llmft.errors import UserError

#: LoRA fields whose recipe value must agree with an adapter being continued (recipe key: adapter_config.json key).
_ADAPTER_FIELDS = {
    "rank": "r",
    "alpha": "lora_alpha",
    "target_modules": "target_modules",
    "modules_to_save": "modules_to_save",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
}


#: `finetune.init` -> peft's `init_lora_weights` where they differ (loftq: see `_loftq`).
PEFT_INITS: dict[str, Any] = {"default": True, "loftq": True}
#: peft task type per model task (see `llmft.modeling.load.TASKS`).
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "reward": "SEQ_CLS"}
#: Modules trained in full and saved with the adapter, whatever the recipe says: the reward head.
TASK_MODULES_TO_SAVE = {"causal_lm": [], "reward": ["score"]}


def apply_finetune(model: Any, finetune: FullFinetune | LoraFinetune, task: str = "causal_lm") -> Any:
    if isinstance(finetune, FreezeFinetune):
        from llmft.modeling.freeze import apply_freeze

        return apply_freeze(model, finetune)
    if isinstance(finetune, FullFinetune):
        model.requires_grad_(True)
        return model
    if isinstance(finetune, QLoraFinetune):
        from llmft.modeling.quantize import prepare_quantized

        model = prepare_quantized(model)
    if finetune.adapter_path:
        return _name_base(_continue_adapter(model, finetune))
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(finetune.modules_to_save)
    modules_to_save += [m for m in TASK_MODULES_TO_SAVE[task] if m not in modules_to_save]
    config = LoraConfig(
        r=finetune.rank,
        lora_alpha=finetune.alpha,
        lora_dropout=finetune.dropout,
        target_modules=finetune.target_modules,
        modules_to_save=modules_to_save or None,
        task_type=PEFT_TASK_TYPES[task],
        use_dora=finetune.use_dora,
        use_rslora=finetune.use_rslora,
        # loftq is applied below, on the quantized layers (peft's own "loftq" quantizes a full-precision model)
        init_lora_weights=PEFT_INITS.get(finetune.init, finetune.init),
    )
    try:
        peft_model = _name_base(get_peft_model(model, config))
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise UserError(
            f"finetune.target_modules / modules_to_save: {str(exc).splitlines()[0]}. "
            f"Module names in this model: {', '.join(names)}"
        ) from None
    if finetune.init == "loftq":
        _loftq(peft_model, model.name_or_path)
    return peft_model


def _loftq(peft_model: Any, base: str) -> None:
    """LoftQ on a 4-bit (bitsandbytes) base: A and B set so that quantized W + B A is close to the
    full-precision W, read from the base's safetensors (peft's `replace_lora_weights_loftq`)."""
    from peft import replace_lora_weights_loftq

    local = Path(base).expanduser()
    try:  # a local directory's (possibly sharded) model.safetensors; a hub id's found by peft
        replace_lora_weights_loftq(peft_model, model_path=str(local / "model.safetensors") if local.is_dir() else None)
    except (ValueError, OSError, FileNotFoundError) as exc:
        raise UserError(
            f"finetune.init: loftq could not read the full-precision weights of {base} ({str(exc).splitlines()[0]}); "
            "it needs the base as safetensors files (model.path a local directory or hub id), or use another init"
        ) from None


def portable_name(name_or_path: str) -> str:
    """How a saved adapter names its base (adapter_config.json's base_model_name_or_path): a local
    directory by its absolute path, so `AutoPeftModelForCausalLM.from_pretrained(<adapter dir>)`
    finds it from any working directory; a hub id as it is."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _name_base(peft_model: Any) -> Any:
    """Every adapter of `peft_model` names the base it is applied to, portably (`portable_name`);
    a continued adapter's config otherwise keeps whatever its first run recorded."""
    name = getattr(peft_model.get_base_model(), "name_or_path", None)
    if name:
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = portable_name(name)
    return peft_model


def _continue_adapter(model: Any, finetune: LoraFinetune) -> Any:
    path = Path(finetune.adapter_path).expanduser()
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"finetune.adapter_path: no adapter_config.json in {finetune.adapter_path}")
    saved = json.loads(config_file.read_text())
    conflicts = []
    for ours, theirs in _ADAPTER_FIELDS.items():
        theirs_value = saved.get(theirs, LoraFinetune.model_fields[ours].default)  # older peft wrote no use_dora
        if ours in finetune.model_fields_set and not _same(getattr(finetune, ours), theirs_value):
            conflicts.append(f"finetune.{ours}={getattr(finetune, ours)!r} but the adapter has {theirs_value!r}")
    if conflicts:
        raise UserError(
            "finetune.adapter_path: the recipe contradicts the adapter being continued: "
            + "; ".join(conflicts)
            + ". Remove these keys (the adapter's own values apply) or start a new adapter."
        )
    fix = "Set model.path to the base it was trained on, or start a new adapter (remove finetune.adapter_path)."
    return load_adapter(model, path, model.name_or_path, fix=fix, trainable=True)


def load_adapter(model: Any, adapter_dir: str | Path, base: str, fix: str, trainable: bool = False, check: bool = True) -> Any:
    """Apply the saved LoRA adapter in `adapter_dir` to `model`, the base loaded from `base`.

    Unless `check` is off, the base is first compared with the one the adapter was trained on
    (`llmft.modeling.fingerprint`); another base is refused (UserError, ending in `fix`: how the
    caller's user names the right base), and so is one the adapter's weights do not fit.
    """
    from peft import PeftModel

    from llmft.modeling.fingerprint import check_base

    if check:
        check_base(model, adapter_dir, base, fix)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except (RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        misfit = [line for line in lines if "size mismatch" in line or "not found in the base model" in line]
        if not misfit:  # not a misfit between adapter and base: a bug to see in full
            raise
        more = f" (and {len(misfit) - 1} more)" if len(misfit) > 1 else ""
        raise UserError(f"the adapter {adapter_dir} does not fit the base {base}: {misfit[0]}{more}. {fix}") from None


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, list) or isinstance(theirs, list):
        return sorted(ours or []) == sorted(theirs or [])
    return ours == theirs


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
