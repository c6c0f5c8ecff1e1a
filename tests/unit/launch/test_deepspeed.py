"""The bundled DeepSpeed JSONs, which one a recipe gets, and a user's own JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_recipe, settings_for

from llmft.builders.trainer import training_kwargs
from llmft.config import validate_recipe
from llmft.config.distributed import DistributedConfig
from llmft.errors import UserError
from llmft.launch.deepspeed import BUNDLED, bundled_path, config_source, deepspeed_config, offloads, zero_stage

FILES = ["zero1.json", "zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json"]
REPO_DIR = Path(__file__).parents[3] / "deepspeed_configs"
#: Keys the HF integration fills from TrainingArguments (transformers' HfTrainerDeepSpeedConfig).
AUTO = ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"]


def test_the_five_files_ship_in_the_package_and_in_the_repository():
    assert sorted(p.name for p in REPO_DIR.glob("*.json")) == FILES
    assert sorted(set(BUNDLED.values())) == FILES  # each is used
    for name in FILES:
        assert bundled_path(name).is_file()
        assert json.loads(bundled_path(name).read_text()) == json.loads((REPO_DIR / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_bundled_files_leave_to_the_recipe_what_the_recipe_decides(name):
    config = json.loads(bundled_path(name).read_text())
    assert all(config[key] == "auto" for key in AUTO)
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config  # training.optimizer/scheduler apply
    zero = config["zero_optimization"]
    assert zero["stage"] == int(name[4])
    assert zero["reduce_bucket_size"] == "auto"
    if zero["stage"] == 3:
        assert zero["stage3_prefetch_bucket_size"] == zero["stage3_param_persistence_threshold"] == "auto"
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # a complete model is saved
    offloaded = offloads(config)
    assert offloaded == ({"optimizer", "param"} if "zero3_offload" in name else {"optimizer"} if "offload" in name else set())
    # an offloaded optimizer step runs training.optimizer on the CPU (no JIT-built DeepSpeed CPU Adam)
    assert config.get("zero_force_ds_cpu_optimizer", True) is (not offloaded)


@pytest.mark.parametrize("stage, offload", sorted(BUNDLED))
def test_every_stage_and_offload_gets_what_it_asks_for(stage, offload):
    config = deepspeed_config(DistributedConfig(zero_stage=stage, offload=offload))
    assert config["zero_optimization"]["stage"] == stage
    assert (
        offloads(config) == {"none": set(), "optimizer": {"optimizer"}, "optimizer_and_params": {"optimizer", "param"}}[offload]
    )
    assert config.get("zero_force_ds_cpu_optimizer", True) is (offload == "none")
    exact = {
        (2, "optimizer"): "zero2_offload.json",
        (3, "optimizer_and_params"): "zero3_offload.json",
        (1, "optimizer"): "zero1.json + offload optimizer",
        (3, "optimizer"): "zero3.json + offload optimizer",
    }
    assert config_source(DistributedConfig(zero_stage=stage, offload=offload)) == exact.get((stage, offload), f"zero{stage}.json")


def test_no_deepspeed_without_a_stage():
    assert deepspeed_config(DistributedConfig(num_processes=4)) is None
    assert zero_stage(DistributedConfig()) == 0


def test_a_users_json_is_read_as_it_is(tmp_path):
    own = tmp_path / "ds.json"
    own.write_text(
        json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}, "train_batch_size": "auto"})
    )
    d = DistributedConfig(deepspeed_config=str(own))
    assert deepspeed_config(d)["zero_optimization"]["offload_optimizer"] == {"device": "nvme"}
    assert zero_stage(d) == 2 and config_source(d) == str(own)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "file not found"),
        ("{not json", "is not valid JSON"),
        ('{"train_batch_size": "auto"}', "has no zero_optimization.stage"),
        ('{"zero_optimization": {"stage": 5}}', "has no zero_optimization.stage (0-3)"),
    ],
)
def test_a_broken_users_json_names_the_key(tmp_path, content, problem):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=r"^distributed\.deepspeed_config: ") as info:
        deepspeed_config(DistributedConfig(deepspeed_config=str(path)))
    assert problem in str(info.value)


def test_the_config_reaches_training_arguments(tmp_path):
    recipe = validate_recipe(
        make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", distributed={"zero_stage": 3, "num_processes": 2})
    )
    kwargs = training_kwargs(recipe, settings_for(recipe), tmp_path / "out")
    assert kwargs["deepspeed"]["zero_optimization"]["stage"] == 3
    plain = validate_recipe(make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out"))
    assert training_kwargs(plain, settings_for(plain), tmp_path / "out")["deepspeed"] is None


def test_a_users_zero3_json_must_gather_weights_for_the_final_save(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(UserError, match="stage3_gather_16bit_weights_on_model_save: true"):
        deepspeed_config(DistributedConfig(deepspeed_config=str(path)))


def test_a_users_optimizer_and_scheduler_blocks_are_reported():
    from llmft.launch.deepspeed import replaced_training_keys

    assert replaced_training_keys({"optimizer": {}, "scheduler": {}}) == ["training.optimizer", "training.scheduler"]
    assert replaced_training_keys(json.loads(bundled_path("zero3.json").read_text())) == []


def test_the_cpu_shim_is_active_only_for_deepspeed_on_cpu_in_a_launched_process():
    from llmft.launch.cpu_shims import needed

    assert needed(cuda_available=False, uses_deepspeed=True, launched=True)
    assert not needed(cuda_available=True, uses_deepspeed=True, launched=True)
    assert not needed(cuda_available=False, uses_deepspeed=False, launched=True)
    assert not needed(cuda_available=False, uses_deepspeed=True, launched=False)
