"""rm: a one-score head learns the toy preference (chosen replies say Paris), its output loads back
with `load_reward_model` and scores held-out pairs the right way round; the load guard lets only
the new head be missing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_recipe
from safetensors.torch import load_file, save_file
from toy_pairs import write_toy

from llmft.config import validate_recipe
from llmft.config.model import ModelConfig
from llmft.data.dataset import load_items
from llmft.errors import UserError
from llmft.modeling.load import load_model
from llmft.modeling.reward import load_reward_model, reward_input_ids
from llmft.run import train


def rm_recipe(model_dir, tmp_path, mode: str, **training):
    train_file, eval_file = write_toy(tmp_path)
    return validate_recipe(
        make_recipe(
            model_dir,
            train_file,
            tmp_path / "run",
            stage="rm",
            mode=mode,
            data={"eval": str(eval_file)},
            # eval_steps beyond max_steps: evaluated once, at the end
            training={
                "max_steps": 8,
                "micro_batch_size": 8,
                "learning_rate": 2e-2 if mode == "lora" else 3e-3,
                "logging_steps": 4,
                "eval_strategy": "steps",
                "eval_steps": 100,
                **training,
            },
        )
    )


def score(model, tokenizer, ids: list[list[int]]) -> torch.Tensor:
    """One reward per sequence, right-padded, as PPO/GRPO will call the model."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


def held_out_rewards(model, tokenizer, recipe) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = load_items("rm", recipe.data, recipe.training.seed).eval
    chosen = score(model, tokenizer, [reward_input_ids(tokenizer, p.prompt, p.chosen) for p in pairs])
    rejected = score(model, tokenizer, [reward_input_ids(tokenizer, p.prompt, p.rejected) for p in pairs])
    return chosen, rejected


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_rm_learns_the_preference_and_loads_back(mode, tiny_model_dir, tmp_path):
    recipe = rm_recipe(tiny_model_dir, tmp_path, mode)
    result = train(recipe)
    out = result.output_dir

    # TRL's pairwise metrics reach the log and the eval results
    assert result.metrics["eval_accuracy"] >= 0.9, result.metrics
    assert result.metrics["eval_margin"] > 0
    train_logs = [h for h in result.log_history if "loss" in h]
    assert all("accuracy" in h and "margin" in h for h in train_logs)
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == result.metrics["eval_accuracy"]

    # the saved reward model, on its own, scores the held-out pairs chosen > rejected
    model, tokenizer = load_reward_model(str(out))
    assert type(model).__name__ == "LlamaForSequenceClassification" and not model.training
    chosen, rejected = held_out_rewards(model, tokenizer, recipe)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy >= 0.9, (chosen, rejected)
    print(
        f"rm {mode}: held-out accuracy {accuracy:.3f}, mean margin {(chosen - rejected).mean().item():.3f}, "
        f"eval_accuracy {result.metrics['eval_accuracy']:.3f}, eval_margin {result.metrics['eval_margin']:.3f}"
    )

    # ... exactly as the trained model in memory does
    trained = result.model.eval()
    again_chosen, again_rejected = held_out_rewards(trained, tokenizer, recipe)
    torch.testing.assert_close(again_chosen, chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(again_rejected, rejected, atol=1e-4, rtol=0)

    if mode == "lora":
        adapter = load_file(str(out / "adapter_model.safetensors"))
        score_keys = [k for k in adapter if ".score." in k]
        assert score_keys, f"score head missing from the adapter: {sorted(adapter)}"
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
        assert not (out / "model.safetensors").exists()
    else:
        saved = load_file(str(out / "model.safetensors"))
        assert "score.weight" in saved and "lm_head.weight" not in saved
        assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


def test_reward_head_is_the_only_weight_allowed_missing(tiny_model_dir, tmp_path):
    model = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32, task="reward")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.score.out_features == 1

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_model(ModelConfig(path=str(broken)), torch.float32, task="reward")
    message = str(err.value)
    assert "model.norm.weight" in message and "1 missing" in message and "score" not in message


def test_load_reward_model_refuses_what_is_not_one(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="is not a reward model"):
        load_reward_model(str(tiny_model_dir))  # a causal LM: its score head would be random
    with pytest.raises(UserError, match="directory not found"):
        load_reward_model(str(tmp_path / "nope"))


def test_rm_adapter_merges_with_its_score_head(tiny_model_dir, tmp_path, caplog):
    """output.merge_adapter on an rm run writes a standalone reward model scoring as the adapter did.
    The run's start says its score head starts fresh; loading the trained reward model (to score,
    as ppo does, or to merge) does not."""
    import logging

    from transformers import AutoModelForSequenceClassification

    from llmft.modeling.merge import probe_ids

    recipe = validate_recipe(
        make_recipe(
            tiny_model_dir,
            write_toy(tmp_path)[0],
            tmp_path / "run",
            stage="rm",
            training={"max_steps": 2},
            output={"merge_adapter": True},
        )
    )
    with caplog.at_level(logging.INFO, logger="llmft"):
        train(recipe)
    fresh = [m for m in caplog.messages if m.startswith("new head, initialised fresh")]
    assert fresh == ["new head, initialised fresh (the only weights allowed to be missing): score.weight"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmft"):
        adapter_model, tokenizer = load_reward_model(str(tmp_path / "run"))
    assert not [m for m in caplog.messages if "new head" in m], caplog.messages
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "merged").eval()
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter_model(ids).logits, atol=1e-4)
    assert merged.score.weight.abs().sum() > 0


def test_a_reward_adapter_on_another_base_is_refused(tiny_model_dir, other_seed_model_dir, tmp_path):
    import yaml

    recipe = rm_recipe(tiny_model_dir, tmp_path, "lora", max_steps=1)
    train(recipe)
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    resolved["model"]["path"] = str(other_seed_model_dir)
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved))
    with pytest.raises(UserError) as err:
        load_reward_model(str(run))
    message = str(err.value)
    assert f"the adapter {run} was not trained on the base {other_seed_model_dir}" in message
    assert "model.path" in message
