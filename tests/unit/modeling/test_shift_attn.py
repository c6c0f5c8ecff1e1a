"""S2-Attn (training.shift_attn) against a brute-force definition, and its refusals."""

from __future__ import annotations

import pytest
import torch

from llmft.errors import UserError
from llmft.modeling import shift_attn


def brute_force(q, k, v, allowed=None):
    """Head by head with a dense mask: causal, within the token's group (groups shifted by half a
    group for the second half of the heads), and within `allowed`."""
    batch, heads, length, _ = q.shape
    k = k.repeat_interleave(heads // k.shape[1], 1)
    v = v.repeat_interleave(heads // v.shape[1], 1)
    size = shift_attn.group_size(length)
    pos = torch.arange(length)
    out = []
    for h in range(heads):
        group = (pos + (0 if h < heads // 2 else size // 2)) // size
        mask = (group[:, None] == group[None, :]) & (pos[:, None] >= pos[None, :])
        mask = mask.expand(batch, length, length) & (allowed if allowed is not None else True)
        mask = mask | torch.eye(length, dtype=torch.bool)
        out.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], attn_mask=mask[:, None]
            )
        )
    return torch.cat(out, 1).transpose(1, 2)


def qkv(length, heads=4, kv_heads=2, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, length, 8, generator=g),
        torch.randn(batch, kv_heads, length, 8, generator=g),
        torch.randn(batch, kv_heads, length, 8, generator=g),
    )


def test_group_size_is_a_quarter_rounded_up_to_even():
    assert [shift_attn.group_size(n) for n in (8, 13, 32, 37, 1024)] == [2, 4, 8, 10, 256]


@pytest.mark.parametrize("length", [8, 13, 32, 37])  # 13 and 37 are not multiples of the group count
def test_matches_brute_force(length):
    q, k, v = qkv(length)
    torch.testing.assert_close(shift_attn.shifted_sparse_attention(q, k, v), brute_force(q, k, v), atol=1e-6, rtol=1e-5)


def test_keeps_the_batch_mask_inside_groups():
    """Right padding (a 4-D bool mask, as sdpa gets it) and an additive float mask (as eager gets it)."""
    length = 21
    q, k, v = qkv(length)
    valid = torch.arange(length)[None] < torch.tensor([length, length - 5])[:, None]
    allowed = valid[:, None, :] & torch.ones(length, length, dtype=torch.bool).tril()
    expected = brute_force(q, k, v, allowed)
    torch.testing.assert_close(shift_attn.shifted_sparse_attention(q, k, v, allowed[:, None]), expected, atol=1e-6, rtol=1e-5)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.testing.assert_close(shift_attn.shifted_sparse_attention(q, k, v, additive[:, None]), expected, atol=1e-6, rtol=1e-5)


def test_positions_that_restart_keep_examples_apart():
    """Packed / padding-free rows come without a mask: examples are read from the position ids."""
    q, k, v = qkv(24, batch=1)
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None]
    same = (torch.arange(24) >= 10)[:, None] == (torch.arange(24) >= 10)[None, :]
    allowed = (same & torch.ones(24, 24, dtype=torch.bool).tril())[None]
    out = shift_attn.shifted_sparse_attention(q, k, v, position_ids=positions)
    torch.testing.assert_close(out, brute_force(q, k, v, allowed), atol=1e-6, rtol=1e-5)


def test_a_token_sees_only_its_groups():
    """Perturbing a key/value outside both of a token's groups leaves its output unchanged."""
    q, k, v = qkv(32, batch=1, kv_heads=4)  # group size 8; token 13: group [8, 16), shifted group [12, 20)
    base = shift_attn.shifted_sparse_attention(q, k, v)
    for far in (0, 7):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, far] += 1.0
        v2[:, :, far] += 1.0
        out = shift_attn.shifted_sparse_attention(q, k2, v2)
        torch.testing.assert_close(out[:, 13], base[:, 13])
    k2, v2 = k.clone(), v.clone()
    v2[:, :, 9] += 1.0  # in the unshifted group only: the first half of the heads change
    out = shift_attn.shifted_sparse_attention(q, k2, v2)
    assert not torch.allclose(out[:, 13, :2], base[:, 13, :2]) and torch.allclose(out[:, 13, 2:], base[:, 13, 2:])


def test_unsupported_model_family_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match="training.shift_attn: not available for model type 'gpt2'"):
        shift_attn.enable(model)


def test_flash_attention_base_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
        )
    )
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(UserError, match="training.shift_attn: works with model.attn_implementation sdpa or eager"):
        shift_attn.enable(model)
