"""What `llmft train` decides before training: launch or not, and what a started process checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_recipe

from llmft.config import validate_recipe
from llmft.config.distributed import DistributedConfig
from llmft.errors import UserError
from llmft.launch.child import enter_process
from llmft.launch.relaunch import check_devices, needs_launch
from llmft.resolve import resolve


def recipe(tmp_path, **distributed):
    return validate_recipe(make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", distributed=distributed))


def test_launch_for_several_processes_or_deepspeed_unless_already_launched(tmp_path):
    assert not needs_launch(recipe(tmp_path), {})
    assert needs_launch(recipe(tmp_path, num_processes=2), {})
    assert needs_launch(recipe(tmp_path, zero_stage=2), {})  # DeepSpeed needs a process group, even for one
    assert not needs_launch(recipe(tmp_path, num_processes=2), {"LLMFT_LAUNCHED": "1", "WORLD_SIZE": "2"})


def test_a_multi_process_recipe_run_in_one_plain_process_is_refused(tmp_path, monkeypatch):
    for name in ("LLMFT_LAUNCHED", "LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match=r"2 process\(es\) need a launcher; start the run with `llmft train RECIPE`"):
        enter_process(recipe(tmp_path, num_processes=2), None)
    enter_process(recipe(tmp_path), None)  # one process: nothing to check


def test_agreeing_launcher_hands_deepspeed_settings_to_the_recipes_json(tmp_path, monkeypatch):
    env = {
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "RANK": "0",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_CONFIG_DS_FIELDS": "zero_stage,mixed_precision",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from llmft.launch import cpu_shims

    started = []
    monkeypatch.setattr(cpu_shims, "init_deepspeed_comm", lambda: started.append(True))
    two = recipe(tmp_path, num_processes=2, zero_stage=2)
    enter_process(two, resolve(two).deepspeed)
    import os

    import torch

    assert "ACCELERATE_CONFIG_DS_FIELDS" not in os.environ
    assert started == ([] if torch.cuda.is_available() else [True])  # the CPU shim, only on CPU


def test_one_process_per_gpu():
    check_devices(DistributedConfig(num_processes=8), gpus=8)
    check_devices(DistributedConfig(num_processes=4), gpus=0)  # CPU-only: processes share the cores
    with pytest.raises(UserError, match=r"distributed.num_processes: 8 processes on this machine, but it has 4 GPUs"):
        check_devices(DistributedConfig(num_processes=8), gpus=4)
    two = DistributedConfig(num_processes=16, num_machines=2, main_process_ip="10.0.0.1")
    check_devices(two, gpus=8)
    with pytest.raises(
        UserError, match=r"8 processes on this machine \(num_processes / num_machines = 16 / 2\), but it has 1 GPU;"
    ):
        check_devices(two, gpus=1)


def test_each_machine_resumes_the_same_run():
    """Every machine of a multi-machine run has its own machine_rank; the rendezvous may move."""
    from llmft.resume import recipe_differences

    saved = {"distributed": {"machine_rank": 0, "main_process_ip": "10.0.0.1", "main_process_port": 29500, "num_processes": 4}}
    other = {"distributed": {"machine_rank": 1, "main_process_ip": "10.0.0.7", "main_process_port": 29501, "num_processes": 4}}
    assert recipe_differences(saved, other) == []
    other["distributed"]["num_processes"] = 8
    assert recipe_differences(saved, other) == ["distributed.num_processes: 4 -> 8"]


def test_a_moved_run_directory_is_the_same_run():
    """output.dir may change (a run directory moved or copied); every other key is still compared."""
    from llmft.resume import recipe_differences

    saved = {"output": {"dir": "/old/run", "merge_adapter": False}, "training": {"learning_rate": 1e-4}}
    moved = {"output": {"dir": "/new/run", "merge_adapter": False}, "training": {"learning_rate": 1e-4}}
    assert recipe_differences(saved, moved) == []
    moved["output"]["merge_adapter"] = True
    moved["training"]["learning_rate"] = 2e-4
    assert recipe_differences(saved, moved) == ["output.merge_adapter: False -> True", "training.learning_rate: 0.0001 -> 0.0002"]
