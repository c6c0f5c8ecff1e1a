"""One generation worker behind a bounded queue. A model is not safe to call from several threads,
so one thread runs every request in turn; requests wait in a queue of at most `max_queue` (beyond
that `submit` refuses at once, which the server answers with HTTP 503). Each job reports back
through `emit`, called on the worker thread: text deltas as tokens come (streamed requests), then
the finished answer or the error."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmft.evaluation.generation import Generated, cut_at_stop, generate_one

log = logging.getLogger("llmft")


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    result: Generated


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Done | Failed


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    emit: Callable[[Event], None]
    stream: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


class TextDeltas:
    """The text of a growing answer, handed out in pieces whose concatenation is the final text:
    held back while it might still turn into a stop string, or ends inside a multi-byte character."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.sent = ""

    def update(self, ids: list[int]) -> str:
        text, cut = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), self.stop)
        if not cut:
            text = self._safe(text)
        return self.final(text)

    def final(self, text: str) -> str:
        """What of `text` is not sent yet."""
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def _safe(self, text: str) -> str:
        text = text.rstrip("\ufffd")  # an incomplete UTF-8 character so far
        for k in range(max((len(s) for s in self.stop), default=1) - 1, 0, -1):
            if any(text.endswith(s[:k]) for s in self.stop if len(s) > k):
                return text[:-k]
        return text


class Worker:
    def __init__(self, model: Any, tokenizer: Any, max_queue: int):
        self.model = model
        self.tokenizer = tokenizer
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.busy = threading.Event()  # set while a job runs
        self.thread = threading.Thread(target=self._loop, name="llmft-serve-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)  # waits for room: jobs still queued are answered first
        self.thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the server is busy: {self.jobs.maxsize} requests are already waiting; retry later") from None

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.busy.set()
            try:
                if not job.cancelled.is_set():
                    self.run(job)
            except Exception as exc:  # the request fails, the server goes on
                log.exception("serve: generation failed")
                job.emit(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.busy.clear()

    def run(self, job: Job) -> None:
        deltas = TextDeltas(self.tokenizer, job.stop)

        def on_token(ids: list[int]) -> bool:
            if job.stream:
                piece = deltas.update(ids)
                if piece:
                    job.emit(Delta(piece))
            return job.cancelled.is_set()

        result = generate_one(
            self.model,
            self.tokenizer,
            job.prompt,
            job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            stop=job.stop,
            on_token=on_token,
        )
        if job.stream:
            rest = deltas.final(result.text)
            if rest:
                job.emit(Delta(rest))
        job.emit(Done(result))
