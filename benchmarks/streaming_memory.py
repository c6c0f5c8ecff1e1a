"""Peak memory of a `data.streaming: true` pt run on two corpus sizes: it must not grow with the corpus.

    python benchmarks/streaming_memory.py [--sizes-mb 20 200] [--steps 20]

Builds the tiny test model (tests/tiny.py) and two plain-text corpora in a temporary directory, then,
for each corpus in a fresh process: trains `--steps` LoRA steps with `data.streaming: true`, and
afterwards reads the whole stream once more exactly as the trainer consumes it (every line read,
tokenized and cut into `max_length` blocks), so the whole corpus has passed through the pipeline.
Prints the process's peak resident memory (ru_maxrss) for each size, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCE = (
    "the a model data stream token memory corpus learns reads every line block text of to and in is that it "
    "for on with as was at by this from be are which or has have an not they their more some time"
)
WORDS = SENTENCE.split()


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = megabytes << 20
    written = 0
    with open(path, "w") as handle:
        while written < target:
            lines = [" ".join(rng.choices(WORDS, k=rng.randint(8, 40))) + ".\n" for _ in range(2000)]
            chunk = "".join(lines)
            handle.write(chunk)
            written += len(chunk)


def child(recipe_path: str) -> None:
    """One corpus in this process: train, then one full pass over the stream; print JSON."""
    sys.path.insert(0, str(REPO))
    from llmft.config import load_recipe
    from llmft.data.streaming import StreamedTrain
    from llmft.modeling.load import prepare_tokenizer
    from llmft.run import train

    recipe = load_recipe(recipe_path, [])
    started = time.perf_counter()
    train(recipe)
    after_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream = StreamedTrain("pt", recipe.data, prepare_tokenizer(recipe), recipe.training.seed)
    blocks = tokens = 0
    for example in stream:
        blocks += 1
        tokens += len(example["input_ids"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "peak_rss_mib": peak / 1024,
                "peak_rss_after_training_mib": after_train / 1024,
                "records": stream.sources[0].read,
                "blocks": blocks,
                "tokens": tokens,
                "seconds": time.perf_counter() - started,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs=2, default=[20, 200])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from tiny import save_tiny_model

    results = {}
    with tempfile.TemporaryDirectory(prefix="llmft-streaming-") as tmp:
        root = Path(tmp)
        model = save_tiny_model(root / "model")
        for size in args.sizes_mb:
            corpus = root / f"corpus-{size}mb.txt"
            write_corpus(corpus, size)
            recipe = {
                "model": {"path": str(model)},
                "data": {"train": str(corpus), "max_length": 128, "streaming": True},
                "finetune": {"mode": "lora", "rank": 4, "alpha": 8},
                "stage": {"name": "pt"},
                "training": {
                    "max_steps": args.steps,
                    "micro_batch_size": 8,
                    "precision": "fp32",
                    "logging_steps": args.steps,
                    "save_strategy": "no",
                    "report_to": [],
                },
                "output": {"dir": str(root / f"run-{size}")},
            }
            recipe_path = root / f"recipe-{size}.yaml"
            recipe_path.write_text(yaml.safe_dump(recipe))
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(recipe_path)],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
            )
            if done.returncode:
                sys.exit(f"corpus {size} MB failed:\n{done.stderr[-4000:]}")
            results[size] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[size]
            print(
                f"{size:>5} MB corpus: peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"(after {args.steps} training steps: {r['peak_rss_after_training_mib']:.0f} MiB); "
                f"{r['records']:,} records -> {r['blocks']:,} blocks, {r['tokens']:,} tokens streamed; {r['seconds']:.0f} s"
            )
    small, large = (results[s]["peak_rss_mib"] for s in args.sizes_mb)
    growth = args.sizes_mb[1] / args.sizes_mb[0]
    print(f"peak RSS ratio {large / small:.2f} for a corpus {growth:g}x larger")


if __name__ == "__main__":
    main()
