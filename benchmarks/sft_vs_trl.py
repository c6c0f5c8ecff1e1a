"""SFT throughput and memory: plain TRL `SFTTrainer` vs llmft on the same job, side by side.

    python benchmarks/sft_vs_trl.py                 # issue 6's job (reads ../shared/data), ~10 min on 2 cores
    python benchmarks/sft_vs_trl.py --check-losses  # also: per-token losses at lr 0 (fp32) vs a plain reference
    python benchmarks/sft_vs_trl.py --ablate        # also llmft with each fast-path part off in turn
    python benchmarks/sft_vs_trl.py --quick         # small model built in code, ~1 min: the CI regression guard

Each tool trains in its own process (so peak RSS is its own). The table gives, per tool: the
Trainer's train_runtime (the training loop), time to first step (imports, model load,
preprocessing), non-pad and supervised tokens/s, peak RSS, model-FLOPs utilisation against a matmul
peak measured here, and the logged losses — so speed never comes from training on less data.
Rows: TRL at its defaults, with packing, and with tcmalloc preloaded and the same kernel-cache caps
llmft sets (so the allocator's share of the gain shows; only where tcmalloc is installed), then llmft
as `llmft train` runs it (re-executed with tcmalloc where installed; the run log says which).
`--quick` runs TRL then llmft (a second round each unless llmft is clearly ahead) and exits 1 if
llmft's better run is slower than TRL's better run: the guard `make test` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import ROOT, Job, full_job, quick_job  # noqa: E402
from runners import VARIANTS  # noqa: E402

TOOLS = ("trl", "trl-packed", "trl-tcmalloc", "llmft")


def matmul_peak_gflops(dtype: str, n: int = 1024, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def make_job(args: argparse.Namespace, workdir: Path) -> Job:
    from llmft.modeling.precision import cpu_has_fast_bf16

    precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    return quick_job(workdir, precision) if args.quick else full_job(Path(args.data), precision)


def child(tool: str, args: argparse.Namespace, workdir: Path) -> None:
    import logging

    from runners import run_llmft, run_trl

    if tool != "trl" and tool != "trl-packed":  # llmft, as `llmft train` starts; TRL with the same process settings
        from llmft.allocator import cap_kernel_caches, reexec_with_tcmalloc
        from llmft.config.training import TrainingConfig

        if tool == "trl-tcmalloc":
            cap_kernel_caches()
        reexec_with_tcmalloc(TrainingConfig(**VARIANTS.get(tool, {}).get("training", {})))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("llmft").setLevel(logging.INFO)  # the run log's "path: ..." line

    job = make_job(args, workdir)
    out = workdir / f"{tool}-{args.round}"
    result = run_trl(job, out, packing=tool == "trl-packed") if tool.startswith("trl") else run_llmft(job, out, tool)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["precision"], result["params"] = job.precision, job.params
    (workdir / f"{tool}-{args.round}.json").write_text(json.dumps(result))


def spawn(tool: str, args: argparse.Namespace, workdir: Path, round_: int) -> dict:
    argv = [sys.executable, __file__, f"--child={tool}", "--workdir", str(workdir), "--data", args.data, "--round", str(round_)]
    subprocess.run(
        argv + (["--quick"] if args.quick else []),
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"},
    )
    return json.loads((workdir / f"{tool}-{round_}.json").read_text())


def versions() -> str:
    import peft
    import torch
    import transformers
    import trl

    return (
        f"cores {os.cpu_count()}, {platform.processor() or platform.machine()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}"
    )


def table(results: dict[str, dict]) -> str:
    any_result = next(iter(results.values()))
    dtype = "bfloat16" if any_result["precision"] == "bf16" else "float32"
    peak = matmul_peak_gflops(dtype)
    lines = [
        versions(),
        f"{dtype} matmul peak measured {peak:.0f} GFLOP/s",
        f"{'tool':<14} {'train s':>8} {'1st step s':>10} {'tok/s':>7} {'sup tok/s':>9} {'RSS MB':>7} {'MFU':>6}  losses",
    ]
    for tool, r in results.items():
        tps, sps = r["tokens"] / r["train_s"], r["supervised"] / r["train_s"]
        mfu = tps * 6 * r["params"] / (peak * 1e9)  # 6 x parameters FLOPs per trained token
        losses = " ".join(f"{x:.3f}" for x in r["losses"])
        lines.append(
            f"{tool:<14} {r['train_s']:>8.1f} {r['first_step_s']:>10.1f} {tps:>7.1f} {sps:>9.1f} {r['peak_rss_mb']:>7.0f} {mfu:>6.1%}  {losses}"
        )
    if "trl" in results and "llmft" in results:
        l = results["llmft"]
        for base in ("trl", "trl-packed", "trl-tcmalloc"):
            if base in results:
                b = results[base]
                lines.append(
                    f"llmft / {base}: supervised tokens/s x{(l['supervised'] / l['train_s']) / (b['supervised'] / b['train_s']):.2f}, "
                    f"peak RSS x{l['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
                )
    return "\n".join(lines)


def quick_guard(args: argparse.Namespace, workdir: Path) -> int:
    """TRL then llmft; if llmft is not clearly ahead (x1.3), a second round each and the better runs
    count, so one noisy run on a shared machine neither passes nor fails the guard alone."""
    runs: dict[str, list[dict]] = {"trl": [], "llmft": []}

    def rates() -> dict[str, float]:
        best = {tool: max(rs, key=lambda r: r["supervised"] / r["train_s"]) for tool, rs in runs.items()}
        return {tool: r["supervised"] / r["train_s"] for tool, r in best.items()}

    for round_ in range(2):
        for tool in ("trl", "llmft"):
            runs[tool].append(spawn(tool, args, workdir, round_))
        if rates()["llmft"] >= 1.3 * rates()["trl"]:
            break
    print(table({tool: max(rs, key=lambda r: r["supervised"] / r["train_s"]) for tool, rs in runs.items()}))
    print("train_runtime per run: " + ", ".join(f"{t} {[round(r['train_s'], 2) for r in rs]}" for t, rs in runs.items()))
    rate = rates()
    if rate["llmft"] < rate["trl"]:
        print(
            f"FAIL: llmft trains slower than TRL on the quick job ({rate['llmft']:.0f} vs {rate['trl']:.0f} supervised tokens/s)"
        )
        return 1
    print(f"ok: llmft x{rate['llmft'] / rate['trl']:.2f} TRL's supervised tokens/s on the quick job")
    return 0


def check_losses(args: argparse.Namespace, workdir: Path) -> None:
    from loss_check import compare, llmft_losses, reference_losses

    job = make_job(args, workdir)
    result = compare(reference_losses(job), llmft_losses(job, workdir / "loss-check"))
    print(
        f"per-token losses at lr 0, fp32, on {result['tokens']} tokens both supervise: max |llmft - reference| "
        f"{result['max_abs_diff']:.2e} (only reference: {result['only_reference']}, only llmft: {result['only_llmft']}, "
        f"rows unmatched: {result['unmatched_rows']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sft" / "alpaca_en_demo.json"))
    parser.add_argument(
        "--only",
        choices=TOOLS + tuple(v for v in VARIANTS if v != "llmft"),
        help="one tool or llmft variant (write a variant that starts with - as --only=-tcmalloc)",
    )
    parser.add_argument("--ablate", action="store_true", help="also llmft with each fast-path part off (-chunked_loss, ...)")
    parser.add_argument("--quick", action="store_true", help="small model built in code; exit 1 if llmft is slower than TRL")
    parser.add_argument("--check-losses", action="store_true", help="also compare per-token losses at lr 0 (fp32)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args, Path(args.workdir))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="llmft-bench-"))
    if args.quick:
        status = quick_guard(args, workdir)
    else:
        from llmft.allocator import find_tcmalloc

        tools = [args.only] if args.only else [t for t in TOOLS if t != "trl-tcmalloc" or find_tcmalloc()]
        tools += [v for v in VARIANTS if v != "llmft"] if args.ablate else []
        print(table({tool: spawn(tool, args, workdir, 0) for tool in tools}))
        status = 0
    if args.check_losses:
        check_losses(args, workdir)
    return status


if __name__ == "__main__":
    sys.exit(main())
