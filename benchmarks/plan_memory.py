"""`llmft plan` against measured CPU peak memory.

Each case trains three steps in a fresh process (started as `llmft train` starts: with tcmalloc
preloaded where installed, per `training.allocator`) and reads the kernel's own counters
(/proc/self/status: VmRSS now, VmHWM the peak): the resident size just before the model is loaded
(the baseline: interpreter, torch/transformers/peft/trl, tokenizer, data) and the peak over the
whole run. `--mmap` measures each case again with glibc told to return freed memory at once
(MALLOC_MMAP_THRESHOLD_), which makes the peak that of the live tensors. The plan (`plan_recipe`,
device cpu) is compared with both.

    .venv/bin/python benchmarks/plan_memory.py --mmap             # every case (~40 minutes on 2 cores)
    .venv/bin/python benchmarks/plan_memory.py --case quickstart-lora

Prints a table on stdout and each case's full record (measurements and plan) as JSON on stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"

#: name -> (recipe, overrides). "tiny" is the test model of tests/tiny.py; "long" is the quickstart
#: recipe on synthetic conversations longer than max_length, so every micro-batch is full.
CASES = {
    "tiny-lora": ("tiny", []),
    "tiny-full": ("tiny-full", []),
    "quickstart-lora": ("quickstart", []),
    "long-lora": ("long", []),
    "long-lora-unchunked": ("long", ["training.chunked_loss=false"]),
    "long-lora-checkpointing": ("long", ["training.gradient_checkpointing=true"]),
    "long-full": ("long-full", []),
}
#: glibc's heap otherwise keeps freed activation memory (see docs/plan.md); with this environment
#: the peak resident size is close to the live tensors.
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
LONG = ["data.max_length=512", "training.micro_batch_size=4", "data.cache=false"]


def status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(recipe_path: str, overrides: list[str]) -> None:
    """Train in this process with probes; print one JSON line."""
    import llmft.modeling.load as load
    from llmft.config import load_recipe
    from llmft.run import train

    marks: dict[str, dict[str, int]] = {}
    original = load.load_model

    def probed(*args, **kwargs):
        marks["before_model"] = status()
        model = original(*args, **kwargs)
        marks["after_model"] = status()
        return model

    load.load_model = probed
    recipe = load_recipe(recipe_path, overrides)
    from llmft.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc(recipe.training)  # as `llmft train` starts (training.allocator)
    result = train(recipe)
    marks["end"] = status()
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    print("PLAN_MEMORY " + json.dumps({"marks": marks, "losses": losses}))


def _tiny_recipe(directory: Path, mode: str = "lora") -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import save_tiny_model

    model_dir = save_tiny_model(directory / "model")
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Answer " * (i + 3)}]}
        for i in range(16)
    ]
    data = directory / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = directory / "tiny.yaml"
    recipe.write_text(
        f"model: {{path: {model_dir}}}\n"
        f"data: {{train: {data}, max_length: 64, cache: false}}\n"
        + ("finetune: {mode: lora, rank: 4, alpha: 8, dropout: 0.0}\n" if mode == "lora" else "finetune: {mode: full}\n")
        + "stage: {name: sft}\n"
        "training: {max_steps: 3, micro_batch_size: 2, report_to: [], save_strategy: 'no', logging_steps: 1}\n"
        f"output: {{dir: {directory / 'out'}}}\n"
    )
    return recipe


def _long_data(directory: Path) -> Path:
    words = [
        "the",
        "quiet",
        "river",
        "carried",
        "small",
        "boats",
        "past",
        "old",
        "stone",
        "bridges",
        "while",
        "people",
        "watched",
    ]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Tell story number {i}."},
                {"role": "assistant", "content": " ".join(words[(i + j) % len(words)] for j in range(900))},
            ]
        }
        for i in range(16)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _full_recipe(directory: Path) -> Path:
    """The quickstart recipe with `finetune: {mode: full}` (an override cannot remove the LoRA keys)."""
    import yaml

    from llmft.config.loader import load_raw

    raw = load_raw(QUICKSTART)
    raw["finetune"] = {"mode": "full"}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "quickstart-full.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def case_recipe(name: str, workdir: Path, extra: list[str]) -> tuple[Path, list[str]]:
    which, overrides = CASES[name]
    if which.startswith("tiny"):
        recipe = _tiny_recipe(workdir / name, "full" if which == "tiny-full" else "lora")
    else:
        recipe = _full_recipe(workdir / name) if which == "long-full" else QUICKSTART
    if which.startswith("long"):
        overrides = [*LONG, f"data.train={_long_data(workdir)}", *overrides]
    return recipe, [*overrides, "training.max_steps=3", f"output.dir={workdir / name / 'out-run'}", *extra]


def measure(recipe: Path, overrides: list[str], mmap: bool) -> dict:
    import os

    code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import plan_memory; plan_memory.child({str(recipe)!r}, {overrides!r})"
    env = {**os.environ, **(MMAP_ENV if mmap else {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PLAN_MEMORY ")), None)
    if line is None:
        raise RuntimeError(f"{recipe} {overrides} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("PLAN_MEMORY "))


def run_case(name: str, extra: list[str], workdir: Path, mmap: bool) -> dict:
    from llmft.config import load_recipe
    from llmft.plan import plan_recipe

    recipe, overrides = case_recipe(name, workdir, extra)
    result = {"case": name, "overrides": overrides, "default": measure(recipe, overrides, mmap=False)}
    if mmap:
        result["mmap"] = measure(recipe, [*overrides, f"output.dir={workdir / name / 'out-run-mmap'}"], mmap=True)
    result["plan"] = plan_recipe(load_recipe(recipe, overrides), count_data=True, device="cpu").to_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--mmap", action="store_true", help=f"also measure each case with {MMAP_ENV} (live tensors)")
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides for every case")
    args = parser.parse_args()
    mib = 1 << 20
    print(f"{'case':<26} {'baseline':>8} {'peak':>7} {'peak*':>7} {'plan':>7} {'err':>6} {'err*':>6}   MiB; * = {MMAP_ENV}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.case or list(CASES):
            r = run_case(name, args.overrides, Path(tmp), args.mmap)
            print(json.dumps(r), file=sys.stderr)
            marks = r["default"]["marks"]
            peak = marks["end"]["VmHWM"]
            live = r["mmap"]["marks"]["end"]["VmHWM"] if "mmap" in r else None
            plan = r["plan"]["per_device_bytes"]
            print(
                f"{name:<26} {marks['before_model']['VmRSS'] / mib:8.0f} {peak / mib:7.0f} "
                f"{(live or 0) / mib:7.0f} {plan / mib:7.0f} {100 * (plan - peak) / peak:+5.0f}% "
                + (f"{100 * (plan - live) / live:+5.0f}%" if live else "     -"),
                flush=True,
            )


if __name__ == "__main__":
    main()
