"""The one load path: file -> OmegaConf (+ overrides, `${...}`) -> dict -> validated Recipe,
every problem reported at once as `dotted.path: problem (got value)`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe as recipe

from llmft.config import Recipe, load_raw, load_recipe, validate_recipe
from llmft.errors import RecipeError, UserError

PAIRS = "pt/full, pt/freeze, pt/lora, pt/qlora, sft/full, sft/freeze, sft/lora, sft/qlora, rm/full, rm/freeze, rm/lora, dpo/full, dpo/freeze, dpo/lora, dpo/qlora, kto/full, kto/freeze, kto/lora, kto/qlora, orpo/full, orpo/freeze, orpo/lora, orpo/qlora, grpo/full, grpo/freeze, grpo/lora, grpo/qlora, ppo/full, ppo/freeze, ppo/lora, ppo/qlora"


@pytest.fixture
def write(tmp_path: Path):
    """Write a recipe (a dict as YAML, or text as is) and return its path."""

    def _write(content: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return _write


def load_problems(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert info.value.source == str(path)
    return info.value.problems


# --- every problem at once -----------------------------------------------------------------


def test_all_problems_reported_at_once(write):
    raw = recipe(finetune={"rnak": 4}, data={"max_length": 1}, distributed={"zero_stage": 5})
    raw["traning"] = {"epochs": 1}
    raw["training"] = {"scheduler": "cosin", "micro_batch_size": 0}
    del raw["model"]["path"]
    path = write(raw)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    paths = [p.split(": ", 1)[0] for p in problems]
    assert sorted(paths) == sorted(
        [
            "traning",
            "finetune.rnak",
            "data.max_length",
            "distributed.zero_stage",
            "training.scheduler",
            "training.micro_batch_size",
            "model.path",
        ]
    )
    message = str(info.value)
    assert message.startswith(f"{path}: 7 problems\n")
    for problem in problems:
        assert f"\n  - {problem}" in message


def test_single_problem_counted_in_singular(write):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(recipe(finetune={"rnak": 4})))
    assert ": 1 problem\n" in str(info.value)


def test_recipe_error_is_a_user_error():
    assert issubclass(RecipeError, UserError)


# --- did you mean --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ({**recipe(), "traning": {"epochs": 1}}, "traning: unknown key; did you mean 'training'?"),
        (recipe(finetune={"rnak": 4}), "finetune.rnak: unknown key; did you mean 'rank'?"),
        (
            recipe(training={"lerning_rate": 1e-4}),
            "training.lerning_rate: unknown key; did you mean 'learning_rate'?",
        ),
        (
            recipe(stage={"name": "sfft"}),
            "stage.name: should be one of 'pt', 'sft', 'rm', 'dpo', 'kto', 'orpo', 'grpo', 'ppo' (got 'sfft'); did you mean 'sft'?",
        ),
        (
            recipe(finetune={"mode": "lroa"}),
            "finetune.mode: should be one of 'full', 'freeze', 'lora', 'qlora' (got 'lroa'); did you mean 'lora'?",
        ),
    ],
    ids=["top-level", "finetune.rnak", "training.lerning_rate", "stage.name", "finetune.mode"],
)
def test_did_you_mean(write, raw, expected):
    assert load_problems(write(raw)) == [expected]


def test_bad_tag_hides_variant_key_errors(write):
    # with an unknown mode there is no variant to check `rank` against: one problem, not two
    assert load_problems(write(recipe(finetune={"mode": "lroa", "rank": 4}))) == [
        "finetune.mode: should be one of 'full', 'freeze', 'lora', 'qlora' (got 'lroa'); did you mean 'lora'?"
    ]


def test_tag_value_without_close_match_has_no_hint(write):
    assert load_problems(write(recipe(stage={"name": "zzzz"}))) == [
        "stage.name: should be one of 'pt', 'sft', 'rm', 'dpo', 'kto', 'orpo', 'grpo', 'ppo' (got 'zzzz')"
    ]


# --- message form --------------------------------------------------------------------------


def test_problem_form_dotted_path_problem_got_value(write):
    problems = load_problems(write(recipe(training={"learning_rate": -0.5}, data={"max_length": 0})))
    assert problems == [
        "data.max_length: Input should be greater than 1 (got 0)",
        "training.learning_rate: Input should be greater than or equal to 0 (got -0.5)",
    ]
    for problem in problems:
        assert re.fullmatch(r"[a-z_]+(\.[a-z0-9_]+)+: .+ \(got .+\)", problem), problem


def test_list_index_in_dotted_path(write):
    raw = recipe(data={"train": ["a.jsonl", {"path": "b.jsonl", "format": "yaml"}]})
    (problem,) = load_problems(write(raw))
    assert problem.startswith("data.train.1.format: Input should be ")
    assert problem.endswith("(got 'yaml')")


# --- overrides -----------------------------------------------------------------------------


def test_override_float(write):
    r = load_recipe(write(recipe()), ["training.learning_rate=1.0e-4"])
    assert isinstance(r.training.learning_rate, float)
    assert r.training.learning_rate == pytest.approx(1e-4)


def test_scientific_float_in_yaml(write):
    path = write(
        "model: {path: m}\ndata: {train: t.jsonl}\nfinetune: {mode: lora}\nstage: {name: sft}\n"
        "training:\n  learning_rate: 2e-4\noutput: {dir: o}\n"
    )
    assert load_raw(path)["training"]["learning_rate"] == 0.0002
    r = load_recipe(path)
    assert type(r.training.learning_rate) is float and r.training.learning_rate == 0.0002


def test_several_overrides_and_types(write):
    r = load_recipe(
        write(recipe()),
        ["training.epochs=2", "finetune.rank=32", "data.mask_prompt=false", "data.train=[a.jsonl,b.jsonl]"],
    )
    assert r.training.epochs == 2.0
    assert r.finetune.rank == 32
    assert r.data.mask_prompt is False
    assert [s.path for s in r.data.train] == ["a.jsonl", "b.jsonl"]


def test_override_adds_new_section(write):
    r = load_recipe(write(recipe()), ["training.max_steps=5", "model.dtype=float32"])
    assert r.training.max_steps == 5 and r.model.dtype == "float32"


def test_override_is_validated_too(write):
    assert load_problems(write(recipe()), ["traning.epochs=2"]) == ["traning: unknown key; did you mean 'training'?"]
    assert load_problems(write(recipe()), ["finetune.rank=0"]) == ["finetune.rank: Input should be greater than 0 (got 0)"]


@pytest.mark.parametrize("bad", ["training.learning_rate", "=3"])
def test_override_without_equals(write, bad):
    with pytest.raises(UserError) as info:
        load_recipe(write(recipe()), ["training.epochs=1", bad])
    assert not isinstance(info.value, RecipeError)
    assert "key.path=value" in str(info.value)
    assert repr(bad) in str(info.value)
    assert "'training.epochs=1'" not in str(info.value)


def test_override_applies_before_interpolation(write):
    raw = recipe(output={"dir": "outputs/${stage.name}"})
    r = load_recipe(write(raw), ["stage.name=pt"])
    assert r.stage.name == "pt"
    assert r.output.dir == "outputs/pt"


# --- file problems -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "recipe.yaml"
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_directory_is_not_a_recipe(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path)


def test_yaml_syntax_error(write):
    path = write("model:\n  path: m\n data: [unclosed\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert str(info.value).startswith(f"{path}: cannot parse:")


def test_json_syntax_error(write):
    path = write('{"model": {"path": "m"', name="recipe.json")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert str(info.value).startswith(f"{path}: invalid JSON at line 1, column 23: Expecting ',' delimiter")


def test_json_recipe_is_strict_json(write):
    """YAML would take a trailing comma (JSON with one is not JSON): the error names line and column."""
    text = json.dumps(recipe(), indent=2).replace('"train.jsonl"\n', '"train.jsonl",\n')
    assert '"train.jsonl",\n' in text
    path = write(text, name="recipe.json")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    line = text[: text.index('"train.jsonl",')].count("\n") + 2  # the closing brace after the comma
    assert str(info.value) == (
        f"{path}: invalid JSON at line {line}, column 3: Expecting property name enclosed in double quotes"
        " (a trailing comma before it?)"
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"model": {"path": "m", "path": "n"}}', "invalid JSON: key 'path' appears twice in one object"),
        ('{"training": {"learning_rate": NaN}}', "invalid JSON: NaN is not a JSON value"),
        ('"model: {path: m}"', "a recipe is a mapping of sections (model, data, ...), not a string"),
        ("[1, 2]", "a recipe is a mapping of sections (model, data, ...), not a list"),
        ("", "invalid JSON at line 1, column 1: Expecting value"),
    ],
)
def test_json_recipe_other_problems(write, text, problem):
    path = write(text, name="recipe.json")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: {problem}"


def test_json_recipe_with_overrides_and_interpolation(write):
    raw = recipe(output={"dir": "outputs/${stage.name}-${finetune.mode}"})
    path = write(json.dumps(raw, indent=2), name="recipe.json")
    r = load_recipe(path, ["finetune.rank=32", "training.learning_rate=1e-4"])
    assert (r.finetune.rank, r.training.learning_rate, r.output.dir) == (32, 1e-4, "outputs/sft-lora")
    assert load_recipe(path) == validate_recipe({**raw, "output": {"dir": "outputs/sft-lora"}})


def test_top_level_list(write):
    path = write("- model\n- data\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert str(info.value) == f"{path}: a recipe is a mapping of sections (model, data, ...), not a list"


def test_wrong_suffix(write):
    path = write(recipe(), name="recipe.txt")
    with pytest.raises(UserError, match=r"\.yaml, \.yml, \.json.*'\.txt'"):
        load_recipe(path)


def test_empty_file_reports_missing_sections(write):
    problems = load_problems(write(""))
    assert problems == [f"{s}: required key is missing" for s in ("model", "data", "finetune", "stage", "output")]


@pytest.mark.parametrize("suffix", [".yml", ".json"])
def test_other_suffixes_load(write, suffix):
    content = json.dumps(recipe()) if suffix == ".json" else yaml.safe_dump(recipe())
    assert load_recipe(write(content, name="r" + suffix)).model.path == "some/model"


def test_json_recipe(write):
    raw = recipe(stage={"name": "pt"}, finetune={"mode": "full"}, training={"learning_rate": 3e-4})
    raw["data"]["train"] = [{"path": "c.txt", "format": "text"}]
    raw["output"]["dir"] = "runs/${stage.name}-${finetune.mode}"
    r = load_recipe(write(json.dumps(raw), name="recipe.json"))
    assert (r.stage.name, r.finetune.mode, r.training.learning_rate) == ("pt", "full", 3e-4)
    assert r.data.train[0].format == "text"
    assert r.output.dir == "runs/pt-full"


def test_json_recipe_problems_are_reported(write):
    path = write(json.dumps(recipe(finetune={"rnak": 2})), name="recipe.json")
    assert load_problems(path) == ["finetune.rnak: unknown key; did you mean 'rank'?"]


# --- interpolation and ${pkg:} -------------------------------------------------------------


def test_interpolation(write):
    r = load_recipe(write(recipe(output={"dir": "outputs/${stage.name}-${finetune.mode}"})))
    assert r.output.dir == "outputs/sft-lora"


def test_interpolation_of_missing_key(write):
    path = write(recipe(output={"dir": "outputs/${nope.key}"}))
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert str(info.value).startswith(f"{path}: ")
    assert "nope.key" in str(info.value)


def test_load_raw_resolves_but_does_not_validate(write):
    raw = recipe(output={"dir": "o/${stage.name}"})
    raw["traning"] = {"x": 1}
    data = load_raw(write(raw))
    assert type(data) is dict
    assert data["output"]["dir"] == "o/sft"
    assert data["traning"] == {"x": 1}


def test_pkg_resolver(write):
    import pydantic

    r = load_recipe(write(recipe(model={"path": "${pkg:pydantic}"})))
    assert r.model.path == str(Path(pydantic.__file__).parent.resolve())
    assert Path(r.model.path).is_dir()


def test_pkg_resolver_inside_a_string(write):
    import pydantic

    r = load_recipe(write(recipe(data={"train": "${pkg:pydantic}/py.typed"})))
    assert r.data.train[0].path == str(Path(pydantic.__file__).parent.resolve() / "py.typed")


def test_pkg_resolver_missing_package(write):
    path = write(recipe(model={"path": "${pkg:llmft_no_such_package_xyz}"}))
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert not isinstance(info.value, RecipeError)
    assert "'llmft_no_such_package_xyz' is not installed" in str(info.value)
    assert str(path) in str(info.value)


# --- rules across sections -----------------------------------------------------------------


@pytest.mark.parametrize(
    "stage,mode",
    [("rm", "qlora")],
)
def test_unregistered_pair(write, stage, mode):
    raw = recipe(stage={"name": stage}, finetune={"mode": mode}, training={"micro_batch_size": 2})
    assert load_problems(write(raw)) == [
        f"stage.name: stage {stage!r} with finetune mode {mode!r} is not available; available stage/mode pairs: {PAIRS}"
    ]


@pytest.mark.parametrize(
    "stage,mode",
    [
        ("pt", "full"),
        ("pt", "lora"),
        ("sft", "full"),
        ("sft", "lora"),
        ("rm", "full"),
        ("rm", "lora"),
        ("dpo", "full"),
        ("dpo", "lora"),
        ("kto", "full"),
        ("kto", "lora"),
        ("orpo", "full"),
        ("orpo", "lora"),
    ],
)
def test_registered_pairs_validate(write, stage, mode):
    r = load_recipe(write(recipe(stage={"name": stage}, finetune={"mode": mode}, training={"micro_batch_size": 2})))
    assert (r.stage.name, r.finetune.mode) == (stage, mode)


@pytest.mark.parametrize(
    "stage,fmt,allowed",
    [
        ("sft", "text", "'alpaca' or 'sharegpt' or 'messages' or 'csv' or 'qa'"),
        ("sft", "preference", "'alpaca' or 'sharegpt' or 'messages' or 'csv' or 'qa'"),
        ("pt", "alpaca", "'text'"),
        ("pt", "messages", "'text'"),
    ],
)
def test_data_format_must_suit_stage(write, stage, fmt, allowed):
    raw = recipe(stage={"name": stage}, data={"train": [{"path": "a", "format": fmt}]})
    assert load_problems(write(raw)) == [f"data.train.0.format: stage {stage!r} trains on {allowed} data (got {fmt!r})"]


def test_eval_data_format_checked_too(write):
    raw = recipe(data={"eval": ["ok.jsonl", {"path": "e.txt", "format": "text"}]})
    assert load_problems(write(raw)) == [
        "data.eval.1.format: stage 'sft' trains on 'alpaca' or 'sharegpt' or 'messages' or 'csv' or 'qa' data (got 'text')"
    ]


@pytest.mark.parametrize("stage,fmt", [("sft", "auto"), ("sft", "alpaca"), ("sft", "messages"), ("pt", "text"), ("pt", "auto")])
def test_data_format_suits_stage(write, stage, fmt):
    raw = recipe(stage={"name": stage}, data={"train": [{"path": "a", "format": fmt}]})
    assert load_recipe(write(raw)).data.train[0].format == fmt


@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_explicit_eval_strategy_needs_eval_data(write, strategy):
    assert load_problems(write(recipe(training={"eval_strategy": strategy}))) == [
        f"training.eval_strategy: is {strategy!r} but there is no eval data; add data.eval or data.eval_split, or set 'no'"
    ]


def test_default_eval_strategy_without_eval_data(write):
    r = load_recipe(write(recipe()))
    assert r.training.eval_strategy == "epoch"
    assert r.data.eval == []
    assert r.evaluates is False


def test_eval_strategy_no_without_eval_data(write):
    r = load_recipe(write(recipe(training={"eval_strategy": "no"})))
    assert r.evaluates is False


def test_evaluates_with_eval_data(write):
    assert load_recipe(write(recipe(data={"eval": "e.jsonl"}))).evaluates is True
    assert load_recipe(write(recipe(data={"eval": "e.jsonl"}, training={"eval_strategy": "steps"}))).evaluates is True
    assert load_recipe(write(recipe(data={"eval": "e.jsonl"}, training={"eval_strategy": "no"}))).evaluates is False


def test_cross_section_problems_reported_together(write):
    raw = recipe(
        stage={"name": "rm"},
        finetune={"mode": "qlora"},
        data={"train": [{"path": "a", "format": "text"}]},
        training={"eval_strategy": "steps", "micro_batch_size": 2},
    )
    problems = load_problems(write(raw))
    assert [p.split(": ", 1)[0] for p in problems] == ["stage.name", "data.train.0.format", "training.eval_strategy"]
    assert PAIRS in problems[0]
    assert "stage 'rm' trains on 'preference' data (got 'text')" in problems[1]


def test_validate_recipe_source_default():
    with pytest.raises(RecipeError) as info:
        validate_recipe(recipe(finetune={"rnak": 1}))
    assert info.value.source == "<recipe>"
    assert str(info.value).startswith("<recipe>: 1 problem")
    assert isinstance(validate_recipe(recipe()), Recipe)


def test_resolved_recipe_without_eval_data_loads_back(tmp_path):
    from llmft.outputs import RESOLVED_RECIPE, write_resolved_recipe

    r = validate_recipe(recipe())
    write_resolved_recipe(r, tmp_path)
    loaded = load_recipe(tmp_path / RESOLVED_RECIPE)
    # the file records the effective eval_strategy ('no'): compare everything else
    same = {"training": {"eval_strategy"}}
    assert loaded.model_dump(exclude=same) == r.model_dump(exclude=same)
    assert loaded.evaluates is r.evaluates is False


def test_resolved_recipe_with_eval_data_loads_back(tmp_path):
    from llmft.outputs import RESOLVED_RECIPE, write_resolved_recipe

    r = validate_recipe(recipe(data={"eval": "e.jsonl"}, training={"learning_rate": 2e-4}))
    write_resolved_recipe(r, tmp_path)
    assert load_recipe(tmp_path / RESOLVED_RECIPE) == r


def test_stage_level_rule_reads_plainly():
    with pytest.raises(RecipeError) as info:
        validate_recipe(recipe(stage={"name": "ppo", "reward_model": "rm", "rollout_batch_size": 6, "mini_batch_size": 4}))
    assert info.value.problems == ["stage: rollout_batch_size must be a multiple of mini_batch_size"]


def test_grpo_rewards_dump_and_load_back():
    """The stage as recipe.resolved.yaml writes it (JSON-mode dump) validates to the same stage."""
    rewards = [
        {"type": "accuracy", "column": "solution", "match": "math", "weight": 2.0},
        {"type": "format", "pattern": "<answer>.*</answer>"},
        "answer_line",
        {"type": "json", "schema": "schema.json"},
        {"type": "length", "target_chars": 200},
        "no_repeat",
        "ends_cleanly",
        {"type": "reward_model", "path": "outputs/rm", "weight": 0.5},
        {"type": "python", "function": "my_rewards:score", "columns": ["tests"]},
    ]
    stage = {"name": "grpo", "rewards": rewards, "allow_python_rewards": True, "loss_type": "dr_grpo", "num_generations": 2}
    r = validate_recipe(recipe(stage=stage, training={"micro_batch_size": 2}))
    dumped = yaml.safe_load(yaml.safe_dump(r.stage.model_dump(mode="json")))
    assert dumped["rewards"][3] == {"type": "json", "schema": "schema.json", "weight": 1.0}
    assert validate_recipe(recipe(stage=dumped, training={"micro_batch_size": 2})).stage == r.stage
    assert [e.type for e in r.stage.rewards][2:] == [
        "answer_line",
        "json",
        "length",
        "no_repeat",
        "ends_cleanly",
        "reward_model",
        "python",
    ]


@pytest.mark.parametrize(
    "stage, problem",
    [
        ({"name": "grpo"}, "stage.rewards: required key is missing"),
        (
            {"name": "grpo", "rewards": []},
            "stage.rewards: give at least one reward, e.g. [{type: accuracy, match: math}, format]",
        ),
        (
            {"name": "grpo", "reward_functions": ["length"], "rewards": ["length"]},
            "stage.reward_functions: unknown key; did you mean 'rewards'?",
        ),
        (
            {"name": "grpo", "rewards": ["lenght"]},
            "stage.rewards.0.type: should be one of 'accuracy', 'format', 'answer_line', 'json', 'length', 'no_repeat', 'ends_cleanly', 'reward_model', 'python' (got 'lenght'); did you mean 'length'?",
        ),
        (
            {"name": "grpo", "rewards": [{"type": "accuracy", "colum": "x"}]},
            "stage.rewards.0.colum: unknown key; did you mean 'column'?",
        ),
        (
            {"name": "grpo", "rewards": [{"weight": 2}]},
            "stage.rewards.0.type: required key is missing; one of 'accuracy', 'format', 'answer_line', 'json', 'length', 'no_repeat', 'ends_cleanly', 'reward_model', 'python'",
        ),
        (
            {"name": "grpo", "rewards": [{"type": "accuracy", "match": "fuzzy"}]},
            "stage.rewards.0.match: Input should be 'exact', 'normalized', 'numeric' or 'math' (got 'fuzzy')",
        ),
        (
            {"name": "grpo", "rewards": ["length", {"type": "format", "pattern": "(a"}]},
            "stage.rewards.1.pattern: not a valid regex: missing ), unterminated subpattern at position 0 (got '(a')",
        ),
        (
            {"name": "grpo", "rewards": [{"type": "python", "function": "m.f"}], "allow_python_rewards": True},
            "stage.rewards.0.function: should look like package.module:callable (got 'm.f')",
        ),
        (
            {"name": "grpo", "rewards": [{"type": "length", "weight": "x"}]},
            "stage.rewards.0.weight: Input should be a valid number, unable to parse string as a number (got 'x')",
        ),
        (
            {"name": "grpo", "rewards": [{"type": "length", "weight": float("inf")}]},
            "stage.rewards.0.weight: Input should be a finite number (got inf)",
        ),
        (
            {"name": "grpo", "rewards": ["length"], "loss_type": "ppo"},
            "stage.loss_type: Input should be 'grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo', 'luspo' or 'vespo' (got 'ppo'); did you mean 'sapo'?",
        ),
    ],
)
def test_grpo_reward_problems_name_the_key(stage, problem):
    with pytest.raises(RecipeError) as info:
        validate_recipe(recipe(stage=stage, training={"micro_batch_size": 4}))
    assert info.value.problems == [problem]


def test_a_bare_reward_name_is_its_type():
    stage = {"name": "grpo", "rewards": "ends_cleanly"}
    r = validate_recipe(recipe(stage=stage, training={"micro_batch_size": 4}))
    assert [(e.type, e.weight) for e in r.stage.rewards] == [("ends_cleanly", 1.0)]


def test_stage_batch_shapes_are_checked_at_validation(write):
    assert load_problems(write(recipe(stage={"name": "kto"}))) == [
        "training.micro_batch_size: KTO needs at least 2 (its KL term pairs each prompt with another reply "
        "in the same micro-batch); got 1"
    ]
    grpo = {"name": "grpo", "rewards": ["length"], "num_generations": 4}
    (problem,) = load_problems(write(recipe(stage=grpo, training={"micro_batch_size": 3, "gradient_accumulation_steps": 2})))
    assert "= 6 completions per generation round must be a multiple of stage.num_generations (4)" in problem
    assert load_recipe(write(recipe(stage=grpo, training={"micro_batch_size": 2, "gradient_accumulation_steps": 2})))


@pytest.mark.parametrize("stage", ["pt", "sft", "rm", "dpo", "kto", "orpo", "grpo", "ppo"])
def test_every_stages_resolved_recipe_loads_back(stage, tmp_path):
    """recipe.resolved.yaml records every default; the ones that mean nothing for the stage (and would be
    refused if a recipe set them) are left out, so the file loads back to the same recipe."""
    from llmft.outputs import RESOLVED_RECIPE, write_resolved_recipe

    sections = {
        "pt": {"data": {"train": [{"path": "t.txt", "format": "text"}]}},
        "rm": {"data": {"train": [{"path": "p.json", "format": "preference"}]}},
        "dpo": {"data": {"train": [{"path": "p.json", "format": "preference"}]}},
        "orpo": {"data": {"train": [{"path": "p.json", "format": "preference"}]}},
        "kto": {"data": {"train": [{"path": "k.json", "format": "kto"}]}, "training": {"micro_batch_size": 2}},
        "grpo": {
            "stage": {"name": "grpo", "rewards": ["ends_cleanly"], "num_generations": 2},
            "training": {"micro_batch_size": 2},
        },
        "ppo": {"stage": {"name": "ppo", "reward_model": "rm"}},
    }.get(stage, {})
    r = validate_recipe(recipe(**{"stage": {"name": stage}, **sections}))
    write_resolved_recipe(r, tmp_path)
    same = {"training": {"eval_strategy"}}
    assert load_recipe(tmp_path / RESOLVED_RECIPE).model_dump(exclude=same) == r.model_dump(exclude=same)
