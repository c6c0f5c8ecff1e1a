"""The frozen-head log-prob kernel (`llmft.fastpath.logprob_head`) against TRL's fused-head kernel
and a plain log-softmax: values, statistics and the gradient to the hidden states, over several
chunks; a trainable head is refused."""

from __future__ import annotations

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from llmft.fastpath import logprob_head
from llmft.fastpath.logprob_head import linear_logprobs


@pytest.fixture
def inputs(monkeypatch):
    monkeypatch.setattr(logprob_head, "CHUNK_ELEMENTS", 16 * 300)  # chunks of 16 positions: several
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(70, 24, generator=gen, requires_grad=True)
    weight = torch.randn(300, 24, generator=gen) * 0.5
    targets = torch.randint(0, 300, (70,), generator=gen)
    targets[3] = (hidden[3].detach() @ weight.t()).argmax()  # one position whose target is the top token
    return hidden, weight, targets


def test_values_and_statistics_match_trl_and_log_softmax(inputs):
    hidden, weight, targets = inputs
    logp, entropy, mean_logits, top1 = linear_logprobs(hidden, weight, targets)
    logits = hidden.detach() @ weight.t()
    want = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(logp, want)
    probs = logits.softmax(-1)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1))
    torch.testing.assert_close(mean_logits, logits.mean(-1))
    assert torch.equal(top1, logits.argmax(-1) == targets) and bool(top1[3])
    trl = ChunkedLogProbFunction.apply(
        hidden.detach(), weight, None, targets, 1.0, 128, None, 1.0, ("log_probs", "entropy", "mean_logits", "is_top1")
    )
    torch.testing.assert_close(logp, trl[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, trl[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_logits, trl[3], atol=1e-5, rtol=1e-5)
    assert torch.equal(top1, trl[4])


def test_gradient_matches_autograd_of_log_softmax(inputs):
    hidden, weight, targets = inputs
    upstream = torch.randn(70, generator=torch.Generator().manual_seed(1))
    (linear_logprobs(hidden, weight, targets)[0] * upstream).sum().backward()
    got, hidden.grad = hidden.grad.clone(), None
    want_logp = (hidden @ weight.t()).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (want_logp * upstream).sum().backward()
    torch.testing.assert_close(got, hidden.grad, atol=1e-5, rtol=1e-5)


def test_no_gradient_kept_without_one(inputs):
    hidden, weight, targets = inputs
    with torch.no_grad():
        logp = linear_logprobs(hidden, weight, targets)[0]
    assert not logp.requires_grad


def test_trainable_head_refused(inputs):
    hidden, weight, targets = inputs
    with pytest.raises(ValueError, match="frozen output head"):
        linear_logprobs(hidden, weight.requires_grad_(), targets)


def test_temperature_divides_the_logits(inputs):
    hidden, weight, targets = inputs
    logp, entropy, _, _ = linear_logprobs(hidden, weight, targets, temperature=0.7)
    logits = (hidden @ weight.t()) / 0.7
    want = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(logp, want.detach())
    probs = logits.detach().softmax(-1)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1))
    logp.sum().backward()
    got, hidden.grad = hidden.grad.clone(), None
    want.sum().backward()
    torch.testing.assert_close(got, hidden.grad, atol=1e-5, rtol=1e-5)
