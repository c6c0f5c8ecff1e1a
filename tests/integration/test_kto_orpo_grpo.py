"""kto, orpo and grpo in full and lora on the tiny model: a few TRL steps each. The loss moves, the
trained parameters change and the frozen ones do not; LoRA's reference is the adapter disabled;
GRPO trains on built-in rewards, on an accuracy reward against question/answer records, and on an
rm run's reward model; every record is accounted for."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import make_recipe, write_jsonl
from safetensors.torch import load_file
from tiny_reward import save_tiny_reward_model

from llmft.config import validate_recipe
from llmft.run import train

WHO, FRANCE, POEM, HELLO = (
    "Who are you?",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Hello! How are you today?",
)
GOOD = {WHO: "I am a helpful assistant.", FRANCE: "Paris.", POEM: "The sea is wide and blue.", HELLO: "I am fine, thank you."}
BAD = {WHO: "The quick brown fox.", FRANCE: "bonjour", POEM: "Numbers: 0 1 2 3", HELLO: "lazy dog"}
GRPO = {
    "name": "grpo",
    "num_generations": 2,
    "max_completion_length": 8,
    "rewards": ["length", "no_repeat"],
    "beta": 0.1,
}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    kto = [{"prompt": p, "completion": r[p], "label": r is GOOD} for p in GOOD for r in (GOOD, BAD)]
    pref = [{"prompt": p, "chosen": GOOD[p], "rejected": BAD[p]} for p in GOOD]
    prompts = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": GOOD[p]}]} for p in GOOD]
    return {
        "kto": write_jsonl(tmp_path / "kto.jsonl", kto),
        "orpo": write_jsonl(tmp_path / "pref.jsonl", pref),
        "grpo": write_jsonl(tmp_path / "prompts.jsonl", prompts),
    }


def _recipe(stage: str, mode: str, model_dir: Path, data: dict[str, Path], out: Path, **sections) -> dict:
    # kto and orpo see the whole (tiny) dataset every step, so their successive losses are comparable
    batch = {"kto": 8, "orpo": 4, "grpo": 4}[stage]
    raw = make_recipe(model_dir, data[stage], out, stage=stage, mode=mode, training={"micro_batch_size": batch})
    raw["stage"] = GRPO if stage == "grpo" else {"name": stage}
    for name, values in sections.items():
        raw[name].update(values)
    return raw


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.log_history if "loss" in h]


@pytest.mark.parametrize("stage", ["kto", "orpo", "grpo"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_stage_trains(stage, mode, tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    result = train(validate_recipe(_recipe(stage, mode, tiny_model_dir, data, out)))

    losses = _losses(result)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    if stage == "grpo":
        # on-policy and equal to its reference at step 1: the advantages cancel and the KL is 0;
        # once the policy moves, the KL term (beta 0.1) makes the loss positive
        assert abs(losses[0]) < 1e-4 and losses[-1] > losses[0] + 1e-4, losses
        logged = [h for h in result.log_history if "rewards/length/mean" in h]
        assert len(logged) == 3 and all(0 <= h["rewards/length/mean"] <= 1 for h in logged)
    else:
        assert losses[-1] < losses[0] - 0.01, f"loss did not move down: {losses}"

    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    if mode == "lora":
        base = result.model.get_base_model()
        for name, value in base.state_dict().items():
            if "lora_" not in name:
                key = name.replace(".base_layer", "")
                assert torch.equal(value, initial[key]), f"frozen weight {key} changed"
        adapter = load_file(str(out / "adapter_model.safetensors"))
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices did not train"
        assert list(result.model.peft_config) == ["default"] and not (out / "ref").exists()
    else:
        saved = load_file(str(out / "model.safetensors"))
        unchanged = [k for k in initial if torch.equal(saved[k], initial[k])]
        assert not unchanged, f"unchanged after full training: {unchanged}"
    assert (out / "trainer_state.json").is_file() and (out / "recipe.resolved.yaml").is_file()


def _completion_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of the completion tokens, computed directly from the logits."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (logps * mask[:, 1:]).sum(-1)


def test_lora_reference_is_the_adapter_disabled(tiny_model_dir, data, tmp_path):
    """TRL, handed a model that already has its adapter, would copy the adapter as a frozen "ref"
    adapter; llmft removes that copy, so TRL computes the reference with the adapter disabled:
    after training, the reference log-probs are the base model's, not the policy's."""
    from transformers import AutoModelForCausalLM

    from llmft.builders import get_builder
    from llmft.run import prepare

    recipe = validate_recipe(_recipe("kto", "lora", tiny_model_dir, data, tmp_path / "run"))
    trainer = get_builder("kto", "lora")(prepare(recipe))
    assert list(trainer.model.peft_config) == ["default"] and trainer.ref_model is None
    trainer.train()

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    reference, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert torch.allclose(reference, _completion_logps(base, batch), atol=1e-4)
    assert not torch.allclose(reference, _completion_logps(trainer.model, batch), atol=1e-2), "the adapter did not train"


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_kto_kl_replies_after_kept_prompts_equal_trls_passes(mode, tiny_model_dir, data, tmp_path):
    """One step trained (the policy and its reference apart), then the same batch's loss, metrics
    and gradients with the KL replies scored after their prompts' kept keys and values and with
    TRL's own passes: equal (fp32), with each prompt run once per model instead of twice."""
    from llmft.builders import get_builder
    from llmft.fastpath.decide import causal_lm
    from llmft.fastpath.unpadded_scoring import flatten
    from llmft.run import prepare

    raw = _recipe("kto", mode, tiny_model_dir, data, tmp_path / "run", training={"max_steps": 1, "learning_rate": 1e-2})
    trainer = get_builder("kto", mode)(prepare(validate_recipe(raw)))
    assert trainer.llmft_kl_after_replies
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    tokens: list[int] = []
    for model in {id(m): m for m in (trainer.model, trainer.ref_model) if m is not None}.values():
        causal_lm(model).model.register_forward_pre_hook(lambda m, a, k: tokens.append(k["input_ids"].numel()), with_kwargs=True)
    results = []
    for after_replies in (False, True):
        trainer.llmft_kl_after_replies = after_replies
        trainer.model.zero_grad()
        trainer._metrics["train"].clear()
        tokens.clear()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), {k: v[-1] for k, v in trainer._metrics["train"].items()}, grads, sum(tokens)))
    (trl_loss, trl_metrics, trl_grads, trl_tokens), (loss, metrics, grads, fast_tokens) = results
    torch.testing.assert_close(loss, trl_loss, atol=1e-6, rtol=1e-5)
    assert metrics.keys() == trl_metrics.keys() and metrics["kl"] > 0
    for name, value in trl_metrics.items():
        if name != "num_tokens":  # a running total
            assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert grads.keys() == trl_grads.keys() and grads
    for name, grad in trl_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    kl_mask, kl_completion = batch["KL_attention_mask"], batch["KL_completion_mask"]
    kl_labels = batch["KL_input_ids"].masked_fill(kl_completion == 0, -100)
    trl_kl_pass = flatten(batch["KL_input_ids"], kl_mask, kl_labels, share_prefixes=True).input_ids.shape[1]
    after_prompts = int(kl_completion.sum()) + 8  # each KL completion and its prompt's last token
    assert after_prompts < trl_kl_pass
    assert trl_tokens - fast_tokens == 2 * (trl_kl_pass - after_prompts)  # policy and reference


def test_kto_compiled_keeps_trls_kl_passes(tiny_model_dir, data, tmp_path):
    """A compiled model would trace the attention without the kept prompts: TRL's KL passes then."""
    from llmft.builders import get_builder
    from llmft.run import prepare

    raw = _recipe("kto", "lora", tiny_model_dir, data, tmp_path / "run", training={"torch_compile": True})
    assert not get_builder("kto", "lora")(prepare(validate_recipe(raw))).llmft_kl_after_replies


def test_kto_full_reference_is_a_frozen_copy(tiny_model_dir, data, tmp_path):
    from llmft.builders import get_builder
    from llmft.run import prepare

    ctx = prepare(validate_recipe(_recipe("kto", "full", tiny_model_dir, data, tmp_path / "run")))
    trainer = get_builder("kto", "full")(ctx)
    ref = trainer.ref_model
    assert ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items()), "the reference moved"


def test_grpo_with_a_reward_model(tiny_model_dir, data, tmp_path):
    rm_dir = save_tiny_reward_model(tmp_path / "rm")
    out = tmp_path / "run"
    stage = {
        "name": "grpo",
        "num_generations": 2,
        "max_completion_length": 8,
        "rewards": [{"type": "reward_model", "path": str(rm_dir)}],
    }
    raw = _recipe("grpo", "lora", tiny_model_dir, data, out)
    raw["stage"] = stage
    result = train(validate_recipe(raw))
    scored = [h for h in result.log_history if "rewards/reward_model/mean" in h]
    assert len(scored) == 3 and all(math.isfinite(h["rewards/reward_model/mean"]) for h in scored)
    assert any(h["rewards/reward_model/std"] > 0 for h in scored), "the reward model gave every completion one score"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


QA = [
    {"question": "What is 6 x 7?", "answer": "42"},
    {"question": "What is 2 + 2?", "answer": 4},  # a number in the record is fine
    {"question": "What is 10 x 10?", "answer": "#### 100"},  # GSM8K's answer line
    {"question": "What is 9 - 8?", "answer": "1"},
]


def test_grpo_with_an_accuracy_reward_on_question_answer_records(tiny_model_dir, tmp_path, caplog, merge_counts):
    """MedicalGPT's `{question, answer}` records, no `columns`: detected as qa conversations, and
    the raw `answer` reaches the accuracy reward, weighted, next to a length reward. Without LoRA
    dropout the rollouts sample through merged LoRA layers (`llmft.fastpath.sampling`)."""
    path = write_jsonl(tmp_path / "qa.jsonl", QA)
    rewards = [{"type": "accuracy", "match": "numeric", "weight": 2.0}, "length"]
    raw = _recipe("grpo", "lora", tiny_model_dir, {"grpo": path}, tmp_path / "run", finetune={"dropout": 0.0})
    raw["stage"] = {**GRPO, "rewards": rewards, "loss_type": "dr_grpo"}
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = train(validate_recipe(raw))
    lines = [r.getMessage() for r in caplog.records]
    assert merge_counts and all(count > 0 for count in merge_counts), merge_counts  # every generation round
    assert any(f"{path} (qa, detected): 4 records" in line for line in lines), lines
    assert "grpo: loss_type dr_grpo, 2 completions per prompt, rewards accuracy x 2, length x 1" in lines
    logged = [h for h in result.log_history if "rewards/accuracy/mean" in h]
    assert len(logged) == 3 and all(0 <= h["rewards/accuracy/mean"] <= 1 for h in logged)
    assert all(math.isfinite(h["loss"]) for h in result.log_history if "loss" in h)


def test_every_record_is_accounted_for(tiny_model_dir, data, tmp_path, caplog):
    """A KTO record whose reply max_length would cut away is left out by llmft with a count; TRL
    then keeps every row it is given (it would otherwise drop such rows silently)."""
    long_prompt = {"prompt": POEM * 8, "completion": "blue", "label": True}
    rows = [*map(json.loads, data["kto"].read_text().splitlines()), long_prompt]
    path = write_jsonl(tmp_path / "kto_long.jsonl", rows)
    raw = _recipe("kto", "lora", tiny_model_dir, {"kto": path}, tmp_path / "run", training={"max_steps": 1})
    with caplog.at_level(logging.INFO, logger="llmft"):
        train(validate_recipe(raw))
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith("data.train: 9 records -> 8 examples") and "dropped 1: 1 reply truncated away by max_length" in line
        for line in lines
    ), lines
    assert "data.train: TRL kept all 8 rows" in lines


def test_what_trl_supervises_with_a_chatml_template(tiny_model_dir, data, tmp_path):
    """Pinned, not endorsed: TRL renders conversational rows itself, and with a template that writes
    a newline after the end-of-turn token (ChatML) its completions keep that newline — and ORPO then
    appends one more end-of-turn token, since the completion does not end with one. llmft's sft/dpo
    supervise the reply through its end-of-turn token only. If TRL changes this, this test says so."""
    from llmft.builders import get_builder
    from llmft.run import prepare

    seen = {}
    for stage in ("kto", "orpo"):
        raw = _recipe(stage, "lora", tiny_model_dir, data, tmp_path / stage)
        trainer = get_builder(stage, "lora")(prepare(validate_recipe(raw)))
        row, tok = trainer.train_dataset[0], trainer.processing_class
        if stage == "kto":
            seen[stage] = tok.decode(row["completion_ids"])
        else:
            seen[stage] = tok.decode([i for i, label in zip(row["chosen_input_ids"], row["chosen_labels"]) if label != -100])
    assert seen["kto"].endswith("<|im_end|>\n") and "<|im_start|>" not in seen["kto"]
    assert seen["orpo"] == GOOD[WHO] + "<|im_end|>\n<|im_end|>"


def test_continued_adapter_reference_is_the_adapter_as_it_started(tiny_model_dir, data, tmp_path, sft_file):
    """Continuing an adapter (e.g. an SFT run's), the reference is that adapter as training
    starts — TRL's frozen copy named "ref" — not the bare base model."""
    from llmft.builders import get_builder
    from llmft.run import prepare

    first = tmp_path / "sft"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, first, training={"max_steps": 1})))
    raw = _recipe("kto", "lora", tiny_model_dir, data, tmp_path / "run", training={"max_steps": 1})
    raw["finetune"] = {"mode": "lora", "adapter_path": str(first)}
    trainer = get_builder("kto", "lora")(prepare(validate_recipe(raw)))
    assert set(trainer.model.peft_config) == {"default", "ref"}
    started = load_file(str(first / "adapter_model.safetensors"))
    refs = {k: v.clone() for k, v in trainer.model.state_dict().items() if ".ref." in k}
    assert len(refs) == len(started)
    for key, value in started.items():
        assert torch.equal(refs[key.replace(".weight", ".ref.weight")], value), key
    trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in refs.items()), "the reference adapter trained"
    assert any(not torch.equal(after[k.replace(".ref.", ".default.")], v) for k, v in refs.items()), "the adapter did not train"
