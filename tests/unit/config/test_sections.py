"""Validation of each recipe section: one test per rule, asserted through the user-facing
`dotted.path: problem` messages of `validate_recipe` (and the section models directly)."""

from __future__ import annotations

import typing

import pytest
from conftest import minimal_recipe as recipe
from pydantic import TypeAdapter, ValidationError

from llmft.config import Recipe, validate_recipe
from llmft.config.data import DataConfig, DatasetSpec
from llmft.config.distributed import DistributedConfig
from llmft.config.finetune import Finetune, FullFinetune, LoraFinetune, QLoraFinetune
from llmft.config.model import ModelConfig
from llmft.config.output import OutputConfig
from llmft.config.training import Optimizer, Scheduler, TrainingConfig
from llmft.errors import RecipeError


def without(section: str, key: str) -> dict:
    raw = recipe()
    del raw[section][key]
    return raw


def problems(raw: dict) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return info.value.problems


def only_problem(raw: dict) -> str:
    found = problems(raw)
    assert len(found) == 1, found
    return found[0]


def test_minimal_recipe_is_valid():
    r = validate_recipe(recipe())
    assert isinstance(r, Recipe)
    assert r.model.path == "some/model"
    assert r.stage.name == "sft"
    assert r.finetune.mode == "lora"


# --- required keys -------------------------------------------------------------------------


@pytest.mark.parametrize("section,key", [("model", "path"), ("data", "train"), ("output", "dir")])
def test_required_key_missing(section, key):
    assert only_problem(without(section, key)) == f"{section}.{key}: required key is missing"


def test_finetune_mode_required_lists_modes():
    raw = recipe(finetune={"rank": 4})
    del raw["finetune"]["mode"]
    assert only_problem(raw) == "finetune.mode: required key is missing; one of 'full', 'freeze', 'lora', 'qlora'"


def test_stage_name_required_lists_stages():
    assert only_problem(without("stage", "name")) == (
        "stage.name: required key is missing; one of 'pt', 'sft', 'rm', 'dpo', 'kto', 'orpo', 'grpo', 'ppo'"
    )


@pytest.mark.parametrize("section", ["model", "data", "finetune", "stage", "output"])
def test_required_section_missing(section):
    assert only_problem(recipe(**{section: None})) == f"{section}: required key is missing"


@pytest.mark.parametrize("section", ["training", "distributed"])
def test_optional_section_may_be_omitted(section):
    r = validate_recipe(recipe(**{section: None}))
    assert getattr(r, section) == {"training": TrainingConfig(), "distributed": DistributedConfig()}[section]


def test_every_missing_section_reported():
    assert problems({}) == [f"{s}: required key is missing" for s in ("model", "data", "finetune", "stage", "output")]


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section,typo,meant",
    [
        ("model", "pth", "path"),
        ("model", "attn_implementaion", "attn_implementation"),
        ("data", "max_len", "max_length"),
        ("data", "evl", "eval"),
        ("finetune", "alpah", "alpha"),
        ("training", "epoch", "epochs"),
        ("distributed", "num_process", "num_processes"),
        ("output", "dri", "dir"),
    ],
)
def test_unknown_key_in_section(section, typo, meant):
    assert only_problem(recipe(**{section: {typo: 1}})) == f"{section}.{typo}: unknown key; did you mean {meant!r}?"


def test_unknown_key_without_close_match_lists_known_keys():
    assert only_problem(recipe(output={"zzz": 1})) == "output.zzz: unknown key; known keys: dir, merge_adapter, eval"


def test_unknown_key_in_stage_variant():
    assert only_problem(recipe(stage={"foo": 1})) == "stage.foo: unknown key; known keys: name"


# --- numeric limits ------------------------------------------------------------------------

BAD_NUMBERS = [
    ("finetune", "rank", 0, "greater than 0"),
    ("finetune", "rank", -4, "greater than 0"),
    ("finetune", "alpha", 0, "greater than 0"),
    ("finetune", "dropout", -0.1, "greater than or equal to 0"),
    ("finetune", "dropout", 1.0, "less than 1"),
    ("data", "max_length", 1, "greater than 1"),
    ("data", "max_length", 0, "greater than 1"),
    ("training", "learning_rate", -1e-5, "greater than or equal to 0"),
    ("training", "micro_batch_size", 0, "greater than 0"),
    ("training", "gradient_accumulation_steps", 0, "greater than 0"),
    ("training", "epochs", 0, "greater than 0"),
    ("training", "max_steps", 0, "greater than 0"),
    ("training", "weight_decay", -0.01, "greater than or equal to 0"),
    ("training", "warmup_ratio", 1.0, "less than 1"),
    ("training", "warmup_ratio", -0.1, "greater than or equal to 0"),
    ("training", "warmup_steps", -1, "greater than or equal to 0"),
    ("training", "max_grad_norm", -1.0, "greater than or equal to 0"),
    ("training", "logging_steps", 0, "greater than 0"),
    ("training", "save_steps", 0, "greater than 0"),
    ("training", "save_total_limit", 0, "greater than 0"),
    ("training", "eval_steps", 0, "greater than 0"),
    ("distributed", "num_processes", 0, "greater than or equal to 1"),
]


@pytest.mark.parametrize("section,key,value,limit", BAD_NUMBERS)
def test_numeric_limit(section, key, value, limit):
    problem = only_problem(recipe(**{section: {key: value}}))
    assert problem == f"{section}.{key}: Input should be {limit} (got {value!r})"


GOOD_BOUNDARIES = [
    ("finetune", "rank", 1),
    ("finetune", "dropout", 0.0),
    ("finetune", "dropout", 0.99),
    ("data", "max_length", 2),
    ("training", "learning_rate", 0.0),
    ("training", "micro_batch_size", 1),
    ("training", "max_grad_norm", 0.0),
    ("training", "warmup_ratio", 0.0),
    ("training", "warmup_ratio", 0.5),
    ("training", "max_steps", 1),
    ("training", "epochs", 0.5),
]


@pytest.mark.parametrize("section,key,value", GOOD_BOUNDARIES)
def test_numeric_boundary_accepted(section, key, value):
    r = validate_recipe(recipe(**{section: {key: value}}))
    assert getattr(getattr(r, section), key) == value


def test_wrong_type_reported_with_value():
    problem = only_problem(recipe(finetune={"rank": "eight"}))
    assert problem.startswith("finetune.rank: Input should be a valid integer")
    assert problem.endswith("(got 'eight')")


# --- Literal choices ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "section,key,typo,meant",
    [
        ("training", "scheduler", "cosin", "cosine"),
        ("training", "optimizer", "adamw_troch", "adamw_torch"),
        ("training", "precision", "bf15", "bf16"),
        ("training", "save_strategy", "epochs", "epoch"),
        ("training", "eval_strategy", "step", "steps"),
        ("model", "attn_implementation", "flash_attention2", "flash_attention_2"),
        ("model", "dtype", "bfloat", "bfloat16"),
        ("data", "template", "chatm", "chatml"),
    ],
)
def test_literal_choice_rejected_with_suggestion(section, key, typo, meant):
    problem = only_problem(recipe(**{section: {key: typo}}))
    assert problem.startswith(f"{section}.{key}: Input should be ")
    assert problem.endswith(f" (got {typo!r}); did you mean {meant!r}?")


def test_literal_choice_without_close_match_has_no_suggestion():
    problem = only_problem(recipe(training={"precision": "xyz"}))
    assert problem == "training.precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32' (got 'xyz')"


@pytest.mark.parametrize("value", typing.get_args(Scheduler))
def test_every_scheduler_accepted(value):
    assert validate_recipe(recipe(training={"scheduler": value})).training.scheduler == value


@pytest.mark.parametrize("value", typing.get_args(Optimizer))
def test_every_optimizer_accepted(value):
    # the CUDA requirement of the bitsandbytes optimizers is a preflight check, not a schema rule
    assert validate_recipe(recipe(training={"optimizer": value})).training.optimizer == value


@pytest.mark.parametrize("value", ["auto", "bf16", "fp16", "fp32"])
def test_every_precision_accepted(value):
    assert validate_recipe(recipe(training={"precision": value})).training.precision == value


@pytest.mark.parametrize("value", ["sdpa", "eager", "flash_attention_2"])
def test_every_attn_implementation_accepted(value):
    assert validate_recipe(recipe(model={"attn_implementation": value})).model.attn_implementation == value


@pytest.mark.parametrize("value", ["chatml", "llama3", "alpaca", None])
def test_every_template_accepted(value):
    assert validate_recipe(recipe(data={"template": value})).data.template == value


def test_report_to_any_of_tensorboard_wandb_mlflow():
    assert validate_recipe(recipe(training={"report_to": []})).training.report_to == []
    both = validate_recipe(recipe(training={"report_to": ["wandb", "mlflow", "tensorboard"]})).training.report_to
    assert both == ["wandb", "mlflow", "tensorboard"]
    assert only_problem(recipe(training={"report_to": ["comet"]})) == (
        "training.report_to.0: Input should be 'tensorboard', 'wandb' or 'mlflow' (got 'comet')"
    )


# --- warm-up exclusivity -------------------------------------------------------------------


def test_warmup_ratio_and_steps_exclusive():
    assert only_problem(recipe(training={"warmup_ratio": 0.1, "warmup_steps": 10})) == (
        "training: set warmup_ratio or warmup_steps, not both"
    )


@pytest.mark.parametrize("values", [{"warmup_ratio": 0.1}, {"warmup_steps": 10}, {"warmup_ratio": 0.0, "warmup_steps": 10}])
def test_one_warmup_accepted(values):
    t = validate_recipe(recipe(training=values)).training
    for key, value in values.items():
        assert getattr(t, key) == value


def test_warmup_exclusivity_on_section_model():
    with pytest.raises(ValidationError, match="set warmup_ratio or warmup_steps, not both"):
        TrainingConfig(warmup_ratio=0.2, warmup_steps=3)


# --- data.train forms ----------------------------------------------------------------------


def test_data_train_string():
    assert validate_recipe(recipe(data={"train": "a.jsonl"})).data.train == [DatasetSpec(path="a.jsonl", format="auto")]


def test_data_train_list_of_strings():
    train = validate_recipe(recipe(data={"train": ["a.jsonl", "b.json"]})).data.train
    assert [(s.path, s.format) for s in train] == [("a.jsonl", "auto"), ("b.json", "auto")]


def test_data_train_list_of_specs():
    specs = [{"path": "a.jsonl", "format": "messages"}, {"path": "b.json", "format": "alpaca"}]
    train = validate_recipe(recipe(data={"train": specs})).data.train
    assert [(s.path, s.format) for s in train] == [("a.jsonl", "messages"), ("b.json", "alpaca")]


def test_data_train_mixed_list():
    train = validate_recipe(recipe(data={"train": ["a.jsonl", {"path": "b.json", "format": "alpaca"}]})).data.train
    assert [(s.path, s.format) for s in train] == [("a.jsonl", "auto"), ("b.json", "alpaca")]


def test_data_train_single_spec():
    train = validate_recipe(recipe(data={"train": {"path": "a.jsonl", "format": "messages"}})).data.train
    assert train == [DatasetSpec(path="a.jsonl", format="messages")]


def test_data_eval_same_forms_and_default_empty():
    assert validate_recipe(recipe()).data.eval == []
    data = validate_recipe(recipe(data={"eval": ["e1.jsonl", {"path": "e2.jsonl", "format": "messages"}]})).data
    assert [(s.path, s.format) for s in data.eval] == [("e1.jsonl", "auto"), ("e2.jsonl", "messages")]


def test_data_train_empty_list_rejected():
    problem = only_problem(recipe(data={"train": []}))
    assert problem.startswith("data.train: List should have at least 1 item")


def test_data_train_spec_without_path():
    assert only_problem(recipe(data={"train": [{"format": "messages"}]})) == "data.train.0.path: required key is missing"


def test_data_train_spec_unknown_key():
    assert only_problem(recipe(data={"train": [{"path": "a", "fromat": "text"}]})) == (
        "data.train.0.fromat: unknown key; did you mean 'format'?"
    )


def test_data_train_bad_format_in_second_entry():
    problem = only_problem(recipe(data={"train": ["a.jsonl", {"path": "b", "format": "alpacca"}]}))
    assert problem.startswith("data.train.1.format: Input should be 'auto', 'alpaca', 'sharegpt', 'messages', 'csv'")
    assert problem.endswith("(got 'alpacca'); did you mean 'alpaca'?")


def test_data_train_not_a_list():
    assert only_problem(recipe(data={"train": 5})) == "data.train: Input should be a valid list (got 5)"


def test_data_config_model_directly():
    assert DataConfig(train="x.txt").train == [DatasetSpec(path="x.txt")]
    with pytest.raises(ValidationError):
        DataConfig(train="x.txt", max_length=1)


# --- finetune variants ---------------------------------------------------------------------

LORA_ONLY = {
    "rank": 4,
    "alpha": 8,
    "dropout": 0.1,
    "target_modules": ["q_proj"],
    "modules_to_save": ["lm_head"],
    "adapter_path": "adapter",
}


@pytest.mark.parametrize("key", sorted(LORA_ONLY))
def test_lora_key_rejected_under_full(key):
    problem = only_problem(recipe(finetune={"mode": "full", key: LORA_ONLY[key]}))
    assert problem.startswith(f"finetune.{key}: unknown key")


@pytest.mark.parametrize("key", sorted(LORA_ONLY))
def test_lora_key_accepted_under_lora(key):
    assert getattr(validate_recipe(recipe(finetune=dict(LORA_ONLY))).finetune, key) == LORA_ONLY[key]


def test_full_mode_has_only_mode():
    ft = validate_recipe(recipe(finetune={"mode": "full"})).finetune
    assert isinstance(ft, FullFinetune)
    assert set(FullFinetune.model_fields) == {"mode"}


def test_qlora_key_rejected_under_lora():
    assert only_problem(recipe(finetune={"bits": 4})) == (
        "finetune.bits: unknown key; it is a key of finetune.mode qlora, not lora: remove it or change finetune.mode"
    )


def test_a_key_of_no_mode_lists_the_known_keys():
    assert only_problem(recipe(finetune={"bitz": 4})) == "finetune.bitz: unknown key; known keys: " + ", ".join(
        LoraFinetune.model_fields
    )


def test_a_stage_key_under_another_stage_says_where_it_belongs():
    assert only_problem(recipe(stage={"name": "sft", "beta": 0.1})) == (
        "stage.beta: unknown key; it is a key of stage.name dpo, kto, orpo, grpo, not sft: remove it or change stage.name"
    )


def test_target_modules_forms():
    adapter = TypeAdapter(Finetune)
    assert adapter.validate_python({"mode": "lora"}).target_modules == "all-linear"
    assert adapter.validate_python({"mode": "lora", "target_modules": ["q_proj", "v_proj"]}).target_modules == [
        "q_proj",
        "v_proj",
    ]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("all", "finetune.target_modules: Input should be 'all-linear' or a valid list (got 'all')"),
        (
            "all-linea",
            "finetune.target_modules: Input should be 'all-linear' or a valid list (got 'all-linea'); did you mean 'all-linear'?",
        ),
        (5, "finetune.target_modules: Input should be 'all-linear' or a valid list (got 5)"),
        # a list is the right shape: the entry at fault is named, not the union's other member
        (["q_proj", 1], "finetune.target_modules.1: Input should be a valid string (got 1)"),
    ],
)
def test_target_modules_rejected_once_with_clean_path(value, expected):
    assert only_problem(recipe(finetune={"target_modules": value})) == expected


def test_qlora_section_model():
    adapter = TypeAdapter(Finetune)
    q = adapter.validate_python({"mode": "qlora", "bits": 8})
    assert isinstance(q, QLoraFinetune) and q.bits == 8 and q.rank == 8
    with pytest.raises(ValidationError):
        adapter.validate_python({"mode": "qlora", "bits": 3})


def test_finetune_not_a_mapping():
    problem = only_problem(recipe(finetune=None) | {"finetune": "lora"})
    assert problem.startswith("finetune: Input should be a valid dictionary")
    assert problem.endswith("(got 'lora')")


# --- distributed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        ({"offload": "optimizer_and_params", "zero_stage": 2}, "offload: optimizer_and_params needs zero_stage: 3"),
        ({"offload": "optimizer"}, "offload: optimizer needs a ZeRO stage"),
        ({"deepspeed_config": "ds.json", "zero_stage": 2}, "set deepspeed_config or zero_stage/offload, not both"),
        ({"num_machines": 2, "num_processes": 4}, "num_machines > 1 needs main_process_ip"),
        (
            {"num_machines": 2, "num_processes": 3, "main_process_ip": "10.0.0.1"},
            "num_processes (3) must be a multiple of num_machines (2)",
        ),
        ({"machine_rank": 1}, "machine_rank 1 must be below num_machines (1)"),
    ],
)
def test_distributed_contradictions(section, message):
    problem = only_problem(recipe(distributed=section))
    assert problem.startswith("distributed: ")
    assert message in problem


def test_zero_stage_outside_0_to_3_refused():
    problem = only_problem(recipe(distributed={"zero_stage": 4}))
    assert problem.startswith("distributed.zero_stage: ")


def test_multi_node_accepted():
    d = validate_recipe(
        recipe(
            distributed={
                "num_processes": 16,
                "num_machines": 2,
                "machine_rank": 1,
                "main_process_ip": "10.0.0.1",
                "zero_stage": 3,
                "offload": "optimizer_and_params",
            }
        )
    ).distributed
    assert d.launches and d.uses_deepspeed


@pytest.mark.parametrize(
    "sections, key, message",
    [
        (
            {"stage": {"name": "ppo", "reward_model": "rm"}, "distributed": {"num_processes": 2}},
            "distributed.num_processes",
            "stage ppo trains in one process without DeepSpeed",
        ),
        (
            {"stage": {"name": "ppo", "reward_model": "rm"}, "distributed": {"zero_stage": 2}},
            "distributed.zero_stage",
            "stage ppo trains in one process without DeepSpeed",
        ),
        (
            {"finetune": {"mode": "qlora", "bits": 8}, "distributed": {"zero_stage": 3}},
            "finetune.bits",
            "8-bit bitsandbytes weights cannot be sharded by ZeRO-3",
        ),
        (
            {"training": {"optimizer": "paged_adamw_8bit"}, "distributed": {"zero_stage": 2, "offload": "optimizer"}},
            "training.optimizer",
            "cannot step the CPU copies that distributed.offload keeps",
        ),
    ],
)
def test_distributed_cross_section_rules(sections, key, message):
    problem = only_problem(recipe(**sections))
    assert problem.startswith(f"{key}: ") and message in problem


def test_distributed_defaults_accepted():
    d = validate_recipe(recipe(distributed={"num_processes": 1, "zero_stage": 0})).distributed
    assert (d.num_processes, d.zero_stage) == (1, 0)


# --- frozen --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("model", "path", "other"),
        ("data", "max_length", 8),
        ("finetune", "rank", 64),
        ("stage", "name", "pt"),
        ("training", "learning_rate", 1.0),
        ("distributed", "num_processes", 2),
        ("output", "dir", "elsewhere"),
    ],
)
def test_sections_are_frozen(section, key, value):
    r = validate_recipe(recipe())
    part = getattr(r, section)
    before = getattr(part, key)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(part, key, value)
    assert getattr(part, key) == before


def test_recipe_is_frozen():
    r = validate_recipe(recipe())
    with pytest.raises(ValidationError, match="frozen"):
        r.output = OutputConfig(dir="x")
    with pytest.raises(ValidationError, match="frozen"):
        r.data.train[0].path = "other.jsonl"


# --- defaults ------------------------------------------------------------------------------


def test_defaults_visible_on_validated_recipe():
    r = validate_recipe(recipe())
    m, d, ft, t, dist = r.model, r.data, r.finetune, r.training, r.distributed
    assert (m.gguf_file, m.tokenizer, m.dtype, m.attn_implementation, m.trust_remote_code) == (
        None,
        None,
        "auto",
        "sdpa",
        False,
    )
    assert (d.eval, d.max_length, d.mask_prompt, d.template) == ([], 1024, True, None)
    assert (ft.rank, ft.alpha, ft.dropout, ft.target_modules, ft.modules_to_save, ft.adapter_path) == (
        8,
        16.0,
        0.05,
        "all-linear",
        [],
        None,
    )
    assert t.epochs == 3.0 and t.max_steps is None
    assert (t.micro_batch_size, t.gradient_accumulation_steps) == (1, 1)
    assert t.learning_rate == 2e-5 and t.weight_decay == 0.0
    assert (t.scheduler, t.optimizer, t.precision) == ("cosine", "adamw_torch", "auto")
    assert (t.warmup_ratio, t.warmup_steps, t.max_grad_norm, t.seed) == (0.0, 0, 1.0, 42)
    assert (t.logging_steps, t.save_strategy, t.save_steps, t.save_total_limit) == (10, "steps", 500, None)
    assert (t.eval_strategy, t.eval_steps, t.report_to) == ("epoch", None, ["tensorboard"])
    assert t.gradient_checkpointing is False
    assert (dist.num_processes, dist.zero_stage) == (1, 0)


def test_defaults_appear_in_dump():
    dumped = validate_recipe(recipe()).model_dump()
    assert set(dumped) == {"model", "data", "finetune", "stage", "training", "distributed", "output"}
    assert dumped["training"]["learning_rate"] == 2e-5
    assert dumped["finetune"] == {
        "mode": "lora",
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "modules_to_save": [],
        "use_dora": False,
        "use_rslora": False,
        "init": "default",
        "lora_plus_ratio": None,
        "adapter_path": None,
    }
    assert dumped["data"]["train"] == [
        {
            "path": "train.jsonl",
            "format": "auto",
            "columns": {},
            "samples": None,
            "weight": None,
            "probability": None,
            "text_unit": "line",
        }
    ]
    assert dumped["distributed"] == {
        "num_processes": 1,
        "zero_stage": 0,
        "offload": "none",
        "deepspeed_config": None,
        "num_machines": 1,
        "machine_rank": 0,
        "main_process_ip": None,
        "main_process_port": 29500,
    }


def test_dump_round_trips():
    # with eval data: a dump sets eval_strategy explicitly, which needs data.eval (see test_loader)
    r = validate_recipe(recipe(finetune={"rank": 4}, training={"max_steps": 7}, data={"eval": "e.jsonl"}))
    assert validate_recipe(r.model_dump()) == r


def test_default_lists_not_shared():
    a, b = TrainingConfig(), TrainingConfig()
    assert a.report_to == b.report_to and a.report_to is not b.report_to
    assert ModelConfig(path="x").dtype == "auto"
