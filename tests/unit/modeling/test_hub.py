"""A hub id this machine cannot fetch stops the run at once, in one line that says what to do:
offline (HF_HUB_OFFLINE=1, as in these tests) it must be cached; online the hub must answer one
short request."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import cache_hub_model, make_recipe

import llmft.modeling.hub as hub
from llmft.cli import EXIT_USER, main
from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.modeling.load import load_tokenizer


@pytest.fixture
def online_without_network(monkeypatch):
    """As on a machine whose DNS cannot resolve the hub: offline mode off, the probe fails."""

    class Session:
        def head(self, url, timeout):
            assert timeout == hub.PROBE_TIMEOUT
            raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.get_session", lambda: Session())
    hub.unreachable.cache_clear()
    yield
    hub.unreachable.cache_clear()


def test_hub_ids_and_local_paths():
    assert hub.is_hub_id("org/name") and hub.is_hub_id("gpt2")
    assert not any(hub.is_hub_id(p) for p in ("./org/name", "/models/x", "~/x", "a/b/c", "..\\x"))


def test_offline_a_hub_id_must_be_cached():
    problem = hub.hub_problem("someorg/uncached", "model.path")
    assert problem.startswith(
        "someorg/uncached is not a local directory, and with HF_HUB_OFFLINE=1 it must be in the Hugging Face cache ("
    )
    assert problem.endswith(
        "which does not hold it; set model.path to a local model directory, or download it once where the hub can be reached"
    )
    cache_hub_model("someorg/cached")
    assert hub.hub_problem("someorg/cached", "model.path") is None


def test_online_an_unreachable_hub_is_said_in_one_line(online_without_network):
    assert hub.hub_problem("someorg/uncached", "model.path") == (
        "cannot reach the Hugging Face Hub (https://huggingface.co: [Errno -2] Name or service not known) to download "
        "someorg/uncached; set model.path to a local model directory, or run with HF_HUB_OFFLINE=1 once the model is "
        "in the Hugging Face cache"
    )
    cache_hub_model("someorg/cached-online")
    assert "run with HF_HUB_OFFLINE=1 to use that copy" in hub.hub_problem("someorg/cached-online", "model.path")


def test_loading_stops_before_any_download_is_tried(online_without_network):
    with pytest.raises(UserError) as info:
        load_tokenizer(ModelConfig(path="someorg/uncached"))
    assert str(info.value).startswith("model.path: cannot reach the Hugging Face Hub (")


@pytest.mark.usefixtures("restore_process_state")
def test_train_refuses_an_uncached_hub_id_offline_in_one_line(sft_file, tmp_path, capsys):
    from llmft.preflight import this_machine

    raw = make_recipe(Path("someorg/uncached"), sft_file, tmp_path / "out")
    raw["model"]["path"] = "someorg/uncached"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml")]) == EXIT_USER
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: 1 problem on {this_machine()}; nothing was loaded or written:",
        f"  - model.path: {hub.hub_problem('someorg/uncached', 'model.path')}",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("restore_process_state")
def test_validate_lists_it_without_suggesting_another_device(sft_file, tmp_path, capsys):
    raw = make_recipe(Path("someorg/uncached"), sft_file, tmp_path / "out")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "r.yaml")]) == EXIT_USER
    err = capsys.readouterr().err
    assert "  - model.path: someorg/uncached is not a local directory" in err and "--device cuda" not in err
