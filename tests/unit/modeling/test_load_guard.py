"""A wrong path never yields a randomly initialised model; a random-looking first loss is loud."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import build_tokenizer

from llmft.callbacks import RandomInitAlarm, random_init_suspected
from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.modeling.load import arrange_pad_token, check_model_path, load_model


def test_missing_weights_refuse_to_load_and_are_named(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(path=str(broken)), torch.float32)
    message = str(err.value)
    assert "model.layers.1.mlp.down_proj.weight" in message and "1 missing" in message
    assert "randomly initialised" in message


def test_complete_checkpoint_loads(tiny_model_dir):
    model = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32)
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("missing", "model.path: directory not found"),
        ("unmerged", r"holds a LoRA adapter that was not merged there .*: llmft merge --adapter .* --out .*/merged"),
        ("empty", "has no config.json"),
        ("config_only", "has a config.json but no weights"),
        ("adapter", "holds a LoRA adapter, not a model"),
        ("gguf_missing", "model.gguf_file: nope.gguf not found"),
    ],
)
def test_wrong_paths_name_what_is_missing(layout, expected, tiny_model_dir, tmp_path):
    path = tmp_path / "model"
    gguf = None
    if layout == "unmerged":  # a run's <dir>/merged that its merge never wrote
        (tmp_path / "adapter_config.json").write_text("{}")
        path = tmp_path / "merged"
    elif layout != "missing":
        path.mkdir()
    if layout == "config_only":
        shutil.copy(tiny_model_dir / "config.json", path)
    if layout == "adapter":
        (path / "adapter_config.json").write_text("{}")
    if layout == "gguf_missing":
        gguf = "nope.gguf"
    with pytest.raises(UserError, match=expected):
        check_model_path(ModelConfig(path=str(path), gguf_file=gguf))


def test_random_init_alarm_threshold():
    vocab = 49152
    assert random_init_suspected(math.log(vocab), vocab)
    assert random_init_suspected(0.95 * math.log(vocab), vocab)
    assert not random_init_suspected(0.85 * math.log(vocab), vocab)
    assert not random_init_suspected(1.2, vocab)


def test_random_init_alarm_fires_once_on_first_loss(caplog):
    alarm = RandomInitAlarm(vocab_size=400, model_path="some/model")
    with caplog.at_level(logging.WARNING, logger="llmft"):
        alarm.on_log(None, None, None, logs={"loss": math.log(400)})
        alarm.on_log(None, None, None, logs={"loss": math.log(400)})
    assert alarm.fired
    assert sum("RANDOMLY INITIALISED" in r.getMessage().upper() for r in caplog.records) == 1

    quiet = RandomInitAlarm(vocab_size=400, model_path="some/model")
    quiet.on_log(None, None, None, logs={"loss": 1.0})
    assert quiet.checked and not quiet.fired


def test_pad_token_is_distinct_from_eos():
    tokenizer = build_tokenizer()
    assert tokenizer.pad_token == tokenizer.eos_token  # as many chat models ship
    message = arrange_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    assert "EOS stays supervised" in message


def test_pad_token_added_when_no_free_token():
    tokenizer = build_tokenizer()
    tokenizer.unk_token = tokenizer.eos_token
    before = len(tokenizer)
    arrange_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|llmft_pad|>" and len(tokenizer) == before + 1
