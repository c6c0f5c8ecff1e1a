"""The merge check on SmolLM2-135M-Instruct: how far a correct merge's logits drift from base + adapter
(fp32 rounding) against what a broken merge looks like, the numbers `llmft.modeling.merge` derives
its tolerance from.

Two adapters, trained here unless their run directories exist: `pt` (recipes/medicalgpt/pt.yaml,
10 steps of LoRA rank 8 on every linear layer, max_length 256, on ../shared/data/pt/wiki_demo.txt)
and `sft` (recipes/quickstart.yaml, 10 steps, rank 16). For each, on the merge probe:

- a correct merge, checked in float64 as `llmft merge` checks it: max |diff|, the logit scale,
  top-1 agreement, the tolerance and the verdict; and the same merge in fp32 (the check before,
  with its fixed 1e-4), for reference;
- broken merges, in float64, against the correct base + adapter: every LoRA B doubled (the adapter
  folded in twice), and each LoRA B zeroed in turn (one layer left out of the merge; the smallest,
  median and largest effect over all layers, and how many the check would let through).

    .venv/bin/python benchmarks/merge_check.py [--runs DIR] [--only pt|sft] [--sample N]

Prints one table row per adapter and the full record as JSON on stderr. The two trainings take
several minutes each on 2 CPU cores, and zeroing each of the 210 LoRA B matrices (a forward pass
each) longer still: `--sample 21` zeroes every tenth only.

Results (2 CPU cores; the pt sweep over all 210 B matrices was run in fp32, the sampled ones in
float64) are in the docstring of `llmft/modeling/merge.py` and in docs/chain.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RUNS = {
    "pt": (
        "recipes/medicalgpt/pt.yaml",
        ["training.max_steps=10", "training.micro_batch_size=2", "finetune.target_modules=all-linear"],
    ),
    "sft": ("recipes/quickstart.yaml", [f"data.train={REPO / 'examples/data/identity.jsonl'}", "training.max_steps=10"]),
}


def train_run(name: str, out: Path) -> None:
    from llmft.config import load_recipe
    from llmft.run import train

    os.environ.setdefault("LLMFT_SAMPLE_DATA", str(REPO.parent / "shared" / "data"))
    recipe, overrides = RUNS[name]
    common = [f"output.dir={out}", "output.merge_adapter=false", "training.precision=fp32", "training.logging_steps=5"]
    train(load_recipe(REPO / recipe, [*overrides, *common]))


def loras(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [
        (name, m.lora_B["default"].weight) for name, m in model.named_modules() if hasattr(m, "lora_B") and "default" in m.lora_B
    ]


def measure(adapter: Path, sample: int | None) -> dict:
    from peft import PeftModel

    from llmft.modeling.load import load_model, load_tokenizer
    from llmft.modeling.merge import CHECK_DTYPE, EPS32, compare_logits, probe_ids
    from llmft.rundir import base_of

    base = base_of(adapter)
    tokenizer = load_tokenizer(base.model_copy(update={"tokenizer": str(adapter)}))
    ids = probe_ids(tokenizer)
    loaded = load_model(base, torch.float32, vocab_size=len(tokenizer)).eval()
    record: dict = {"adapter": str(adapter), "base": base.describe(), "probe_tokens": ids.shape[1]}
    with torch.no_grad():
        plain = loaded(ids).logits
        for dtype in (torch.float32, CHECK_DTYPE):  # the check's dtype last: its model is reused below
            model = PeftModel.from_pretrained(copy.deepcopy(loaded).to(dtype), str(adapter)).to(dtype).eval()
            expected = model(ids).logits
            check = compare_logits(expected, copy.deepcopy(model).merge_and_unload()(ids).logits)
            record[str(dtype).removeprefix("torch.")] = {
                "max_abs_diff": check.max_abs_diff,
                "scale": check.scale,
                "in_eps32_x_scale": check.max_abs_diff / (EPS32 * check.scale),
                "top1": f"{check.top1_same}/{check.positions}",
                **({"tolerance": check.tolerance, "passed": check.passed} if dtype == CHECK_DTYPE else {}),
            }
        del loaded
        record["adapter_effect"] = (
            (expected - plain.to(expected.dtype)).abs().max().item()
        )  # how far the adapter moves the logits
        # broken merges, in the check's dtype, against the correct base + adapter: the unmerged forward
        # with B changed computes exactly what a merge that folded the changed B would
        bs = loras(model)
        record["lora_modules"] = len(bs)
        for _, b in bs:
            b.mul_(2)
        broken = compare_logits(expected, model(ids).logits)
        record["adapter_x2"] = {
            "max_abs_diff": broken.max_abs_diff,
            "top1": f"{broken.top1_same}/{broken.positions}",
            "passed": broken.passed,
        }
        for _, b in bs:
            b.div_(2)
        step = max(1, len(bs) // sample) if sample else 1
        zeroed = []
        for name, b in bs[::step]:
            saved = b.clone()
            b.zero_()
            one = compare_logits(expected, model(ids).logits)
            b.copy_(saved)
            zeroed.append({"module": name, "max_abs_diff": one.max_abs_diff, "top1": one.top1_same, "passed": one.passed})
        zeroed.sort(key=lambda z: z["max_abs_diff"])
        record["one_b_zeroed"] = {
            "tried": len(zeroed),
            "passed_the_check": sum(z["passed"] for z in zeroed),
            "smallest": zeroed[0],
            "median": zeroed[len(zeroed) // 2],
            "largest": zeroed[-1],
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/llmft-merge-check"), help="where the two runs are (or go)")
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--sample", type=int, help="zero only about this many LoRA B matrices, evenly spread")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print("| adapter | scale | fp32 diff | fp64 diff | top-1 | tolerance | adapter x2 | one B zeroed: min / median (pass) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in [args.only] if args.only else sorted(RUNS):
        out = args.runs / name
        if not (out / "adapter_model.safetensors").is_file():
            train_run(name, out)
        r = measure(out, args.sample)
        f32, f64, z = r["float32"], r["float64"], r["one_b_zeroed"]
        print(
            f"| {name} | {f64['scale']:.1f} | {f32['max_abs_diff']:.2e} | {f64['max_abs_diff']:.2e} | {f64['top1']} "
            f"| {f64['tolerance']:.2e} | {r['adapter_x2']['max_abs_diff']:.2e} "
            f"| {z['smallest']['max_abs_diff']:.2e} / {z['median']['max_abs_diff']:.2e} ({z['passed_the_check']}/{z['tried']}) |",
            flush=True,
        )
        print(json.dumps(r, indent=1), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
