"""`llmft export`: every GGUF type round-trips through transformers within its tolerance with the
same tokenizer, template and end-of-turn EOS; an adapter run is merged first; --to hf stops at the
end of a turn; unsupported models and types are refused (exit 2); a failed check leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONVERSATIONS, make_recipe, write_jsonl
from tiny import TINY_SIZES, build_model, build_tokenizer, save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.cli import main
from llmft.config import validate_recipe
from llmft.export import gguf_file
from llmft.export.check import PROBES, RELATIVE, render
from llmft.export.gguf_file import GGUF_TYPES
from llmft.run import train

pytestmark = pytest.mark.usefixtures("restore_process_state")


def read_back(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def only_the_export(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("type_name", list(GGUF_TYPES))
def test_every_type_round_trips(tiny_model_dir, tmp_path, type_name, capsys):
    out = tmp_path / f"tiny-{type_name}.gguf"
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out), "--type", type_name]) == 0
    printed = capsys.readouterr().out
    assert f"exported: {out} (verified: max |logit diff|" in printed and "Ollama Modelfile" in printed
    assert only_the_export(tmp_path) == sorted([out.name, out.with_suffix(".Modelfile").name])  # no temporary left
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    exported, exported_tokenizer = read_back(out)
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    assert exported_tokenizer.eos_token == "<|im_end|>" and exported.config.eos_token_id == tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    for conversation in PROBES:
        ids = render(tokenizer, conversation)
        assert render(exported_tokenizer, conversation) == ids
        ours, theirs = logits(source, ids), logits(exported, ids)
        diff = (ours - theirs).abs().max().item()
        if RELATIVE[type_name] is None:
            assert diff == 0.0  # f32: the same weights
        else:
            assert 0 < diff <= RELATIVE[type_name] * ours.abs().max().item()
        assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


def test_file_sizes_follow_the_type(tiny_model_dir, tmp_path):
    sizes = {}
    for type_name in ("f32", "q8_0"):
        out = tmp_path / f"{type_name}.gguf"
        assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out), "--type", type_name]) == 0
        sizes[type_name] = out.stat().st_size
    assert sizes["q8_0"] < sizes["f32"] / 2


@pytest.mark.parametrize(
    "model_type",
    ["qwen2", "qwen3", "mistral"],
)
def test_other_families_round_trip(tmp_path, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    extra = {"head_dim": 128} if model_type == "qwen3" else {}  # transformers reads a qwen3 GGUF's head_dim as 128
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        **TINY_SIZES,
        tie_word_embeddings=model_type == "qwen2",
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )
    torch.manual_seed(0)
    directory = tmp_path / f"tiny-{model_type}"
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    out = tmp_path / "out" / "model.gguf"
    assert main(["export", str(directory), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 0
    exported, _ = read_back(out)
    source = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = render(tokenizer, PROBES[1])
    assert torch.equal(logits(source, ids), logits(exported, ids))
    if config.tie_word_embeddings:  # --to hf keeps the tie: the embedding is saved once
        from safetensors import safe_open

        assert main(["export", str(directory), "--to", "hf", "--out", str(tmp_path / "hf"), "--type", "bf16"]) == 0
        with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as saved:
            names = set(saved.keys())
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-run")
    data = write_jsonl(tmp / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, data, out, training={"max_steps": 3})))
    return out


def test_an_adapter_run_is_merged_first(adapter_run, tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "run.gguf"
    assert main(["export", str(adapter_run), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 0
    assert "merged the adapter first" in capsys.readouterr().err
    exported, exported_tokenizer = read_back(out)
    tokenizer = AutoTokenizer.from_pretrained(adapter_run)
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_run)).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = render(tokenizer, PROBES[0])
    assert torch.allclose(logits(exported, ids), logits(reference, ids), atol=1e-4)
    assert not torch.allclose(logits(exported, ids), logits(plain, ids), atol=1e-3), "the adapter was left out"
    assert only_the_export(tmp_path) == ["run.Modelfile", "run.gguf"]


def stop_at_once_model(directory: Path) -> Path:
    """The tiny model made to answer <|im_end|> first, with <|endoftext|> as its tokenizer's EOS: only
    a generation config that stops at the template's end of turn makes `generate` stop there."""
    save_tiny_model(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream is the embedding alone
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # one positive feature on every token
        model.lm_head.weight.zero_()
        model.lm_head.weight[end, 0] = 10.0
    tokenizer.eos_token = "<|endoftext|>"
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hf_export_stops_at_the_end_of_a_turn(tmp_path):
    source = stop_at_once_model(tmp_path / "source")
    out = tmp_path / "hf"
    assert main(["export", str(source), "--to", "hf", "--out", str(out), "--type", "bf16"]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("adapter_*"))
    end = AutoTokenizer.from_pretrained(source).convert_tokens_to_ids("<|im_end|>")
    saved = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert end in (saved if isinstance(saved, list) else [saved])
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    conversation = [{"role": "user", "content": "Hello! How are you today?"}]
    inputs = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert generated.tolist() == [end]  # stopped at <|im_end|>
        before = AutoModelForCausalLM.from_pretrained(source).eval()
        assert len(before.generate(**inputs, max_new_tokens=8, do_sample=False)[0]) > inputs["input_ids"].shape[1] + 1
    rendered = tokenizer.apply_chat_template([*conversation, {"role": "assistant", "content": "Hi"}], tokenize=False)
    assert rendered.endswith("Hi<|im_end|>\n")  # the template closes the turn with the token it stops at


def test_gguf_eos_is_the_end_of_turn_token(tmp_path):
    source = stop_at_once_model(tmp_path / "source")
    out = tmp_path / "m.gguf"
    assert main(["export", str(source), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 0
    _, tokenizer = read_back(out)
    assert tokenizer.eos_token == "<|im_end|>"  # llama.cpp and Ollama stop here
    assert 'PARAMETER stop "<|im_end|>"' in out.with_suffix(".Modelfile").read_text()


def test_unsupported_architecture_and_type_are_refused(tiny_model_dir, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    out = tmp_path / "out.gguf"
    assert main(["export", str(gpt2), "--to", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model type 'gpt2' cannot be written as GGUF" in err and "llama" in err and "qwen2" in err and "Traceback" not in err
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out), "--type", "q4_k"]) == 2
    assert "--type: 'q4_k' is not a type --to gguf writes; choose one of f32, f16, bf16, q8_0" in capsys.readouterr().err
    assert main(["export", str(tiny_model_dir), "--to", "hf", "--out", str(out), "--type", "q8_0"]) == 2
    assert "choose one of f32, f16, bf16" in capsys.readouterr().err
    scaled = tmp_path / "scaled"
    save_tiny_model(scaled, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert main(["export", str(scaled), "--to", "gguf", "--out", str(out)]) == 2
    assert "RoPE scaling (linear)" in capsys.readouterr().err
    out.touch()
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "out.gguf", "scaled"]


def test_a_failed_check_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gguf_file, "permute_rows", lambda weights, heads: weights)  # llama's q/k layout forgotten
    out = tmp_path / "out" / "m.gguf"
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 2
    err = capsys.readouterr().err
    assert "export check failed" in err and "max |logit diff|" in err and f"nothing was written to {out}" in err
    assert list(out.parent.iterdir()) == []  # neither the file, a Modelfile nor the temporary directory


def test_a_tokenizer_that_reads_back_differently_fails(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from llmft.export import vocab

    real = vocab.gguf_vocab

    def swapped(*args, **kwargs):  # two tokens trade places in the file
        written = real(*args, **kwargs)
        a, b = written.tokens.index("e"), written.tokens.index("a")
        written.tokens[a], written.tokens[b] = written.tokens[b], written.tokens[a]
        return written

    monkeypatch.setattr("llmft.export.run.gguf_vocab", swapped)
    out = tmp_path / "m.gguf"
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 2
    err = capsys.readouterr().err
    assert "other ids" in err and not out.exists() and list(tmp_path.iterdir()) == []


def test_a_tokenizer_that_adds_bos_round_trips(tmp_path):
    """As Llama 3's does (a post-processor puts BOS first): the GGUF says so and the reader adds it too."""
    from tokenizers import processors

    tokenizer = build_tokenizer(extra_special=["<|begin|>"])
    tokenizer.bos_token = "<|begin|>"
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A <|begin|> $B", special_tokens=[("<|begin|>", bos)]
    )
    build_model(len(tokenizer)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "m.gguf"
    assert main(["export", str(tmp_path / "m"), "--to", "gguf", "--out", str(out), "--type", "f32"]) == 0
    _, exported_tokenizer = read_back(out)
    assert exported_tokenizer("hi")["input_ids"][0] == bos and exported_tokenizer.bos_token == "<|begin|>"
