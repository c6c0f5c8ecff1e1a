"""Merging: the merged model computes what base + adapter computed, and stands alone."""

from __future__ import annotations

import pytest
import torch
from conftest import make_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.cli import main
from llmft.config import validate_recipe
from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.modeling.merge import merge_adapter, probe_ids
from llmft.run import train

pytestmark = pytest.mark.usefixtures("restore_process_state")


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    from conftest import CONVERSATIONS, write_jsonl

    tmp = tmp_path_factory.mktemp("merge")
    data = write_jsonl(tmp / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, data, out, training={"max_steps": 3})))
    return out


def test_merged_model_matches_adapter_and_loads_alone(adapter_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    result = merge_adapter(ModelConfig(path=str(tiny_model_dir)), adapter_run, tmp_path / "merged")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter_run).chat_template
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = PeftModel.from_pretrained(base, str(adapter_run)).eval()
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
        assert not torch.allclose(merged(ids).logits, plain, atol=1e-4), "the adapter changed nothing"
    assert not list((tmp_path / "merged").glob("adapter_*"))


def test_failed_check_writes_nothing(adapter_run, tiny_model_dir, tmp_path, monkeypatch):
    import llmft.modeling.merge as merge_module

    monkeypatch.setattr(merge_module, "TOLERANCE", -1.0)  # any difference at all fails the check
    with pytest.raises(UserError, match="merge check failed"):
        merge_adapter(ModelConfig(path=str(tiny_model_dir)), adapter_run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_merge_defaults_base_from_the_run(adapter_run, tmp_path, capsys):
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "m")]) == 0
    assert "verified: max |logit diff|" in capsys.readouterr().out
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "m")]) == 2  # not empty


def test_merge_adapter_at_the_end_of_a_run(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 1}, output={"merge_adapter": True})))
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    # the merged model is a valid model.path for the next stage
    nxt = make_recipe(out / "merged", sft_file, tmp_path / "next", mode="full", training={"max_steps": 1})
    assert train(validate_recipe(nxt)).log_history
