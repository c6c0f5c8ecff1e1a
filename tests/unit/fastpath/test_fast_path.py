"""Which path a next-token run takes, and why: on by default where it is correct, off with a
reason where it is not, and an explicit `true` that cannot be honoured is an error naming the key."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe
from tiny import build_model

from llmft.config import validate_recipe
from llmft.errors import UserError
from llmft.fastpath.decide import choose as choose_for
from llmft.plan.passes import settle_passes
from llmft.resolve import resolve


def recipe(**sections):
    return validate_recipe(minimal_recipe(**sections))


def choose(recipe, model, settings=None):
    """The path a run takes: decided for the model, its "auto" passes sized by the memory plan."""
    settings = settings or resolve(recipe)
    return settle_passes(choose_for(recipe, model, settings), recipe, model.config, settings)


def test_defaults_take_the_whole_fast_path():
    path = choose(recipe(), build_model(64))
    assert (path.batching, path.attention, path.chunked_loss, path.fused_ops) == ("padding-free", "llmft_sdpa_varlen", True, True)
    assert path.reasons == []
    assert path.forward_tokens is None  # `auto`: whole micro-batches fit this machine's memory
    assert path.describe() == "batches padding-free, attention llmft_sdpa_varlen, chunked cross-entropy, fused RMSNorm/SwiGLU"


def test_each_switch_turns_its_part_off_and_says_so():
    path = choose(recipe(data={"padding_free": False}, training={"chunked_loss": False, "fused_ops": False}), build_model(64))
    assert (path.batching, path.attention, path.chunked_loss, path.fused_ops) == ("padded", "sdpa", False, False)
    assert path.reasons == ["data.padding_free is false", "training.chunked_loss is false", "training.fused_ops is false"]


def test_packing_keeps_per_example_attention():
    path = choose(recipe(data={"packing": True}), build_model(64))
    assert (path.batching, path.attention) == ("packed", "llmft_sdpa_varlen")


def test_eager_and_flash_attention_are_kept():
    assert choose(recipe(model={"attn_implementation": "eager"}), build_model(64)).attention == "eager"


def test_unknown_head_falls_back_with_a_reason():
    model = build_model(64)
    model.config.model_type = "gemma2"  # soft-caps its logits after the head
    path = choose(recipe(), model)
    assert not path.chunked_loss
    assert path.reasons == [
        "chunked loss off: model type 'gemma2' is not one whose output head is known to be a plain projection"
    ]


def test_explicit_chunked_loss_that_cannot_run_is_an_error():
    model = build_model(64)
    model.config.model_type = "gemma2"
    with pytest.raises(UserError, match=r"^training.chunked_loss: model type 'gemma2' .* set training.chunked_loss: false"):
        choose(recipe(training={"chunked_loss": True}), model)


def test_padding_free_needs_the_attention_registry():
    model = build_model(64)
    model._supports_attention_backend = False
    path = choose(recipe(), model)
    assert path.batching == "padded" and path.attention == "sdpa"
    assert path.reasons[0].startswith("padding-free off: LlamaForCausalLM does not take its attention")
    with pytest.raises(UserError, match=r"^data.padding_free: .* set data.padding_free: false"):
        choose(recipe(data={"padding_free": True}), model)


def test_pass_size_is_the_recipe_value_or_off():
    assert choose(recipe(training={"max_tokens_per_forward": 96}), build_model(64)).forward_tokens == 96
    assert choose(recipe(training={"max_tokens_per_forward": None}), build_model(64)).forward_tokens is None


def test_auto_cuts_passes_only_where_the_memory_plan_needs_them(monkeypatch):
    """`auto` asks the memory plan: a machine too small for whole micro-batches (4 x 512 tokens) gets passes,
    with the reason in the path line; one with room runs them whole (a GPU plans against its own memory)."""
    import torch

    import llmft.plan.machine as machine
    import llmft.plan.passes as passes

    sections = {"training": {"micro_batch_size": 4}, "data": {"max_length": 512}}
    assert choose(recipe(**sections), build_model(64)).forward_tokens is None  # this machine has room
    monkeypatch.setattr(passes, "available_memory", lambda: (1 << 20, "this machine's available RAM (no GPU)"))
    path = choose(recipe(**sections), build_model(64))
    assert path.forward_tokens == 256  # nothing fits 1 MiB: the smallest pass size
    assert path.reasons == [
        "passes: whole micro-batches of 2,048 tokens would need 0.6 GiB, this machine's available RAM (no GPU) has 0.0 GiB"
    ]
    assert path.describe().endswith(
        "passes of <= 256 tokens (passes: whole micro-batches of 2,048 tokens would need 0.6 GiB, "
        "this machine's available RAM (no GPU) has 0.0 GiB)"
    )
    settings, zero2 = resolve(recipe(**sections)), recipe(**sections, distributed={"zero_stage": 2})
    zero2_settings = resolve(zero2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(passes, "available_memory", machine.available_memory)  # on a GPU: the GPU's memory
    monkeypatch.setattr(machine, "machine_memory", lambda: (80 << 30, "GPU 0 (test)"))
    assert choose(recipe(**sections), build_model(64), settings).forward_tokens is None
    assert choose(zero2, build_model(64), zero2_settings).forward_tokens is None


def test_passes_need_the_chunked_loss_and_one_process():
    path = choose(recipe(training={"chunked_loss": False}), build_model(64))
    assert path.forward_tokens is None and path.reasons == ["training.chunked_loss is false"]
    model = build_model(64)  # the model itself turns the chunked loss off (recipe-level conflicts: test_option_rules.py)
    model.config.model_type = "gemma2"
    with pytest.raises(UserError, match=r"^training.max_tokens_per_forward: the passes are part of the chunked loss"):
        choose(recipe(training={"max_tokens_per_forward": 256}), model)
    assert choose(recipe(), model).forward_tokens is None
    path = choose(recipe(distributed={"zero_stage": 2}), build_model(64))
    assert path.forward_tokens is None
    assert path.reasons == ["micro-batches run whole: several processes or DeepSpeed count each backward as a micro-batch"]


def test_available_memory_is_what_a_run_can_use_now():
    """CPU: RAM the kernel reports available plus this process's own resident memory, never more than the machine has."""
    from llmft.plan.machine import available_memory, machine_memory

    free, source = available_memory()
    assert 0 < free <= machine_memory()[0]
    assert source == "this machine's available RAM (no GPU)"


def test_a_lora_adapter_on_the_output_head_turns_the_chunked_loss_off():
    """The chunked loss projects with the head's weight directly: an adapter on the head would never
    train (measured before this check: lora_B of lm_head stayed exactly 0 after 3 steps at lr 1e-2)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_model(64), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    path = choose(recipe(), model)
    assert not path.chunked_loss
    assert "chunked loss off: the output head carries a LoRA adapter (finetune.target_modules)" in path.describe()
    with pytest.raises(UserError, match=r"^training.chunked_loss: the output head carries a LoRA adapter"):
        choose(recipe(training={"chunked_loss": True}), model)
    trained_in_full = get_peft_model(build_model(64), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert choose(recipe(), trained_in_full).chunked_loss  # modules_to_save: the head's own weight trains


def test_zero3_is_read_from_the_users_deepspeed_json(tmp_path):
    """`distributed.deepspeed_config` decides the ZeRO stage (the bare zero_stage field stays 0)."""
    import json

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    r = recipe(distributed={"deepspeed_config": str(ds)})
    assert r.distributed.zero_stage == 0 and resolve(r).zero3
    path = choose(r, build_model(64))
    assert not path.chunked_loss and "chunked loss off: ZeRO-3 shards the output head's weight" in path.describe()


@pytest.mark.parametrize("stage", ["dpo", "rm", "orpo"])
def test_auto_runs_pair_stages_a_pair_per_pass_on_a_cpu(stage, monkeypatch):
    """On a CPU, `auto` runs a micro-batch of several pairs a full-length pair (2 x data.max_length) per
    pass, the memory plan permitting; one pair per micro-batch, a GPU, or a stage of single sequences
    run whole."""
    import dataclasses

    import llmft.plan.passes as passes

    def path(name=stage, micro=2, settings=None):
        r = recipe(stage={"name": name}, training={"micro_batch_size": micro}, data={"max_length": 256})
        return choose(r, build_model(64), settings or resolve(r))

    pairs = path()
    assert pairs.forward_tokens == 512
    assert pairs.describe().endswith(
        "passes of <= 512 tokens of whole pairs (passes: a pair at a time, up to 2 x data.max_length tokens "
        "(on a CPU no slower, and less memory))"
    )
    assert path(micro=1).forward_tokens is None  # a pass is already one pair
    assert path(name="kto").forward_tokens is None  # no passes: replies and their KL replies go together
    monkeypatch.setattr(passes, "available_memory", lambda: (1 << 20, "this machine's available RAM (no GPU)"))
    assert path().forward_tokens == 256  # a pair does not fit either: the plan's size
    monkeypatch.setattr(passes, "available_memory", lambda: (80 << 30, "GPU 0 (test)"))
    gpu = dataclasses.replace(resolve(recipe(stage={"name": stage})), device="cuda")
    assert path(settings=gpu).forward_tokens is None  # a pair may not fill a GPU: whole micro-batches
