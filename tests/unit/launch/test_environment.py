"""Launched or not, and a launcher that contradicts the recipe: one error with every mismatch."""

from __future__ import annotations

import json

import pytest

from llmft.config.distributed import DistributedConfig
from llmft.errors import UserError
from llmft.launch.environment import check_launcher, launched, mismatches, read_launcher

TORCHRUN_2 = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


def test_not_launched():
    assert not launched({}) and read_launcher({"PATH": "/bin"}) is None


@pytest.mark.parametrize(
    "env", [{"LLMFT_LAUNCHED": "1"}, {"LOCAL_RANK": "0"}, {"WORLD_SIZE": "1"}, {"ACCELERATE_MIXED_PRECISION": "no"}]
)
def test_any_launcher_variable_means_launched(env):
    assert launched(env)


def test_torchrun_processes():
    launcher = read_launcher(TORCHRUN_2)
    assert (launcher.world_size, launcher.num_machines, launcher.rank, launcher.deepspeed) == (2, 1, 1, False)
    assert not launcher.is_main


def test_deepspeed_stage_from_accelerate_or_from_its_json(tmp_path):
    env = {**TORCHRUN_2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    assert read_launcher(env).zero_stage == 2
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    env = {**TORCHRUN_2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(own)}
    assert read_launcher(env).zero_stage == 3


def test_agreement_passes():
    env = {
        **TORCHRUN_2,
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
    }
    d = DistributedConfig(num_processes=2, zero_stage=3, offload="optimizer")
    assert mismatches(d, 3, {"optimizer"}, read_launcher(env)) == []
    check_launcher(d, 3, {"optimizer"}, read_launcher(env))


def test_every_mismatch_in_one_error():
    env = {
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "RANK": "0",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
    }
    d = DistributedConfig(num_processes=4, zero_stage=3)
    with pytest.raises(UserError) as info:
        check_launcher(d, 3, set(), read_launcher(env))
    message = str(info.value)
    assert message.count("\n  - ") == 4
    assert "distributed.num_processes is 4 but the launcher started 8 processes (WORLD_SIZE)" in message
    assert "distributed.num_machines is 1 but the launcher spans 2 (WORLD_SIZE 8 / LOCAL_WORLD_SIZE 4)" in message
    assert "distributed.zero_stage is 3 but the launcher runs ZeRO-2" in message
    assert "distributed.offload is 'none' but the launcher offloads optimizers to 'cpu'" in message


def test_deepspeed_on_one_side_only():
    no_ds = read_launcher({**TORCHRUN_2, "ACCELERATE_MIXED_PRECISION": "no"})  # accelerate launch, MULTI_GPU
    assert mismatches(DistributedConfig(num_processes=2, zero_stage=2), 2, set(), no_ds) == [
        "distributed.zero_stage is 2 (DeepSpeed) but the launcher is not set up for DeepSpeed (ACCELERATE_USE_DEEPSPEED unset)"
    ]
    # plain torchrun says nothing about DeepSpeed: the recipe's JSON turns it on
    assert mismatches(DistributedConfig(num_processes=2, zero_stage=2), 2, set(), read_launcher(TORCHRUN_2)) == []
    ds = read_launcher({**TORCHRUN_2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"})
    assert mismatches(DistributedConfig(num_processes=2), 0, set(), ds) == [
        "distributed.zero_stage is 0 (no DeepSpeed) but the launcher runs DeepSpeed ZeRO-1 (ACCELERATE_USE_DEEPSPEED=true)"
    ]


def test_a_users_json_is_compared_by_its_content(tmp_path):
    ds = read_launcher({**TORCHRUN_2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})
    d = DistributedConfig(num_processes=2, deepspeed_config="mine.json")
    assert mismatches(d, 3, set(), ds) == [
        "distributed.deepspeed_config's zero_optimization.stage is 3 but the launcher runs ZeRO-2"
    ]


def test_accelerates_single_process_cpu_launcher_is_caught():
    """`accelerate launch --cpu --num_processes 2` starts ONE process (no WORLD_SIZE)."""
    one = read_launcher({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"})
    assert mismatches(DistributedConfig(num_processes=2), 0, set(), one) == [
        "distributed.num_processes is 2 but the launcher started 1 process (WORLD_SIZE)"
    ]
