"""`llmft eval --harness`: an lm-evaluation-harness task on local data, run on the tiny model with an
adapter applied, scored exactly as a hand computation of each choice's log-likelihood says; and the
refusals (no such task, its data not on this machine, the package missing) before a model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from llmft.cli import EXIT_OK, EXIT_USER, main
from llmft.errors import UserError
from llmft.evaluation.harness import HarnessOptions, task_manager
from llmft.modeling.sources import load_causal_lm, resolve_source

pytestmark = pytest.mark.usefixtures("restore_process_state")

DOCS = [
    {"question": "the cat sat on the", "choices": ["mat", "moon", "dog"], "answer": 0},
    {"question": "one two three", "choices": ["four", "blue", "tree"], "answer": 0},
    {"question": "hello", "choices": ["world", "there", "cat"], "answer": 1},
    {"question": "a b c", "choices": ["d", "e"], "answer": 1},
]

TASK_YAML = """task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two tasks on local files: toy_choice, and toy_missing whose data file is not there (one
    directory for every test, so lm-eval's task index is built once)."""
    root = tmp_path_factory.mktemp("harness")
    tasks = root / "tasks"
    tasks.mkdir()
    data = write_jsonl(root / "toy_choice.jsonl", DOCS)
    (tasks / "toy_choice.yaml").write_text(TASK_YAML.format(data=data))
    missing = TASK_YAML.format(data=root / "not_here.jsonl").replace("task: toy_choice", "task: toy_missing")
    (tasks / "toy_missing.yaml").write_text(missing)
    return tasks


@pytest.fixture
def adapter_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A LoRA adapter on the tiny model with non-zero B, so the adapter changes every score."""
    from peft import LoraConfig, get_peft_model

    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model, load_tokenizer

    base = ModelConfig(path=str(tiny_model_dir))
    model = get_peft_model(load_model(base, torch.float32), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    out = tmp_path / "adapter"
    model.save_pretrained(str(out))
    load_tokenizer(base).save_pretrained(str(out))
    return out


def _choice_logliks(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log p(choice tokens | context), lm-eval's definition: the continuation is the task's
    target delimiter (a space) and the choice, tokenized after the context as one string."""
    scores = []
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
        assert whole[: len(context_ids)] == context_ids
        with torch.no_grad():
            logps = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        scores.append(sum(logps[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
    return scores


def test_harness_task_scores_an_adapter_as_computed_by_hand(adapter_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", str(adapter_dir), "--harness", "toy_choice", "--harness-include", str(task_dir), "--out", str(out)]
    assert main(args) == EXIT_OK
    figures = json.loads((out / "eval.json").read_text())["results"][0]["metrics"]["harness"]

    model, tokenizer = load_causal_lm(resolve_source(str(adapter_dir)))
    right = []
    for doc in DOCS:
        scores = _choice_logliks(model, tokenizer, f"Q: {doc['question']}\nA:", doc["choices"])
        right.append(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert figures["toy_choice.acc"] == pytest.approx(sum(right) / len(DOCS))
    assert figures["toy_choice.documents"] == len(DOCS)

    rows = [json.loads(line) for line in (out / "harness.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == list(range(len(DOCS)))
    first = _choice_logliks(model, tokenizer, f"Q: {DOCS[0]['question']}\nA:", DOCS[0]["choices"])
    assert [r[0] for r in rows[0]["responses"]] == pytest.approx(first, abs=1e-4)
    with model.disable_adapter():  # the adapter was applied: the base scores differently
        assert _choice_logliks(model, tokenizer, f"Q: {DOCS[0]['question']}\nA:", DOCS[0]["choices"]) != pytest.approx(first)
    assert "harness.toy_choice.acc" in capsys.readouterr().out


def test_unknown_task_is_refused_with_suggestions(tiny_model_dir, task_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--harness", "toy_choise", "--harness-include", str(task_dir)]) == EXIT_USER
    err = capsys.readouterr().err
    assert "--harness: no lm-eval task 'toy_choise'" in err and "did you mean toy_choice" in err


def test_task_without_its_data_is_refused_naming_it(tiny_model_dir, task_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--harness", "toy_missing", "--harness-include", str(task_dir)]) == EXIT_USER
    err = capsys.readouterr().err
    assert "--harness toy_missing: its data could not be loaded on this machine" in err
    assert "--harness-include" in err and "Traceback" not in err


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(UserError, match=r"pip install 'llmft\[harness\]'"):
        task_manager(HarnessOptions(("toy_choice",)))


def test_metrics_without_data_is_refused(tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--harness", "toy_choice", "--metrics", "lm"]) == EXIT_USER
    assert "--metrics measures held-out data" in capsys.readouterr().err
