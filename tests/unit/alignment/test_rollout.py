"""Rollout plumbing: prompts from conversations, padding, reply masks, minibatch selection."""

from __future__ import annotations

import pytest
import torch

from llmft.alignment.rollout import Rollout, pad, pad_width, reply_mask
from llmft.data.formats import Conversation
from llmft.data.prompts import build_prompts, prompt_messages

U1 = {"role": "user", "content": "Hi"}
A1 = {"role": "assistant", "content": "Hello"}
U2 = {"role": "user", "content": "Name a colour"}
A2 = {"role": "assistant", "content": "Blue"}
SYS = {"role": "system", "content": "Be brief."}


def test_prompt_is_everything_before_the_last_reply():
    assert prompt_messages([SYS, U1, A1, U2, A2]) == [SYS, U1, A1, U2]
    assert prompt_messages([U1, A1]) == [U1]
    assert prompt_messages([SYS, U1]) == [SYS, U1]  # no reply: the whole conversation asks
    assert prompt_messages([U1, A1, U2]) == [U1, A1, U2]  # an open question after an exchange: asked as it is
    tool = {"role": "tool", "content": '{"temperature": 21}'}
    assert prompt_messages([U1, tool, A1]) == [U1, tool]  # the reply follows a tool result


def test_prompt_must_end_with_a_user_turn():
    assert prompt_messages([A1]) is None
    assert prompt_messages([SYS, A1]) is None
    assert prompt_messages([U1, A1, A2]) is None  # two replies in a row: the prompt ends with a reply


def test_build_prompts_renders_generation_prompt_and_counts_drops(tokenizer):
    conversations = [
        Conversation((U1, A1), "a.jsonl:1"),
        Conversation((A1,), "a.jsonl:2"),
        Conversation((SYS, U1, A1, U2, A2), "a.jsonl:3"),
    ]
    prompts, report = build_prompts(tokenizer, conversations, max_prompt_tokens=10_000)
    assert [p.where for p in prompts] == ["a.jsonl:1", "a.jsonl:3"]
    text = tokenizer.decode(list(prompts[0].ids))
    assert text.endswith("<|im_start|>assistant\n") and "Hello" not in text
    assert report.kept == 2 and report.dropped == {"no user turn before the last reply": 1}
    assert "a.jsonl:2" in report.summary("data.train")

    short = len(prompts[0].ids)
    prompts, report = build_prompts(tokenizer, conversations, short, "data.max_length - stage.max_new_tokens")
    assert [p.where for p in prompts] == ["a.jsonl:1"]
    assert report.dropped["prompt longer than data.max_length - stage.max_new_tokens"] == 1


def test_pad_left_and_right():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_width(torch.tensor([[1, 2]]), 4, "left", 7).tolist() == [[7, 7, 1, 2]]


def test_reply_mask_stops_after_the_first_stop_token():
    replies = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 8], [5, 6, 7, 8, 9], [3, 0, 0, 0, 0]])
    assert reply_mask(replies, stop_ids=[2, 3]).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],  # never stopped: all max_new_tokens count
        [1, 0, 0, 0, 0],
    ]


def test_rollout_select_trims_unused_padding():
    def z(width: int) -> torch.Tensor:
        return torch.arange(3 * width, dtype=torch.float32).view(3, width)

    rollout = Rollout(
        query=torch.tensor([[0, 0, 1], [0, 2, 2], [3, 3, 3]]),
        query_mask=torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]]),
        reply=torch.tensor([[4, 0, 0, 0], [5, 5, 0, 0], [6, 6, 6, 6]]),
        reply_mask=torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
        logprobs=z(4),
        ref_logprobs=z(4),
        values=z(4),
        scores=torch.tensor([1.0, 2.0, 3.0]),
        rewards=z(4),
        kl=z(4),
        advantages=z(4),
        returns=z(4),
    )
    part = rollout.select(torch.tensor([1, 0]))
    assert part.query.tolist() == [[2, 2], [0, 1]]
    assert part.reply.tolist() == [[5, 5], [4, 0]]
    assert part.logprobs.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert part.scores.tolist() == [2.0, 1.0]


def test_generation_ignores_the_models_generation_config(tokenizer):
    """A repetition penalty (or top_k, no_repeat_ngram_size ...) in the model's generation_config
    would make the sampled tokens differ from the softmax PPO computes log-probs with."""
    from tiny import build_model

    from llmft.alignment.rollout import Prompt, Sampling, generate

    model = build_model(len(tokenizer)).eval()
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    ids = list(tokenizer.apply_chat_template([U1], add_generation_prompt=True, return_dict=True)["input_ids"])
    out = generate(model, [Prompt((U1,), tuple(ids), "x")], Sampling(6, greedy=True), stop_ids=[2], pad_id=0, device="cpu")

    expected, sequence = [], list(ids)
    with torch.no_grad():
        for _ in range(6):
            token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
            expected.append(token)
            sequence.append(token)
            if token == 2:
                break
    got = out["reply"][0, : int(out["reply_mask"][0].sum())].tolist()
    assert got == expected


@pytest.mark.parametrize("frozen_head", [False, True], ids=["logits", "frozen-head kernel"])
def test_forward_replies_matches_unpadded_forward(tokenizer, frozen_head, monkeypatch):
    """Left-padded prompts and right-padded replies give each reply token the log-prob and entropy an
    unpadded forward pass of that one sequence gives it (temperature-scaled), and the same gradient;
    with the output head frozen (LoRA) through `llmft.fastpath.logprob_head`, never the full logits."""
    from tiny import build_model

    from llmft.alignment.rollout import forward_replies
    from llmft.fastpath import logprob_head

    calls = []
    kernel = logprob_head.linear_logprobs
    monkeypatch.setattr(logprob_head, "linear_logprobs", lambda *a: calls.append(1) or kernel(*a))
    model = build_model(len(tokenizer)).eval()
    model.lm_head.weight.requires_grad_(not frozen_head)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    replies = [[20, 21, 2], [30, 31, 32, 33]]
    query, query_mask = pad(prompts, 0, "left")
    reply, mask = pad(replies, 0, "right")
    entropy, logprobs, _ = forward_replies(model, query, query_mask, reply, mask, temperature=0.7)
    (logprobs * mask).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    total = 0
    for row, (prompt, answer) in enumerate(zip(prompts, replies)):
        logits = model(torch.tensor([prompt + answer])).logits[0] / 0.7
        steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].log_softmax(-1)
        expected = steps.gather(1, torch.tensor(answer)[:, None]).squeeze(1)
        total = total + expected.sum()
        torch.testing.assert_close(logprobs[row, : len(answer)], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[row, : len(answer)], -(steps.exp() * steps).sum(-1).detach(), atol=1e-5, rtol=1e-5)
    total.backward()
    for name, grad in got.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    assert bool(calls) == frozen_head
