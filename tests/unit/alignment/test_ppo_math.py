"""PPO's math, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llmft.alignment.gae import gae
from llmft.alignment.kl import AdaptiveKLController, FixedKLController, kl_controller, kl_penalised_rewards, last_indices
from llmft.alignment.losses import entropy_from_logits, policy_loss, token_logprobs, value_loss
from llmft.alignment.stats import masked_mean, masked_var, whiten


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- GAE -------------------------------------------------------------------------------------


def test_gae_four_steps_by_hand():
    """rewards r = [0, 0, 0, 1], values V = [0.5, 0.4, 0.3, 0.2], gamma = 0.9, lam = 0.5
    (so gamma * lam = 0.45); the value after the last step is 0.

        delta_3 = 1 + 0.9 * 0   - 0.2 =  0.8
        delta_2 = 0 + 0.9 * 0.2 - 0.3 = -0.12
        delta_1 = 0 + 0.9 * 0.3 - 0.4 = -0.13
        delta_0 = 0 + 0.9 * 0.4 - 0.5 = -0.14

        A_3 = 0.8
        A_2 = -0.12 + 0.45 * 0.8    =  0.24
        A_1 = -0.13 + 0.45 * 0.24   = -0.022
        A_0 = -0.14 + 0.45 * -0.022 = -0.1499

        returns R = A + V = [0.3501, 0.378, 0.54, 1.0]
    """
    advantages, returns = gae(t([0, 0, 0, 1]), t([0.5, 0.4, 0.3, 0.2]), t([1, 1, 1, 1]), gamma=0.9, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([-0.1499, -0.022, 0.24, 0.8], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([0.3501, 0.378, 0.54, 1.0], abs=1e-6)


def test_gae_ignores_padding():
    """The same reply, right-padded (garbage in the padding) and with a hole: identical numbers on the
    real steps, 0 elsewhere."""
    rewards = t([0, 0, 0, 1, 7.0], [0, 0, 5.0, 0, 1])
    values = t([0.5, 0.4, 0.3, 0.2, 9.0], [0.5, 0.4, 3.0, 0.3, 0.2])
    mask = t([1, 1, 1, 1, 0], [1, 1, 0, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    expected = [-0.1499, -0.022, 0.24, 0.8]
    assert advantages[0, :4].tolist() == pytest.approx(expected, abs=1e-6)
    assert advantages[1, [0, 1, 3, 4]].tolist() == pytest.approx(expected, abs=1e-6)
    assert advantages[0, 4] == 0 and advantages[1, 2] == 0 and returns[0, 4] == 0 and returns[1, 2] == 0


def test_gae_gamma_lam_one_is_monte_carlo():
    """gamma = lam = 1: A_t = (sum of rewards from t on) - V_t, and the returns are those sums."""
    rewards, values = t([1, -2, 3]), t([0.5, 1.0, -1.0])
    advantages, returns = gae(rewards, values, t([1, 1, 1]), gamma=1.0, lam=1.0)
    assert returns[0].tolist() == pytest.approx([2.0, 1.0, 3.0])
    assert advantages[0].tolist() == pytest.approx([1.5, 0.0, 4.0])


def test_gae_lam_zero_is_one_step_td():
    rewards, values = t([0, 1]), t([0.5, 0.25])
    advantages, _ = gae(rewards, values, t([1, 1]), gamma=0.5, lam=0.0)
    # delta_0 = 0 + 0.5 * 0.25 - 0.5 = -0.375; delta_1 = 1 - 0.25 = 0.75
    assert advantages[0].tolist() == pytest.approx([-0.375, 0.75])


# --- whitening -------------------------------------------------------------------------------


def test_masked_mean_and_var():
    x, mask = t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0])
    assert masked_mean(x, mask) == pytest.approx(2.5)
    # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; unbiased / 3, biased / 4
    assert masked_var(x, mask) == pytest.approx(5 / 3)
    assert masked_var(x, mask, unbiased=False) == pytest.approx(5 / 4)
    assert masked_mean(t([1, 2], [3, 100]), t([1, 1], [1, 0]), dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_whiten_by_hand():
    x, mask = t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0])
    std = math.sqrt(5 / 3)
    centred = [(v - 2.5) / std for v in (1, 2, 3, 4)]
    assert whiten(x, mask)[0].tolist() == pytest.approx(centred + [0.0], abs=1e-5)
    assert whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([c + 2.5 for c in centred] + [0.0], abs=1e-5)
    out = whiten(x, mask)
    assert masked_mean(out, mask) == pytest.approx(0.0, abs=1e-6)
    assert masked_var(out, mask) == pytest.approx(1.0, abs=1e-5)


# --- KL penalty ------------------------------------------------------------------------------


def test_kl_penalty_on_every_reply_token_score_on_the_last():
    """Two replies of 3 and 2 tokens (width 4); kl_coef 0.1. Each reply token gets
    -0.1 * (logp - ref_logp); the score lands on token 2 of row 0 and token 1 of row 1."""
    logprobs = t([-1.0, -2.0, -0.5, -9.0], [-1.0, -1.0, -9.0, -9.0])
    ref = t([-1.5, -1.0, -0.5, 0.0], [-2.0, -0.5, 0.0, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -3.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, t([0.5, -1.0, 0.0, 0.0], [1.0, -0.5, 0.0, 0.0]))
    assert torch.allclose(rewards, t([-0.05, 0.1, 2.0, 0.0], [-0.1, 0.05 - 3.0, 0.0, 0.0]))


def test_last_indices():
    assert last_indices(t([1, 1, 0], [1, 0, 0], [1, 1, 1])).tolist() == [1, 0, 2]


def test_fixed_controller_never_moves():
    ctl = kl_controller("fixed", 0.05, target=6.0, horizon=10000)
    assert isinstance(ctl, FixedKLController)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


def test_adaptive_controller_by_hand():
    """beta = 0.1, target 6, horizon 10000, 100 samples per update (K = 100 / 10000 = 0.01):
    KL 9   -> e = clip(9/6 - 1 = 0.5)     = 0.2  -> beta * (1 + 0.01 * 0.2)  = 0.1002
    KL 5.4 -> e = 5.4/6 - 1               = -0.1 -> beta * (1 - 0.01 * 0.1)  = 0.1 * 0.999
    KL 0   -> e = clip(-1)                = -0.2 -> beta * (1 - 0.01 * 0.2)  = 0.0998"""
    for kl, expected in ((9.0, 0.1002), (5.4, 0.0999), (0.0, 0.0998), (6.0, 0.1)):
        ctl = kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
        assert isinstance(ctl, AdaptiveKLController)
        ctl.update(kl, 100)
        assert ctl.value == pytest.approx(expected, abs=1e-9)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 100)
    ctl.update(9.0, 100)
    assert ctl.value == pytest.approx(0.1 * 1.002**2)


# --- clipped losses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "advantage,ratio,loss,clipped",
    [
        (1.0, 1.0, -1.0, False),  # ratio 1: the plain policy gradient
        (1.0, 1.1, -1.1, False),  # inside the clip range
        (1.0, 1.5, -1.2, True),  # good action pushed past 1 + eps: the gain is capped at 1.2
        (1.0, 0.5, -0.5, False),  # good action made less likely: not clipped (pessimistic bound)
        (-1.0, 1.5, 1.5, False),  # bad action made more likely: not clipped
        (-1.0, 0.5, 0.8, True),  # bad action pushed below 1 - eps: capped at 0.8
    ],
)
def test_policy_loss_single_token(advantage, ratio, loss, clipped):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(ratio), requires_grad=True)
    value, clipfrac = policy_loss(new, old, torch.full((1, 1), advantage), torch.ones(1, 1), cliprange=0.2)
    assert value.item() == pytest.approx(loss, abs=1e-6)
    assert clipfrac.item() == (1.0 if clipped else 0.0)
    value.backward()
    if clipped:
        assert new.grad.item() == 0.0  # no gradient pushes further past the clip
    else:
        assert new.grad.item() == pytest.approx(-advantage * ratio, abs=1e-6)


def test_policy_loss_mean_over_reply_tokens_only():
    """Four tokens from the table above: losses -1.2, -0.5, 1.5, 0.8 -> mean 0.15, 2 of 4 clipped;
    a padded token with wild numbers does not count."""
    ratios = [1.5, 0.5, 1.5, 0.5, 100.0]
    new = torch.tensor([[math.log(r) for r in ratios]])
    advantages = t([1.0, 1.0, -1.0, -1.0, 50.0])
    loss, clipfrac = policy_loss(new, torch.zeros(1, 5), advantages, t([1, 1, 1, 1, 0]), cliprange=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "new,loss,clipped",
    [
        (0.1, 0.5 * 0.81, False),  # inside: (0.1 - 1)^2
        (0.5, 0.5 * 0.64, True),  # moved 0.5 towards the return: clipped at 0.2, error (0.2 - 1)^2
        (1.5, 0.5 * 0.64, True),  # overshoots: the clipped 0.2 is worse, (0.2 - 1)^2 counts
        (-0.5, 0.5 * 2.25, False),  # moved away: unclipped (-0.5 - 1)^2 is worse than (-0.2 - 1)^2
    ],
)
def test_value_loss_clip(new, loss, clipped):
    """old value 0, return 1, cliprange_value 0.2: loss = 0.5 * max((V - R)^2, (V_clip - R)^2)."""
    value, clipfrac = value_loss(t([new]), t([0.0]), t([1.0]), t([1.0]), cliprange_value=0.2)
    assert value.item() == pytest.approx(loss, abs=1e-6)
    assert clipfrac.item() == (1.0 if clipped else 0.0)


# --- entropy and log-probs -------------------------------------------------------------------


def test_entropy_from_logits():
    uniform = torch.zeros(2, 3, 50)
    assert entropy_from_logits(uniform).flatten().tolist() == pytest.approx([math.log(50)] * 6, abs=1e-5)
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), expected, atol=1e-6)


def test_token_logprobs():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[0, 5, 10], [3, 3, 1]])
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens), expected)
