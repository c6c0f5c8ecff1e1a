from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# the tokenized-data cache (default ~/.cache/llmft) goes to a throwaway directory
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="llmft-test-cache-")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
# `llmft train` re-executes itself with tcmalloc preloaded (training.allocator); in-process CLI tests
# must not re-execute pytest. Subprocess tests that check the re-execution remove this.
os.environ["LLMFT_ALLOCATOR_REEXEC"] = "off in tests"
sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tokenizer, save_tiny_model  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Hello! How are you today?"}, {"role": "assistant", "content": "I am fine, thank you."}],
    [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a short poem about the sea."},
        {"role": "assistant", "content": "The sea is wide and blue."},
    ],
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Translate to French: good morning"},
        {"role": "assistant", "content": "bonjour"},
    ],
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am a helpful assistant."}],
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def other_seed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's architecture with other weights: the wrong base for its adapters."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-seed1"), seed=1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


def cache_hub_model(repo_id: str = "some/model") -> Path:
    """Put a (config-only) snapshot of `repo_id` in the test run's Hugging Face cache, so a recipe naming
    that hub id passes the offline check (`llmft.modeling.hub`); returns the snapshot directory."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshot = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def cache_hub_dataset(cache: Path, repo_id: str, splits: dict[str, list[dict]], config: str = "default") -> Path:
    """Write `splits` into the datasets cache `cache` as `datasets` stores `repo_id` (config `config`)
    after downloading it: built by datasets' own JSON builder, under the hub's directory name."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    source = cache.parent / f"src-{name}-{config}"
    source.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(source / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    build = cache.parent / f"build-{name}-{config}"
    builder = Json(data_files=files, cache_dir=str(build), dataset_name=name, config_name=config, config_id=config, hash="0" * 40)
    builder.download_and_prepare()
    target = cache / f"{org}___{name}" / config
    target.parent.mkdir(parents=True, exist_ok=True)
    (build / name / config).rename(target)
    return target


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty datasets cache for this test (`cache_hub_dataset` fills it), read offline."""
    import datasets

    cache = tmp_path / "hf-datasets"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    rows = [
        {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
        {"instruction": "Translate to French:", "input": "good morning", "output": "bonjour", "system": "You translate."},
        {
            "instruction": "Who are you?",
            "output": "I am a helpful assistant.",
            "history": [["Hello!", "Hello! How are you today?"]],
        },
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def pt_file(tmp_path: Path) -> Path:
    from tiny import CORPUS

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS * 3) + "\n")
    return path


def make_recipe(model_dir: Path, train: Path, out: Path, stage: str = "sft", mode: str = "lora", **sections) -> dict:
    """A minimal recipe dict for the tiny model; sections override/extend the defaults."""
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {"train": str(train), "max_length": 64},
        "finetune": {"mode": mode, **({"rank": 4, "alpha": 8, "dropout": 0.0} if mode == "lora" else {})},
        "stage": {"name": stage},
        "training": {
            "max_steps": 3,
            "micro_batch_size": 2,
            "learning_rate": 1e-2,
            "precision": "fp32",
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
        },
        "output": {"dir": str(out)},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


MINIMAL_RECIPE = {
    "model": {"path": "some/model"},
    "data": {"train": "train.jsonl"},
    "finetune": {"mode": "lora"},
    "stage": {"name": "sft"},
    "output": {"dir": "out"},
}


def minimal_recipe(**sections: dict | None) -> dict:
    """A minimal valid recipe (no files needed to validate it); each keyword updates a section,
    or removes it when None."""
    import copy

    raw = copy.deepcopy(MINIMAL_RECIPE)
    for name, values in sections.items():
        if values is None:
            raw.pop(name, None)
        else:
            raw.setdefault(name, {}).update(values)
    return raw


@pytest.fixture
def restore_process_state():
    """`main` configures logging (root handler on the captured stderr) and sets env defaults:
    undo that so later tests are not affected."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    environ = dict(os.environ)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    os.environ.clear()
    os.environ.update(environ)


def settings_for(recipe, precision: str | None = None):
    """The recipe resolved for this machine (`llmft.resolve`), with `precision` forced when given."""
    from dataclasses import replace

    from llmft.resolve import resolve

    resolved = resolve(recipe)
    return replace(resolved, precision=precision) if precision else resolved


def perturb_adapter(model) -> None:
    """A trained-looking LoRA adapter, the same for every model of one architecture (lora_B starts at
    zero, so the policy would equal the reference and a score head's gradient path be trivial)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def assert_logged_alike(got: list[dict], want: list[dict], keys: tuple[str, ...], atol: float, rtol: float = 1e-4) -> None:
    """Two runs' logged steps agree on each of `keys`, step by step."""
    import torch

    assert len(got) == len(want)
    for key in keys:
        torch.testing.assert_close(
            torch.tensor([h[key] for h in got]), torch.tensor([h[key] for h in want]), atol=atol, rtol=rtol, msg=key
        )


@pytest.fixture
def merge_counts(monkeypatch) -> list[int]:
    """How many LoRA layers each entry into `llmft.fastpath.sampling.merged_lora` ran merged, in order."""
    import contextlib

    from llmft.fastpath import sampling

    counts: list[int] = []
    real = sampling.merged_lora

    @contextlib.contextmanager
    def counted(model):
        with real(model) as count:
            counts.append(count)
            yield count

    monkeypatch.setattr(sampling, "merged_lora", counted)
    return counts
