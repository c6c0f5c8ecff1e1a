"""`llmft eval` on the tiny model: every measure against a computation done here by hand with plain
forward passes, and `--compare` showing a trained model beating its base on a toy task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CONVERSATIONS, make_recipe, write_jsonl
from tiny_reward import save_tiny_reward_model
from toy_pairs import write_toy

from llmft.cli import EXIT_OK, EXIT_USER, main
from llmft.config import validate_recipe
from llmft.data.pairs import encode_reply
from llmft.data.tokenize import IGNORE, build_sft_examples
from llmft.evaluation import data as eval_data
from llmft.evaluation.measures import EvalOptions, split_reply
from llmft.evaluation.run import evaluate, load
from llmft.modeling.reward import reward_input_ids
from llmft.modeling.sources import resolve_source
from llmft.run import train

pytestmark = pytest.mark.usefixtures("restore_process_state")  # `main` configures logging; undo it after each test


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("eval") / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, sft_data, tmp_path_factory):
    """The tiny model taught the four conversations (a toy task its base cannot do)."""
    out = tmp_path_factory.mktemp("sft") / "run"
    raw = make_recipe(tiny_model_dir, sft_data, out, training={"max_steps": 40, "learning_rate": 2e-2, "micro_batch_size": 4})
    train(validate_recipe(raw))
    return out


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    train_file, eval_file = write_toy(tmp)
    raw = make_recipe(
        tiny_model_dir,
        train_file,
        tmp / "run",
        stage="dpo",
        training={"max_steps": 8, "micro_batch_size": 8, "learning_rate": 1e-2},
    )
    train(validate_recipe(raw))
    return tmp / "run", eval_file


def test_lm_loss_is_the_token_mean_nll_of_the_supervised_tokens(sft_run, sft_data):
    loaded = load(resolve_source(str(sft_run)))
    result = evaluate(loaded, eval_data.from_file(str(sft_data)), EvalOptions(metrics=("lm",)))
    examples, _ = build_sft_examples(loaded.tokenizer, eval_data.from_file(str(sft_data)).records, 1024)
    total, count = 0.0, 0
    for example in examples:  # one plain forward per example, no batching, no padding
        labels = torch.tensor([example.labels])
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([example.input_ids]), labels=labels)
        n = int((labels[:, 1:] != IGNORE).sum())
        total, count = total + out.loss.item() * n, count + n
    lm = result.metrics["lm"]
    assert lm["tokens"] == count and lm["examples"] == len(CONVERSATIONS)
    assert lm["loss"] == pytest.approx(total / count, abs=1e-5)
    assert lm["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_batched_greedy_answers_equal_one_prompt_at_a_time(sft_run, sft_data):
    loaded = load(resolve_source(str(sft_run)))
    data = eval_data.from_file(str(sft_data))
    result = evaluate(loaded, data, EvalOptions(metrics=("generate",), max_new_tokens=12, batch_size=4))
    for row, conversation in zip(result.rows["generate"], data.records):
        prompt, reference = split_reply(conversation)
        ids = loaded.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        stop = [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>"), loaded.tokenizer.eos_token_id]
        with torch.no_grad():
            out = loaded.model.generate(
                **ids, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=loaded.tokenizer.pad_token_id
            )
        alone = loaded.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert row["answer"] == alone and row["reference"] == reference


def test_compare_shows_the_trained_model_beating_its_base(tiny_model_dir, sft_run, sft_data, tmp_path, capsys):
    code = main(
        [
            "eval",
            str(tiny_model_dir),
            "--compare",
            str(sft_run),
            "--data",
            str(sft_data),
            "--max-new-tokens",
            "16",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == EXIT_OK
    table = capsys.readouterr().out
    assert "lm.loss" in table and "generate.rouge_l" in table and "B - A" in table
    results = json.loads((tmp_path / "out" / "eval.json").read_text())["results"]
    base, trained = (r["metrics"] for r in results)
    assert trained["lm"]["loss"] < base["lm"]["loss"] - 1.0
    assert trained["generate"]["rouge_l"] > base["generate"]["rouge_l"] + 0.3
    assert trained["generate"]["exact_match"] >= 0.5 > base["generate"]["exact_match"]
    answers = [json.loads(line) for line in (tmp_path / "out" / "generate-B.jsonl").read_text().splitlines()]
    assert len(answers) == len(CONVERSATIONS) and {"prompt", "reference", "answer", "where"} <= set(answers[0])


def test_implicit_reward_against_the_adapters_base_by_hand(dpo_run, tiny_model_dir):
    run, eval_file = dpo_run
    loaded = load(resolve_source(str(run)))
    data = eval_data.from_file(str(eval_file))
    figures = evaluate(loaded, data, EvalOptions(metrics=("preference",))).metrics["preference"]
    base, _ = load(resolve_source(str(tiny_model_dir))).model, None

    def logp(model, prompt, reply):
        example = encode_reply(loaded.tokenizer, prompt, reply)
        targets = torch.tensor(example.labels[1:])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1].float().log_softmax(-1)
        keep = targets != IGNORE
        return logits[keep].gather(1, targets[keep, None]).sum().item()

    implicit, margins = [], []
    for pair in data.records:
        policy = [logp(loaded.model, pair.prompt, side) for side in (pair.chosen, pair.rejected)]
        reference = [logp(base, pair.prompt, side) for side in (pair.chosen, pair.rejected)]
        implicit.append((policy[0] - reference[0]) - (policy[1] - reference[1]))
        margins.append(policy[0] - policy[1])
    assert figures["pairs"] == len(data.records)
    assert figures["logp_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert figures["implicit_reward_margin"] == pytest.approx(sum(implicit) / len(implicit), abs=1e-4)
    assert figures["implicit_reward_accuracy"] == pytest.approx(sum(x > 0 for x in implicit) / len(implicit))
    assert figures["implicit_reward_accuracy"] >= 0.75  # DPO on the toy task learned the held-out preference
    assert figures["logp_margin"] > figures["reference_logp_margin"]


def test_reward_model_pairwise_accuracy_by_hand(tmp_path):
    rm_dir = save_tiny_reward_model(tmp_path / "rm")
    pairs = [{"prompt": f"Question {i}?", "chosen": "Paris." * (1 + i % 3), "rejected": "No."} for i in range(6)]
    data_file = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    loaded = load(resolve_source(str(rm_dir)))
    assert loaded.reward
    figures = evaluate(loaded, eval_data.from_file(str(data_file)), EvalOptions()).metrics["reward"]
    margins = []
    for pair in eval_data.from_file(str(data_file)).records:
        scores = []
        for side in (pair.chosen, pair.rejected):
            ids = torch.tensor([reward_input_ids(loaded.tokenizer, pair.prompt, side)])
            with torch.no_grad():
                scores.append(loaded.model(input_ids=ids).logits[0, 0].item())
        margins.append(scores[0] - scores[1])
    assert figures["pairs"] == 6
    assert figures["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 6)
    assert figures["margin"] == pytest.approx(sum(margins) / 6, abs=1e-5)


def test_win_rate_judged_by_a_reward_model(dpo_run, tmp_path):
    run, eval_file = dpo_run
    rm_dir = save_tiny_reward_model(tmp_path / "rm")
    loaded = load(resolve_source(str(run)), judge=str(rm_dir))
    result = evaluate(loaded, eval_data.from_file(str(eval_file)), EvalOptions(metrics=("win_rate",), max_new_tokens=6))
    figures, rows = result.metrics["win_rate"], result.rows["win_rate"]
    wins = [1.0 if r["reward"] > r["reference_reward"] else 0.5 if r["reward"] == r["reference_reward"] else 0.0 for r in rows]
    assert figures["prompts"] == len(rows) == 8 and figures["win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert all(isinstance(r["answer"], str) and isinstance(r["reference_answer"], str) for r in rows)


def test_recipe_eval_split_and_bad_arguments(tiny_model_dir, sft_data, tmp_path, capsys):
    import yaml

    recipe = make_recipe(tiny_model_dir, sft_data, tmp_path / "r", data={"eval_split": 2})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert (
        main(["eval", str(tiny_model_dir), "--recipe", str(tmp_path / "r.yaml"), "--metrics", "lm", "--out", str(tmp_path / "o")])
        == EXIT_OK
    )
    assert "the recipe's eval split (2 records)" in capsys.readouterr().out
    assert main(["eval", str(tiny_model_dir)]) == EXIT_USER
    assert "give held-out data (--data FILE, or --recipe RECIPE for its eval split) or --harness TASKS" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--data", str(sft_data), "--recipe", str(tmp_path / "r.yaml")]) == EXIT_USER
    assert "give one of --data FILE and --recipe RECIPE" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--data", str(sft_data), "--metrics", "bleu"]) == EXIT_USER
    assert "--metrics: unknown bleu" in capsys.readouterr().err
    rm_dir = save_tiny_reward_model(tmp_path / "rm")
    assert main(["eval", str(rm_dir), "--data", str(sft_data)]) == EXIT_USER
    assert "a reward model is measured on preference pairs" in capsys.readouterr().err


def test_output_eval_measures_before_and_after_at_the_end_of_a_run(tiny_model_dir, sft_data, tmp_path):
    raw = make_recipe(
        tiny_model_dir,
        sft_data,
        tmp_path / "run",
        data={"eval_split": 2},
        training={"max_steps": 3},
        output={"eval": {"max_new_tokens": 4, "metrics": ["lm", "generate"]}},
    )
    train(validate_recipe(raw))
    results = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())["results"]
    assert [r["model"] for r in results] == [str(tiny_model_dir), f"{tiny_model_dir} + adapter {tmp_path / 'run'}"]
    assert all(set(r["metrics"]) == {"lm", "generate"} and r["metrics"]["lm"]["examples"] == 2 for r in results)
    assert (tmp_path / "run" / "eval" / "generate-B.jsonl").is_file()


def test_verify_scores_answers_with_grpos_own_rewards(sft_run, tmp_path):
    from llmft.errors import UserError
    from llmft.evaluation.measures import parse_rewards
    from llmft.rewards import score

    questions = ["What is 2 + 2?", "Who are you?", "Hello! How are you today?"]
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": "4"} for q in questions])
    loaded = load(resolve_source(str(sft_run)))
    options = EvalOptions(rewards=parse_rewards(["accuracy:exact", "ends_cleanly"]), max_new_tokens=8)
    result = evaluate(loaded, eval_data.from_file(str(qa)), options)
    assert set(result.metrics) == {"lm", "verify"}  # the default with rewards: verify instead of generate
    rows = result.rows["verify"]
    for row in rows:  # each answer's reward is what the reward function itself gives it
        assert row["accuracy"] == score(options.rewards[0], row["answer"], {"answer": "4"})
    # records whose answer is what the model says are all correct
    echo = write_jsonl(tmp_path / "echo.jsonl", [{"question": q, "answer": r["answer"]} for q, r in zip(questions, rows)])
    assert evaluate(loaded, eval_data.from_file(str(echo)), options).metrics["verify"]["accuracy"] == 1.0
    assert 0.0 <= result.metrics["verify"]["ends_cleanly"] <= 1.0 and result.metrics["verify"]["answers"] == 3
    with pytest.raises(UserError, match="--reward: "):
        parse_rewards(["accuracy:fuzzy"])
    with pytest.raises(UserError, match="--reward: "):
        parse_rewards(["nonsense"])
