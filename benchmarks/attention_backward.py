"""Causal attention backward on CPU in bf16: torch's flash kernel vs `llmft.fastpath.causal_spans`.

    python benchmarks/attention_backward.py

Prints, per sequence length, forward+backward time of one example (SmolLM2-135M's shape: 9 query
heads, 3 kv heads, head dim 64) for torch's SDPA and for llmft's kernel (the same flash forward, a
matmul backward), then how much resident memory each adds over 100 distinct lengths (the flash
backward keeps a compiled kernel per length).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmft.fastpath.causal_spans import CausalSpans  # noqa: E402

HEADS, KV_HEADS, DIM = 9, 3, 64


def tensors(length: int):
    q = torch.randn(1, HEADS, length, DIM, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, KV_HEADS, length, DIM, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, KV_HEADS, length, DIM, dtype=torch.bfloat16, requires_grad=True)
    return q, k, v


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum()


def ours(q, k, v):
    return CausalSpans.apply(q, k, v, [(0, q.shape[2], 0, 0)], DIM**-0.5).sum()


def best_ms(fn, length: int, repeats: int = 7) -> float:
    q, k, v = tensors(length)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(q, k, v).backward()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def resident_mb() -> float:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def growth_mb(fn, lengths: range) -> float:
    fn(*tensors(lengths[0] - 1)).backward()
    before = resident_mb()
    for length in lengths:
        fn(*tensors(length)).backward()
    return resident_mb() - before


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, heads {HEADS}/{KV_HEADS}, dim {DIM}")
    print(f"{'length':>6} {'sdpa ms':>8} {'llmft ms':>9} {'ratio':>6}")
    for length in (64, 128, 256, 512, 1024):
        a, b = best_ms(sdpa, length), best_ms(ours, length)
        print(f"{length:>6} {a:>8.2f} {b:>9.2f} {b / a:>6.2f}")
    lengths = range(101, 401, 3)
    print(
        f"resident memory added over {len(lengths)} distinct lengths: llmft {growth_mb(ours, lengths):.0f} MB, "
        f"sdpa {growth_mb(sdpa, lengths):.0f} MB"
    )


if __name__ == "__main__":
    main()
