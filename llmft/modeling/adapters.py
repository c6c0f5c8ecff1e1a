"""Apply the `finetune:` mode to a loaded model: full training, or LoRA adapters via peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmft.config.finetune import FullFinetune, LoraFinetune, QLoraFinetune
from llmft.errors import UserError

#: LoRA fields whose recipe value must agree with an adapter being continued.
_ADAPTER_FIELDS = {"rank": "r", "alpha": "lora_alpha", "target_modules": "target_modules", "modules_to_save": "modules_to_save"}


#: peft task type per model task (see `llmft.modeling.load.TASKS`).
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "reward": "SEQ_CLS"}
#: Modules trained in full and saved with the adapter, whatever the recipe says: the reward head.
TASK_MODULES_TO_SAVE = {"causal_lm": [], "reward": ["score"]}


def apply_finetune(model: Any, finetune: FullFinetune | LoraFinetune, task: str = "causal_lm") -> Any:
    if isinstance(finetune, FullFinetune):
        model.requires_grad_(True)
        return model
    if isinstance(finetune, QLoraFinetune):
        from llmft.modeling.quantize import prepare_quantized

        model = prepare_quantized(model)
    if finetune.adapter_path:
        return _continue_adapter(model, finetune)
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
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise UserError(
            f"finetune.target_modules / modules_to_save: {str(exc).splitlines()[0]}. "
            f"Module names in this model: {', '.join(names)}"
        ) from None


def _continue_adapter(model: Any, finetune: LoraFinetune) -> Any:
    from peft import PeftModel

    path = Path(finetune.adapter_path).expanduser()
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"finetune.adapter_path: no adapter_config.json in {finetune.adapter_path}")
    saved = json.loads(config_file.read_text())
    conflicts = []
    for ours, theirs in _ADAPTER_FIELDS.items():
        if ours in finetune.model_fields_set and not _same(getattr(finetune, ours), saved.get(theirs)):
            conflicts.append(f"finetune.{ours}={getattr(finetune, ours)!r} but the adapter has {saved.get(theirs)!r}")
    if conflicts:
        raise UserError(
            "finetune.adapter_path: the recipe contradicts the adapter being continued: "
            + "; ".join(conflicts)
            + ". Remove these keys (the adapter's own values apply) or start a new adapter."
        )
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, list) or isinstance(theirs, list):
        return sorted(ours or []) == sorted(theirs or [])
    return ours == theirs


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
