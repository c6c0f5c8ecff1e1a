"""The accelerate config and `accelerate launch` command built from `distributed:`, checked
against accelerate's own config loader and launch-argument validation (nothing is started)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from llmft.config.distributed import DistributedConfig
from llmft.launch.argv import accelerate_config, launch_argv


def accelerate_view(config: dict, tmp_path: Path):
    """What `accelerate launch --config_file` makes of the config: (args, defaults)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "llmft", "train", "r.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_two_cpu_processes_go_through_torchrun_not_the_one_process_cpu_launcher(tmp_path):
    config = accelerate_config(DistributedConfig(num_processes=2), None, use_cpu=True)
    assert config["distributed_type"] == "MULTI_GPU" and config["use_cpu"] is True
    args, _ = accelerate_view(config, tmp_path)
    # launch_command picks multi_gpu_launcher (torchrun) for multi_gpu and not --cpu; `--cpu`
    # would take the simple launcher, which starts a single process whatever --num_processes says
    assert args.multi_gpu and not args.cpu and args.num_processes == 2


def test_deepspeed_goes_as_one_json_file(tmp_path):
    ds = tmp_path / "deepspeed.json"
    config = accelerate_config(DistributedConfig(num_processes=2, zero_stage=3), ds, use_cpu=True)
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"] == {"deepspeed_config_file": str(ds), "deepspeed_multinode_launcher": "standard"}
    args, defaults = accelerate_view(config, tmp_path)
    assert args.use_deepspeed and not args.cpu and args.num_processes == 2
    assert args.deepspeed_config_file == str(ds)
    # nothing besides the file: accelerate refuses a JSON next to its own DeepSpeed keys
    assert set(defaults.deepspeed_config) == {"deepspeed_config_file", "deepspeed_multinode_launcher"}


def test_multi_node(tmp_path):
    d = DistributedConfig(num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29555)
    config = accelerate_config(d, None, use_cpu=False)
    assert (config["num_processes"], config["num_machines"], config["machine_rank"]) == (16, 2, 1)
    assert (config["main_process_ip"], config["main_process_port"], config["use_cpu"]) == ("10.0.0.1", 29555, False)
    args, _ = accelerate_view(config, tmp_path)
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip) == (16, 2, 1, "10.0.0.1")


def test_argv_runs_llmft_with_the_same_recipe_and_overrides():
    argv = launch_argv(Path("/tmp/x/accelerate.yaml"), "r.yaml", ["training.learning_rate=1e-4", "data.max_length=64"])
    assert argv == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "/tmp/x/accelerate.yaml",
        "-m",
        "llmft",
        "train",
        "r.yaml",
        "training.learning_rate=1e-4",
        "data.max_length=64",
    ]
    assert launch_argv(Path("c.yaml"), "r.yaml", [], verbose=True)[-3:] == ["--verbose", "train", "r.yaml"]


@pytest.mark.parametrize("use_cpu", [True, False])
def test_config_is_plain_yaml(use_cpu):
    config = accelerate_config(DistributedConfig(num_processes=2, zero_stage=1), Path("d.json"), use_cpu=use_cpu)
    assert yaml.safe_load(yaml.safe_dump(config)) == config
