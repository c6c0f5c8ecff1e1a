"""dpo: TRL's DPOTrainer on llmft's pairs raises the chosen-minus-rejected log-prob margin (measured
independently of TRL), trains on exactly llmft's reply masks, computes the sigmoid loss as worked
by hand, and keeps one base model in memory for LoRA."""

from __future__ import annotations

import math
import weakref
from types import SimpleNamespace

import pytest
import torch
from conftest import make_recipe
from toy_pairs import write_toy

from llmft.builders import get_builder
from llmft.config import validate_recipe
from llmft.config.model import ModelConfig
from llmft.data.dataset import load_items
from llmft.data.pairs import encode_reply
from llmft.data.tokenize import IGNORE
from llmft.modeling.load import load_model, prepare_tokenizer
from llmft.run import prepare, train

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def dpo_recipe(
    model_dir,
    tmp_path,
    mode: str,
    evaluate: bool = True,
    stage: dict | None = None,
    data: dict | None = None,
    finetune: dict | None = None,
    **training,
):
    train_file, eval_file = write_toy(tmp_path)
    raw = make_recipe(
        model_dir,
        train_file,
        tmp_path / "run",
        stage="dpo",
        mode=mode,
        data={**({"eval": str(eval_file)} if evaluate else {}), **(data or {})},
        training={
            "max_steps": 8,
            "micro_batch_size": 8,
            "learning_rate": 1e-2 if mode == "lora" else 3e-3,
            "logging_steps": 4,
            **({"eval_strategy": "steps", "eval_steps": 100} if evaluate else {}),
            **training,
        },
    )
    raw["stage"].update(stage or {})
    raw["finetune"] = finetune or raw["finetune"]
    return validate_recipe(raw)


def reply_logp(model, tokenizer, prompt, reply) -> float:
    """Sum of log p(token) over the reply and its end-of-turn token (llmft's labels), with a plain
    forward pass: no TRL code involved."""
    example = encode_reply(tokenizer, prompt, reply)
    ids = torch.tensor([example.input_ids])
    targets = torch.tensor(example.labels[1:])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    keep = targets != IGNORE
    return logp[keep].gather(1, targets[keep, None]).sum().item()


def mean_margin(model, tokenizer, pairs) -> float:
    model.eval()
    margins = [
        reply_logp(model, tokenizer, p.prompt, p.chosen) - reply_logp(model, tokenizer, p.prompt, p.rejected) for p in pairs
    ]
    return sum(margins) / len(margins)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_dpo_raises_the_log_prob_margin(mode, tiny_model_dir, tmp_path):
    recipe = dpo_recipe(tiny_model_dir, tmp_path, mode, report_to=["tensorboard"])
    tokenizer = prepare_tokenizer(recipe)  # the template and pad token the run uses
    held_out = load_items("dpo", recipe.data, recipe.training.seed).eval
    base = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32, vocab_size=len(tokenizer))
    before = mean_margin(base, tokenizer, held_out)

    result = train(recipe)
    after = mean_margin(result.model, tokenizer, held_out)
    print(
        f"dpo {mode}: held-out log-prob margin {before:.2f} -> {after:.2f}, "
        f"eval_rewards/accuracies {result.metrics['eval_rewards/accuracies']:.3f}, "
        f"eval_rewards/margins {result.metrics['eval_rewards/margins']:.3f}"
    )
    assert after > before + 5.0, (before, after)

    # TRL's metrics reach log_history (and the eval results)
    train_logs = [h for h in result.log_history if "loss" in h]
    assert train_logs and all(all(k in h for k in DPO_METRICS) for h in train_logs)
    assert train_logs[-1]["rewards/margins"] > train_logs[0]["rewards/margins"]
    assert result.metrics["eval_rewards/accuracies"] >= 0.9
    out = result.output_dir
    if mode == "lora":
        assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    else:
        assert (out / "model.safetensors").is_file()
    # the final evaluation comes after training ends: its events go to logs/ too, not to a new runs/
    assert list((out / "logs").glob("events.out.tfevents.*")) and not (out / "runs").exists()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _built(recipe):
    ctx = prepare(recipe)
    return ctx, get_builder("dpo", recipe.finetune.mode)(ctx)


def _new_models(before: weakref.WeakSet) -> list:
    """Causal LMs alive now that were not in `before` (the tiny model is a Llama)."""
    import gc

    from transformers import LlamaForCausalLM

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, LlamaForCausalLM) and o not in before]


def _models_now() -> weakref.WeakSet:
    return weakref.WeakSet(_new_models(weakref.WeakSet()))


@pytest.mark.parametrize(
    "mode,reference,models",
    [("lora", "model", 1), ("lora", "precomputed", 1), ("full", "model", 2), ("full", "precomputed", 1)],
)
def test_reference_models_in_memory(mode, reference, models, tiny_model_dir, tmp_path):
    """LoRA: the reference is the base with the adapter disabled, no second model; full: a frozen
    copy, or none when the reference log-probs are precomputed."""
    recipe = dpo_recipe(
        tiny_model_dir, tmp_path, mode, evaluate=False, stage={"reference": reference}, data={"max_train_samples": 8}
    )
    existing = _models_now()
    ctx, trainer = _built(recipe)
    created = _new_models(existing)
    assert len(created) == models, [type(m).__name__ for m in created]
    if mode == "lora":
        assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default"}
    elif reference == "model":
        assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    if reference == "precomputed":
        assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    assert trainer.beta == recipe.stage.beta and trainer.loss_types == ["sigmoid"]


def test_continued_adapter_is_its_own_reference(tiny_model_dir, sft_file, tmp_path):
    """Continuing an adapter (say, the sft run's), the reference is that adapter as training
    starts: TRL's frozen copy of it ("ref"), kept, with its dropout off; still one base model."""
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "sft", training={"max_steps": 1})
    raw["finetune"]["dropout"] = 0.1
    train(validate_recipe(raw))
    recipe = dpo_recipe(
        tiny_model_dir,
        tmp_path,
        "lora",
        evaluate=False,
        data={"max_train_samples": 8},
        finetune={"mode": "lora", "adapter_path": str(tmp_path / "sft")},
    )
    existing = _models_now()
    ctx, trainer = _built(recipe)
    assert len(_new_models(existing)) == 1 and trainer.ref_model is None
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    dropout = {
        name.rsplit(".", 1)[-1]: module.p for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)
    }
    assert dropout == {"default": 0.1, "ref": 0.0}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()
    ref_chosen, _ = trainer.compute_ref_log_probs(model, batch)
    pairs = load_items("dpo", recipe.data, recipe.training.seed).train[:4]
    policy_chosen = [reply_logp(model, ctx.tokenizer, p.prompt, p.chosen) for p in pairs]
    torch.testing.assert_close(ref_chosen, torch.tensor(policy_chosen), atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def lora_trainer(tiny_model_dir, tmp_path_factory):
    recipe = dpo_recipe(tiny_model_dir, tmp_path_factory.mktemp("dpo"), "lora", evaluate=False)
    ctx, trainer = _built(recipe)
    return recipe, ctx, trainer


def test_trl_trains_on_llmft_masks(lora_trainer):
    """The tokens TRL's loss sums over are llmft's supervised tokens: each reply and its
    end-of-turn token (`encode_reply`), nothing of the prompt, nor the newline after <|im_end|>."""
    recipe, ctx, trainer = lora_trainer
    tokenizer = ctx.tokenizer
    pairs = load_items("dpo", recipe.data, recipe.training.seed).train[:4]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    rows = [(p, p.chosen) for p in pairs] + [(p, p.rejected) for p in pairs]
    for row, (pair, reply) in enumerate(rows):
        example = encode_reply(tokenizer, pair.prompt, reply)
        n = len(example.input_ids)
        assert batch["input_ids"][row, :n].tolist() == example.input_ids
        expected = [int(label != IGNORE) for label in example.labels]
        assert batch["completion_mask"][row].tolist() == expected + [0] * (batch["input_ids"].shape[1] - n)
        supervised = [t for t, m in zip(example.input_ids, expected) if m]
        assert tokenizer.decode(supervised) == reply[0]["content"] + "<|im_end|>"

    # ... and the log-probs TRL sums (its reference pass: the fresh adapter disabled) are the
    # independent per-reply sums on the same weights
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    model = trainer.model
    with model.disable_adapter():
        expected_chosen = [reply_logp(model, tokenizer, p.prompt, p.chosen) for p in pairs]
        expected_rejected = [reply_logp(model, tokenizer, p.prompt, p.rejected) for p in pairs]
    torch.testing.assert_close(chosen, torch.tensor(expected_chosen), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rejected, torch.tensor(expected_rejected), atol=1e-4, rtol=1e-5)


def test_trl_own_tokenization_would_also_train_the_newline(lora_trainer):
    """Why llmft feeds TRL pre-tokenized pairs: TRL's conversational path takes as completion all
    that follows the generation prompt, so with ChatML it also scores the '\\n' after <|im_end|>.
    If this starts failing, TRL now matches llmft's masks and its own tokenization could be used."""
    from datasets import Dataset
    from trl import DPOTrainer

    recipe, ctx, trainer = lora_trainer
    pair = load_items("dpo", recipe.data, recipe.training.seed).train[0]
    raw = Dataset.from_list([{"prompt": list(pair.prompt), "chosen": list(pair.chosen), "rejected": list(pair.rejected)}])
    tokenized = DPOTrainer._prepare_dataset(trainer, raw, ctx.tokenizer, trainer.args, "probe")[0]
    assert ctx.tokenizer.decode(tokenized["chosen_ids"]) == pair.chosen[0]["content"] + "<|im_end|>\n"


def test_sigmoid_loss_worked_by_hand(lora_trainer, monkeypatch):
    """Two pairs, beta = 0.1, log-probs given as numbers (policy summed over two reply tokens):

    pair 1: policy chosen -0.25 - 0.75 = -1.0, rejected -1.5 - 1.5 = -3.0; reference -2.0, -2.5
            chosen log-ratio  -1.0 - (-2.0) =  1.0,  rejected log-ratio -3.0 - (-2.5) = -0.5
            beta * (1.0 - (-0.5)) = 0.15  ->  loss = -log sigmoid(0.15) = log(1 + e^-0.15)
            = log(1.8607080) = 0.6209570
    pair 2: policy chosen -2.0, rejected -0.5 - 0.5 = -1.0; reference -1.5, -1.5
            chosen log-ratio -0.5, rejected log-ratio 0.5
            beta * (-0.5 - 0.5) = -0.1  ->  loss = log(1 + e^0.1) = log(2.1051709) = 0.7443967
    mean loss = (0.6209570 + 0.7443967) / 2 = 0.6826769
    rewards (beta * log-ratio): chosen 0.1, -0.05 (mean 0.025); rejected -0.05, 0.05 (mean 0)
    margins 0.15, -0.1 (mean 0.025); accuracies 1, 0 (mean 0.5)
    """
    recipe, ctx, trainer = lora_trainer
    assert recipe.stage.beta == 0.1 and recipe.stage.loss_type == "sigmoid"
    per_token = torch.tensor(
        [
            [-0.25, -0.75, 0.0],  # pair 1 chosen
            [-2.0, 0.0, 0.0],  # pair 2 chosen
            [-1.5, -1.5, 0.0],  # pair 1 rejected
            [-0.5, -0.5, 0.0],  # pair 2 rejected
        ]
    )

    def policy(**kwargs):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    inputs = {
        "input_ids": torch.ones((4, 4), dtype=torch.long),
        "attention_mask": torch.ones((4, 4), dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]]),
        "ref_chosen_logps": torch.tensor([-2.0, -1.5]),
        "ref_rejected_logps": torch.tensor([-2.5, -1.5]),
    }
    monkeypatch.setattr(trainer, "precompute_ref_logps", True)  # the reference log-probs come with the batch
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    loss = trainer._compute_loss(policy, inputs, return_outputs=False)

    expected = (math.log1p(math.exp(-0.15)) + math.log1p(math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6) and expected == pytest.approx(0.6826769, abs=1e-7)
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    assert metrics["rewards/chosen"] == pytest.approx(0.025, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(0.025, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(0.5)
    trainer._metrics[mode].clear()
