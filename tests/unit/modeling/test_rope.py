"""model.rope_scaling written into a transformers config, and what the rotary embedding then computes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from llmft.config.model import RopeScaling
from llmft.errors import UserError
from llmft.modeling.rope import apply_rope_scaling


def config(**kw) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512, rope_theta=500.0, **kw)


def rotary(cfg: LlamaConfig, length: int) -> tuple[torch.Tensor, torch.Tensor, LlamaRotaryEmbedding]:
    emb = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, length, 1)
    cos, sin = emb(x, torch.arange(length)[None])
    return cos[0], sin[0], emb


def test_linear_divides_positions_by_the_factor():
    plain = config()
    scaled = config()
    apply_rope_scaling(scaled, RopeScaling(type="linear", factor=4))
    assert scaled.rope_parameters == {"rope_theta": 500.0, "rope_type": "linear", "factor": 4.0}
    assert scaled.max_position_embeddings == 2048
    cos_p, sin_p, emb_p = rotary(plain, 64)
    cos_s, sin_s, emb_s = rotary(scaled, 64)
    torch.testing.assert_close(emb_s.inv_freq, emb_p.inv_freq / 4)
    # position 4*i scaled is position i unscaled
    torch.testing.assert_close(cos_s[::4], cos_p[:16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin_s[::4], sin_p[:16], atol=1e-5, rtol=1e-5)


def test_dynamic_changes_nothing_within_the_pretrained_length_and_stretches_beyond():
    plain, scaled = config(), config()
    apply_rope_scaling(scaled, RopeScaling(type="dynamic", factor=4))
    assert scaled.max_position_embeddings == 512  # the threshold stays the pretrained length
    torch.testing.assert_close(rotary(scaled, 256)[0], rotary(plain, 256)[0])
    long_scaled, long_plain = rotary(scaled, 1024)[0], rotary(plain, 1024)[0]
    assert not torch.allclose(long_scaled[600], long_plain[600], atol=1e-3)


def test_yarn_scales_attention_and_keeps_high_frequencies():
    scaled = config()
    apply_rope_scaling(scaled, RopeScaling(type="yarn", factor=4, original_max_position_embeddings=256))
    assert scaled.rope_parameters["original_max_position_embeddings"] == 256
    assert scaled.max_position_embeddings == 1024
    _, _, emb = rotary(scaled, 8)
    _, _, plain = rotary(config(), 8)
    assert emb.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    assert emb.inv_freq[0] == pytest.approx(plain.inv_freq[0].item())  # the fastest frequency is kept
    assert emb.inv_freq[-1] == pytest.approx(plain.inv_freq[-1].item() / 4)  # the slowest is interpolated


def test_model_without_rope_is_refused():
    with pytest.raises(UserError, match=r"model.rope_scaling: this model \(gpt2\) has no rotary position embeddings"):
        apply_rope_scaling(GPT2Config(), RopeScaling(type="linear", factor=2))


def test_already_scaled_model_is_refused():
    cfg = config()
    apply_rope_scaling(cfg, RopeScaling(type="linear", factor=2))
    with pytest.raises(UserError, match="already scales its RoPE"):
        apply_rope_scaling(cfg, RopeScaling(type="linear", factor=2))
