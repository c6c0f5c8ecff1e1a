"""The loss llmft logs is the loss of exactly the tokens it claims to train on.

Reference: the same tiny model, the conversations rendered by `apply_chat_template` with
`{% generation %}` markers around each assistant reply and its end-of-turn token (transformers'
own assistant mask, independent of llmft's span search), and a plain token-mean cross-entropy.
"""

from __future__ import annotations

import torch
from conftest import CONVERSATIONS, make_recipe

from llmft.config import validate_recipe
from llmft.run import train

GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
)


def reference_loss(model_dir, tokenizer) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for messages in CONVERSATIONS:
        out = tokenizer.apply_chat_template(
            messages, chat_template=GENERATION_TEMPLATE, return_assistant_tokens_mask=True, return_dict=True
        )
        assert out["input_ids"] == tokenizer.apply_chat_template(messages)["input_ids"]  # same text as training
        ids = torch.tensor([out["input_ids"]])
        mask = torch.tensor(out["assistant_masks"], dtype=torch.bool)
        with torch.no_grad():
            logits = model(ids).logits[0]
        logp = torch.log_softmax(logits[:-1].double(), dim=-1)
        targets = ids[0, 1:]
        token_nll = -logp.gather(1, targets[:, None])[:, 0]
        supervised = mask[1:]
        total += token_nll[supervised].sum().item()
        count += int(supervised.sum())
    return total / count


def test_logged_first_loss_equals_reference(tiny_model_dir, sft_file, tokenizer, tmp_path):
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        tmp_path / "run",
        mode="full",
        data={"max_length": 512},
        training={"max_steps": 1, "micro_batch_size": len(CONVERSATIONS), "learning_rate": 0.0},
    )
    result = train(validate_recipe(raw))
    logged = [h["loss"] for h in result.log_history if "loss" in h][0]
    assert abs(logged - reference_loss(tiny_model_dir, tokenizer)) < 1e-4


def test_reference_is_not_the_all_token_loss(tiny_model_dir, sft_file, tokenizer, tmp_path):
    """Guard the guard: training on every token gives a different first loss."""
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        tmp_path / "run",
        mode="full",
        data={"max_length": 512, "mask_prompt": False},
        training={"max_steps": 1, "micro_batch_size": len(CONVERSATIONS), "learning_rate": 0.0},
    )
    logged = [h["loss"] for h in train(validate_recipe(raw)).log_history if "loss" in h][0]
    assert abs(logged - reference_loss(tiny_model_dir, tokenizer)) > 1e-3
