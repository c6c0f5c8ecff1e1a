"""The base fingerprint: the same weights in any dtype match, other weights do not."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny import build_model

from llmft.errors import UserError
from llmft.modeling import fingerprint
from llmft.rundir import BASE_FINGERPRINT

VOCAB = 400


@pytest.fixture(scope="module")
def recorded():
    return fingerprint.take(build_model(VOCAB), base="tiny")


def test_what_it_records(recorded):
    model = build_model(VOCAB)
    names = [name for name, _ in model.model.named_parameters()]
    assert list(recorded["params"]) == names  # the body only: no lm_head
    assert "lm_head.weight" not in recorded["params"] and recorded["base"] == "tiny"
    embed = recorded["params"]["embed_tokens.weight"]
    assert embed["shape"] == [VOCAB, 32] and len(embed["values"]) == fingerprint.SAMPLES
    # positions in the first half: rows added to the vocabulary are never sampled
    assert max(fingerprint.positions(VOCAB * 32)) < VOCAB * 32 // 2
    assert len(set(fingerprint.positions(VOCAB * 32))) == fingerprint.SAMPLES
    assert len(json.dumps(recorded)) < 8_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_same_weights_in_any_dtype_match(recorded, dtype):
    result = fingerprint.compare(build_model(VOCAB).to(dtype), recorded)
    assert result.same and result.compared == len(recorded["params"])


def test_new_vocabulary_rows_are_not_compared():
    model = build_model(VOCAB)
    model.resize_token_embeddings(VOCAB + 3)  # new rows, random
    recorded = fingerprint.take(model, base="tiny")
    again = build_model(VOCAB)
    again.resize_token_embeddings(VOCAB + 3)  # other random rows
    assert fingerprint.compare(again, recorded).same


def test_a_reward_head_shares_the_fingerprint_of_its_causal_lm(recorded, tiny_model_dir):
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model

    causal = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32)
    reward = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32, task="reward")
    assert fingerprint.compare(reward, fingerprint.take(causal, base="tiny")).same


def test_other_weights_differ(recorded):
    other = fingerprint.compare(build_model(VOCAB, seed=1), recorded)
    assert not other.same
    # the norms are all ones in both, every matrix differs
    assert len(other.differing) == sum(1 for name in recorded["params"] if "norm" not in name)

    noisy = build_model(VOCAB)
    with torch.no_grad():
        for param in noisy.parameters():
            param.add_(torch.randn_like(param) * 0.01 * param.std().clamp(min=1e-3))
    assert not fingerprint.compare(noisy, recorded).same


def test_other_shapes_differ(recorded):
    result = fingerprint.compare(build_model(VOCAB, hidden_size=48), recorded)
    assert "embed_tokens.weight: shape [400, 48] here, [400, 32] in the adapter's base" in result.differing
    deeper = fingerprint.compare(build_model(VOCAB, num_hidden_layers=1), recorded)
    assert any("layers.1." in d and "not in this model" in d for d in deeper.differing)


def test_check_base_names_adapter_base_and_fix(recorded, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="llmft"):
        assert fingerprint.check_base(build_model(VOCAB), tmp_path, "tiny", fix="FIX") is None  # no file: a note
    assert "cannot be checked" in caplog.text

    fingerprint.write(recorded, tmp_path)
    assert (tmp_path / BASE_FINGERPRINT).is_file()
    assert fingerprint.check_base(build_model(VOCAB).to(torch.bfloat16), tmp_path, "tiny", fix="FIX").same
    with pytest.raises(UserError) as err:
        fingerprint.check_base(build_model(VOCAB, seed=1), tmp_path, "other/base", fix="Set model.path.")
    message = str(err.value)
    assert str(tmp_path) in message and "other/base" in message and "trained on tiny" in message
    assert "layers.0.self_attn.q_proj.weight" in message and message.endswith("Set model.path.")


def test_an_unreadable_file_is_a_user_error(tmp_path):
    (tmp_path / BASE_FINGERPRINT).write_text("{not json")
    with pytest.raises(UserError, match="delete it"):
        fingerprint.read(tmp_path)
