"""Start `llmft serve`: check its packages, load the model, run uvicorn."""

from __future__ import annotations

import importlib.util
import logging

from llmft.errors import UserError

log = logging.getLogger("llmft")

PACKAGES = ("fastapi", "uvicorn")


def require_packages() -> None:
    """Refuse, before any model is loaded, when the server's packages are missing."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"llmft serve needs {' and '.join(missing)}, which are not installed: pip install 'llmft[serve]' "
            f"(or pip install {' '.join(missing)})"
        )


def load_app(model: str, gguf_file: str | None = None, max_queue: int = 16, template: str | None = None) -> object:
    """The FastAPI app serving `model` (anything `llmft chat --model` takes), its model loaded."""
    import torch

    from llmft.modeling.sources import load_causal_lm, resolve_source

    require_packages()
    from llmft.serve.app import create_app

    if max_queue < 1:
        raise UserError(f"--max-queue: must be at least 1 (got {max_queue})")
    source = resolve_source(model, gguf_file, template)
    log.info("serve: loading %s", source.describe())
    loaded, tokenizer = load_causal_lm(source)
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    return create_app(model, loaded, tokenizer, max_queue)


def serve(
    model: str, host: str, port: int, gguf_file: str | None = None, max_queue: int = 16, template: str | None = None
) -> None:
    require_packages()
    import uvicorn

    app = load_app(model, gguf_file, max_queue, template)
    log.info("serve: %s on http://%s:%d/v1 (OpenAI API; GET /health)", model, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
