"""`llmft chat` loads what training wrote and renders with the template training used."""

from __future__ import annotations

import json

import pytest
from conftest import make_recipe

from llmft.chat import ChatSession, interactive, resolve_source
from llmft.config import validate_recipe
from llmft.run import train


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from conftest import CONVERSATIONS, write_jsonl

    tmp = tmp_path_factory.mktemp("chat")
    data = write_jsonl(tmp / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp / "run"
    # llmft's named template replaces the tokenizer's own: chat must pick it up from the run
    train(validate_recipe(make_recipe(tiny_model_dir, data, out, data={"template": "chatml"}, training={"max_steps": 2})))
    return out


def test_run_dir_resolves_to_base_plus_adapter(lora_run, tiny_model_dir):
    source = resolve_source(str(lora_run))
    assert source.adapter == lora_run
    assert source.base.path == str(tiny_model_dir)
    assert source.tokenizer == str(lora_run)


def test_chat_uses_the_training_template(lora_run):
    session = ChatSession(resolve_source(str(lora_run)), max_new_tokens=5)
    saved = (lora_run / "chat_template.jinja").read_text()
    assert session.tokenizer.chat_template == saved
    assert "You are a tiny test model" not in saved  # llmft's chatml has no default system prompt
    answer = session.reply("Hello!")
    assert isinstance(answer, str)
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.tokenizer.convert_tokens_to_ids("<|im_end|>") in session.stop_ids


def test_interactive_loop_reset_and_exit(lora_run):
    session = ChatSession(resolve_source(str(lora_run)), max_new_tokens=2)
    lines = iter(["hi", "/reset", "hello", "/exit"])
    printed: list[str] = []
    interactive(session, read=lambda prompt: next(lines), write=printed.append)
    assert sum(p.startswith("model> ") for p in printed) == 2
    assert len(session.history) == 2  # reset cleared the first exchange


def test_adapter_dir_without_recipe_uses_its_base(lora_run, tmp_path, tiny_model_dir):
    config = json.loads((lora_run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    (lora_run / "recipe.resolved.yaml").rename(tmp_path / "moved.yaml")
    try:
        source = resolve_source(str(lora_run))
        assert source.base.path == str(tiny_model_dir) and source.adapter == lora_run
    finally:
        (tmp_path / "moved.yaml").rename(lora_run / "recipe.resolved.yaml")


def test_plain_model_dir(tiny_model_dir):
    source = resolve_source(str(tiny_model_dir))
    assert source.adapter is None and source.base.path == str(tiny_model_dir)
    assert isinstance(ChatSession(source, max_new_tokens=2).reply("Hello!"), str)


@pytest.mark.usefixtures("restore_process_state")
def test_a_run_whose_base_changed_is_refused(lora_run, other_seed_model_dir, tmp_path, capsys):
    """`llmft chat --model RUN_DIR` when the base the run names now holds other weights."""
    import shutil

    import yaml

    from llmft.cli import main

    moved = tmp_path / "run"
    shutil.copytree(lora_run, moved)
    recipe = yaml.safe_load((moved / "recipe.resolved.yaml").read_text())
    recipe["model"]["path"] = str(other_seed_model_dir)
    (moved / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["chat", "--model", str(moved), "--prompt", "Hello!", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"the adapter {moved} was not trained on the base {other_seed_model_dir}" in err
    assert "model.path" in err and "Traceback" not in err
