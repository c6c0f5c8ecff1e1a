"""PPO on the tiny model: against a reward model that prefers a learnable pattern (BPE merges over
raw bytes), the mean reward rises while the KL to the reference stays finite (full and LoRA); LoRA
keeps the base weights and one model in memory; a run through `llmft train`'s pipeline with an
rm-style reward model directory writes the documented outputs. With rule rewards (`stage.rewards`)
instead of a reward model, the reward rises too, and question/answer records reach the accuracy rule
in training and in the final evaluation."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_recipe, write_jsonl
from safetensors.torch import load_file
from tiny import TINY_SIZES, build_tokenizer

import llmft.builders.ppo as ppo_builder
from llmft.alignment.rollout import forward_replies
from llmft.builders import get_builder
from llmft.checkpoint import manifest_problems
from llmft.config import validate_recipe
from llmft.run import prepare, train
from llmft.rundir import BASE_FINGERPRINT, CHECKPOINT_MANIFEST


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matmuls are microseconds; on a busy 2-core machine OpenMP's thread handoffs
    make them ~50x slower. One thread keeps these tests at a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MergedTokenRM(torch.nn.Module):
    """A reward model by hand that prefers a learnable pattern: the score is the number of reply
    tokens that are BPE merges (whole words and word pieces) rather than raw bytes. The reply is
    what follows the last `<|im_start|>assistant\\n`. The untrained tiny model samples ~4 of its 8
    reply tokens from the merges."""

    def __init__(self, tokenizer):
        super().__init__()
        self.start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.header = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
        self.first_merge = 3 + 256  # the vocabulary: 3 special tokens, 256 bytes, then the merges

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        last_start = torch.where(input_ids == self.start, positions, -1).max(dim=1, keepdim=True).values
        reply = (positions >= last_start + self.header) & attention_mask.bool()
        return SimpleNamespace(logits=(reply & (input_ids >= self.first_merge)).sum(1, keepdim=True).float())


ITERATIONS = 8
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ppo_recipe(model_dir: Path, data: Path, out: Path, mode: str, reward_model: Path | None, training=None, **stage) -> dict:
    raw = make_recipe(
        model_dir,
        data,
        out,
        stage="ppo",
        mode=mode,
        training={"micro_batch_size": 4, "scheduler": "constant", **(training or {})},
    )
    raw["stage"].update(
        {
            **({"reward_model": str(reward_model)} if reward_model else {}),
            "max_new_tokens": 8,
            "rollout_batch_size": 16,
            "mini_batch_size": 8,
            "ppo_epochs": 2,
            **stage,
        }
    )
    raw["data"]["max_length"] = 256  # every conversation's prompt fits
    return raw


def live(cls: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ppo_raises_reward(mode, tiny_model_dir, sft_file, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(
        ppo_builder, "load_reward_model", lambda path, dtype: (MergedTokenRM(build_tokenizer()), build_tokenizer())
    )
    (tmp_path / "rm").mkdir()
    stage = {"kl_control": "adaptive", "target_kl": 1.0, "kl_horizon": 200} if mode == "full" else {}
    raw = ppo_recipe(
        tiny_model_dir,
        sft_file,
        tmp_path / "out",
        mode,
        tmp_path / "rm",
        training={"max_steps": ITERATIONS, "learning_rate": 1e-2 if mode == "full" else 3e-2},
        ppo_epochs=4,
        **stage,
    )
    if mode == "lora":  # the preference is over the vocabulary: let the adapter reach the output head too
        raw["finetune"]["target_modules"] = [*LINEAR, "lm_head"]
    recipe = validate_recipe(raw)
    models_before = live(LlamaForCausalLM)
    trainer = get_builder("ppo", mode)(prepare(recipe))
    # LoRA: the reference is the policy with its adapter disabled, no second model; full: a frozen copy
    assert live(LlamaForCausalLM) - models_before == (1 if mode == "lora" else 2)
    assert (trainer.ref_model is None) is (mode == "lora")

    # before any update the policy is its reference, and training-mode log-probs equal the rollout's
    # (dropout off, padding-independent positions), so PPO's ratio starts at exactly 1
    rollout, texts = trainer.make_rollout(trainer.train_prompts[:4])
    assert len(texts) == 4 and rollout.kl.abs().max() < 1e-5
    trainer.model.train()
    _, logprobs, values = forward_replies(
        trainer.model,
        rollout.query,
        rollout.query_mask,
        rollout.reply,
        rollout.reply_mask,
        trainer.stage.temperature,
        trainer.value_head,
    )
    mask = rollout.reply_mask.bool()
    assert torch.allclose(logprobs[mask], rollout.logprobs[mask], atol=1e-5)
    assert torch.allclose(values[mask], rollout.values[mask], atol=1e-5)

    trainer.train()
    history = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["step"] for h in history] == list(range(1, ITERATIONS + 1))
    rewards = [h["reward"] for h in history]
    kls = [h["kl"] for h in history]
    early, late = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert late > early + 1.0, f"mean reward did not rise: {rewards}"
    assert all(math.isfinite(k) and k < 100 for k in kls), kls
    assert kls[0] == pytest.approx(0.0, abs=1e-4)
    for key in ("entropy", "clipfrac", "value_loss", "policy_loss", "kl_coef"):
        assert all(math.isfinite(h[key]) for h in history), key
    coefs = [h["kl_coef"] for h in history]
    if mode == "full":  # adaptive control: KL above target_kl pushes the coefficient up
        assert coefs[-1] > coefs[0] == 0.05
    else:
        assert set(coefs) == {0.05}

    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    if mode == "lora":
        base = trainer.model.get_base_model().state_dict()
        for name, value in base.items():
            if "lora_" not in name:
                key = name.replace(".base_layer", "")
                assert torch.equal(value, initial[key]), f"frozen base weight {key} changed"
        assert any(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)
    else:
        reference = trainer.ref_model.state_dict()
        assert all(torch.equal(reference[k], initial[k]) for k in initial), "the reference moved"
        policy = trainer.model.state_dict()
        assert sum(not torch.equal(policy[k], initial[k]) for k in initial) > len(initial) // 2


def save_reward_model_dir(directory: Path) -> Path:
    """An rm-style full output directory: a one-score sequence classifier on the tiny config."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **{**TINY_SIZES, "num_hidden_layers": 1},
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_ppo_run_writes_outputs(tiny_model_dir, sft_file, tmp_path):
    reward_dir = save_reward_model_dir(tmp_path / "rm")
    out = tmp_path / "run"
    raw = ppo_recipe(
        tiny_model_dir,
        sft_file,
        out,
        "lora",
        reward_dir,
        training={
            "max_steps": 2,
            "logging_steps": 2,
            "save_strategy": "steps",
            "save_steps": 1,
            "save_total_limit": 1,
            "report_to": ["tensorboard"],
            "eval_on_start": True,
        },
        rollout_batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
    )
    raw["data"]["eval_split"] = 1
    result = train(validate_recipe(raw))

    logged = [h for h in result.log_history if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2]  # the first iteration, then every logging_steps
    for key in ("reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss", "kl_coef"):
        assert math.isfinite(logged[-1][key]), key
    assert logged[-1]["rollout_tokens_per_s"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h for h in state["log_history"] if "reward" in h] == logged
    # data.eval_split with the default eval_strategy (epoch): 3 train prompts, 4 per rollout, so
    # every iteration ends an epoch and evaluates; eval_on_start adds one before the first
    # iteration (step 0); the one at the last step is the final evaluation (the weights are not evaluated twice)
    assert [h["step"] for h in result.log_history if "eval_reward" in h] == [0, 1, 2]
    evals = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(evals["eval_reward"]) and evals["eval_reply_length"] > 0
    assert math.isfinite(json.loads((out / "train_results.json").read_text())["train_reward"])
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "value_head.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "recipe.resolved.yaml",
    ):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # finished as the Trainer's checkpoints are: the base fingerprint copied in, the manifest last, matching every
    # file; without optimizer state (ppo cannot resume yet: a recipe rule says so)
    assert (out / "checkpoint-2" / BASE_FINGERPRINT).read_text() == (out / BASE_FINGERPRINT).read_text()
    assert (out / "checkpoint-2" / CHECKPOINT_MANIFEST).is_file()
    assert [rel for rel, _ in manifest_problems(out / "checkpoint-2")] == ["optimizer.pt"]
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert not list(out.glob("*.bin"))


def test_ppo_shows_progress_draws_curves_and_keeps_tensorboard_in_logs(tiny_model_dir, sft_file, tmp_path, caplog):
    """llmft's own loop reports like the Trainer's: log lines with the time taken and left, curves.png
    with its reward, and TensorBoard events only in logs/, also for the final evaluation that comes
    after training ends (eval_steps beyond max_steps)."""
    import logging
    import re

    reward_dir = save_reward_model_dir(tmp_path / "rm")
    out = tmp_path / "run"
    raw = ppo_recipe(
        tiny_model_dir,
        sft_file,
        out,
        "lora",
        reward_dir,
        training={"max_steps": 2, "logging_steps": 1, "report_to": ["tensorboard"], "eval_strategy": "steps", "eval_steps": 5},
        rollout_batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
    )
    raw["data"]["eval_split"] = 1
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = train(validate_recipe(raw))
    assert [h["step"] for h in result.log_history if "eval_reward" in h] == [2]  # evaluated after training
    assert list((out / "logs").glob("events.out.tfevents.*")) and not (out / "runs").exists()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [m for m in caplog.messages if m.startswith("step ")]
    assert re.fullmatch(r"step 1/2 \(\d+:\d\d elapsed, ~\d+:\d\d left\) loss=\S+ .* reward=\S+ .*", steps[0]), steps
    assert re.fullmatch(r"step 2/2 \(\d+:\d\d elapsed\) loss=\S+ .* reward=\S+ .*", steps[1]), steps
    assert re.fullmatch(r"step 2/2 \(\d+:\d\d elapsed\) eval_reply_length=\S+ eval_reward=\S+", steps[2]), steps


def test_ppo_logs_to_mlflow_with_the_final_evaluation(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """llmft's own loop feeds `training.report_to: [mlflow]` too: every logged loss and reward, and the
    evaluation that comes after training ends, in the one MLflow run of <output.dir>/mlruns."""
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    raw = ppo_recipe(
        tiny_model_dir,
        sft_file,
        out,
        "lora",
        save_reward_model_dir(tmp_path / "rm"),
        training={"max_steps": 2, "logging_steps": 1, "report_to": ["mlflow"], "eval_strategy": "steps", "eval_steps": 5},
        rollout_batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
    )
    raw["data"]["eval_split"] = 1
    result = train(validate_recipe(raw))
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    logged = {
        key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in ("loss", "reward", "eval_reward")
    }
    for key, values in logged.items():
        assert values == pytest.approx([h[key] for h in result.log_history if key in h]) and values, key
    assert run.data.params["recipe.stage.name"] == "ppo"


def test_ppo_with_rule_rewards_raises_reward(tiny_model_dir, sft_file, tmp_path):
    """`stage.rewards` instead of a reward model: replies close to 40 characters are rewarded, which
    (8 tokens) the tiny model reaches by sampling BPE merges rather than raw bytes, as above."""
    raw = ppo_recipe(
        tiny_model_dir,
        sft_file,
        tmp_path / "out",
        "full",
        None,
        training={"max_steps": ITERATIONS, "learning_rate": 1e-2},
        ppo_epochs=4,
        rewards=[{"type": "length", "target_chars": 40, "weight": 8.0}],
        kl_control="adaptive",
        target_kl=1.0,
        kl_horizon=200,
    )
    result = train(validate_recipe(raw))
    history = [h for h in result.log_history if "reward" in h]
    rewards = [h["reward"] for h in history]
    assert [8 * h["rewards/length/mean"] for h in history] == pytest.approx(rewards)  # the one entry, weighted
    early, late = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert late > early + 0.8, f"mean reward did not rise: {rewards}"


QA = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (6, 2)]]


def test_ppo_rule_rewards_read_question_answer_records(tiny_model_dir, tmp_path, caplog):
    """MedicalGPT's `{question, answer}` records: each prompt's `answer` reaches the accuracy rule in
    training (logged per entry, weighted in the reward) and in output.eval's verify measure, which
    scores the answers with the same rules."""
    import logging

    data = write_jsonl(tmp_path / "qa.jsonl", QA)
    out = tmp_path / "run"
    rewards = [{"type": "accuracy", "match": "numeric", "weight": 2.0}, "ends_cleanly"]
    raw = ppo_recipe(
        tiny_model_dir,
        data,
        out,
        "lora",
        None,
        training={"max_steps": 2},
        rewards=rewards,
        rollout_batch_size=4,
        mini_batch_size=2,
    )
    raw["data"]["eval_split"] = 1
    raw["training"]["eval_strategy"] = "no"
    raw["output"]["eval"] = {"max_new_tokens": 4}
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = train(validate_recipe(raw))
    assert "ppo: rewards accuracy x 2, ends_cleanly x 1" in caplog.messages
    assert any(m.startswith("sampling: LoRA layers merged") for m in caplog.messages)
    history = [h for h in result.log_history if "reward" in h]
    for h in history:
        assert 0 <= h["rewards/accuracy/mean"] <= 1 and 0 <= h["rewards/ends_cleanly/mean"] <= 1
        assert h["reward"] == pytest.approx(2 * h["rewards/accuracy/mean"] + h["rewards/ends_cleanly/mean"])
    # before (the base) and after, each answer scored by the same rules
    results = json.loads((out / "eval" / "eval.json").read_text())["results"]
    assert len(results) == 2 and all({"accuracy", "ends_cleanly"} <= set(r["metrics"]["verify"]) for r in results), results


@pytest.mark.parametrize("fused_ops", [True, False])
def test_ppo_rollouts_sample_merged_unless_fused_ops_is_off(fused_ops, tiny_model_dir, tmp_path, merge_counts, caplog):
    """`training.fused_ops` (default true) puts ppo's rollouts through merged LoRA layers
    (`llmft.fastpath.sampling`); false leaves the policy's `generate` as peft has it."""
    import logging

    data = write_jsonl(tmp_path / "qa.jsonl", QA)
    raw = ppo_recipe(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "lora",
        None,
        training={"max_steps": 1, "fused_ops": fused_ops},
        rewards=["length"],
        rollout_batch_size=4,
        mini_batch_size=2,
    )
    with caplog.at_level(logging.INFO, logger="llmft"):
        train(validate_recipe(raw))
    logged = any(m.startswith("sampling: LoRA layers merged") for m in caplog.messages)
    if fused_ops:
        assert logged and merge_counts and all(count > 0 for count in merge_counts), merge_counts
    else:
        assert not logged and merge_counts == []


def test_ppo_rule_rewards_refuse_records_without_their_column(tiny_model_dir, tmp_path):
    from llmft.errors import UserError

    data = write_jsonl(tmp_path / "qa.jsonl", [*QA[:2], {**QA[2], "solution": "4"}])
    raw = ppo_recipe(tiny_model_dir, data, tmp_path / "run", "lora", None, rewards=[{"type": "accuracy", "column": "solution"}])
    with pytest.raises(UserError, match=r"qa.jsonl:1: no column 'solution' \(stage.rewards.0.column reads it\)"):
        train(validate_recipe(raw))
