"""The value model: one linear layer reading the policy's last hidden states (so the policy's
trunk is shared, and in LoRA runs no second model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


def hidden_size(model: Any) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class ValueHead(nn.Module):
    """hidden (..., H) -> value (...), computed in fp32. Starts at zero output, so the first
    advantages are the (KL-penalised) returns themselves."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(hidden, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.score(hidden_states.float()).squeeze(-1)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / VALUE_HEAD_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))
        return path
