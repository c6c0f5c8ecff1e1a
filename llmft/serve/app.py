"""The HTTP side of `llmft serve`: an OpenAI-compatible FastAPI app (POST /v1/chat/completions and
/v1/completions, plain or streamed as server-sent events ending with `data: [DONE]`; GET /v1/models
and /health) in front of one generation `Worker`. Every refusal is an OpenAI-style error body:
400 for a bad request (unreadable JSON, a bad value, a prompt too long), 404 for another model's
name, 503 when the queue is full."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from llmft.evaluation.generation import prompt_ids
from llmft.serve import protocol as p
from llmft.serve.worker import Delta, Done, Event, Failed, Job, QueueFull, Worker

#: Tokens generated when a request names no max_tokens (fewer when the context is shorter).
DEFAULT_MAX_TOKENS = 512


def create_app(model_id: str, model: Any, tokenizer: Any, max_queue: int = 16) -> FastAPI:
    """The app serving `model` as `model_id`; its worker (`app.state.worker`) runs while the app does."""
    worker = Worker(model, tokenizer, max_queue)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="llmft serve", lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(p.error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(p.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "busy": worker.busy.is_set(), "queued": worker.jobs.qsize()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "llmft"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await _parse(request, p.ChatRequest, model_id)
        if isinstance(body, JSONResponse):
            return body
        try:
            prompt = prompt_ids(tokenizer, [m.as_dict() for m in body.messages])
        except Exception as exc:  # the template refuses them (e.g. roles that do not alternate)
            return _bad(f"messages: the model's chat template cannot render them: {exc}", "messages")
        return await _answer(worker, body, prompt, model_id, context, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await _parse(request, p.CompletionRequest, model_id)
        if isinstance(body, JSONResponse):
            return body
        prompt = list(tokenizer(body.text)["input_ids"])
        if not prompt:
            return _bad("prompt: empty", "prompt")
        return await _answer(worker, body, prompt, model_id, context, chat=False)

    return app


def _bad(message: str, param: str | None = None, status: int = 400, code: str | None = None) -> JSONResponse:
    return JSONResponse(p.error_body(message, param=param, code=code), status_code=status)


async def _parse(request: Request, kind: type[p.Sampling], model_id: str) -> Any:
    """The request body as `kind`, or the 400/404 response saying what is wrong with it."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _bad(f"the request body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _bad("the request body must be a JSON object")
    try:
        body = kind.model_validate(data)
    except ValidationError as exc:
        message, param = p.validation_message(exc)
        return _bad(message, param)
    if body.model != model_id:
        return _bad(
            f"model: this server serves {model_id!r}, not {body.model!r} (GET /v1/models lists it)",
            "model",
            status=404,
            code="model_not_found",
        )
    return body


def _token_limit(body: Any, prompt: list[int], context: int | None) -> int | JSONResponse:
    asked = body.token_limit
    if context is None:
        return asked or DEFAULT_MAX_TOKENS
    room = context - len(prompt)
    if room < 1 or (asked is not None and asked > room):
        return _bad(
            f"the model's context is {context} tokens; the prompt has {len(prompt)}"
            + (f" and max_tokens asks for {asked} more" if asked is not None else "")
            + ": shorten the prompt or lower max_tokens",
            "messages" if hasattr(body, "messages") else "prompt",
        )
    return min(asked or DEFAULT_MAX_TOKENS, room)


async def _answer(worker: Worker, body: Any, prompt: list[int], model_id: str, context: int | None, chat: bool) -> Any:
    limit = _token_limit(body, prompt, context)
    if isinstance(limit, JSONResponse):
        return limit
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # called on the worker thread
        with contextlib.suppress(RuntimeError):  # the event loop has closed (the server is shutting down)
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = Job(prompt, limit, body.temperature, body.top_p, body.seed, body.stop_strings, emit, stream=body.stream)
    try:
        worker.submit(job)
    except QueueFull as exc:
        return JSONResponse(p.error_body(str(exc), "server_error", code="queue_full"), status_code=503)
    rid = p.new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        return StreamingResponse(_stream(events, job, body, rid, model_id, chat), media_type="text/event-stream")
    try:
        while not isinstance(event := await events.get(), (Done, Failed)):
            pass
    finally:
        job.cancelled.set()  # the client went away before the answer: the worker skips or stops it
    if isinstance(event, Failed):
        return JSONResponse(p.error_body(event.message, "server_error"), status_code=500)
    result = event.result
    counts = p.usage(result.prompt_tokens, len(result.ids))
    build = p.chat_response if chat else p.completion_response
    return build(rid, model_id, result.text, result.finish_reason, counts)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(events: asyncio.Queue, job: Job, body: Any, rid: str, model_id: str, chat: bool) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            return p.chat_chunk(rid, model_id, {"content": text} if text or finish is None else {}, finish)
        return p.completion_chunk(rid, model_id, text, finish)

    try:
        if chat:
            yield _sse(p.chat_chunk(rid, model_id, {"role": "assistant", "content": ""}))
        while True:
            event = await events.get()
            if isinstance(event, Delta):
                yield _sse(chunk(event.text))
            elif isinstance(event, Done):
                yield _sse(chunk("", event.result.finish_reason))
                if body.include_usage:
                    counts = p.usage(event.result.prompt_tokens, len(event.result.ids))
                    yield _sse(p.usage_chunk(rid, model_id, "chat.completion.chunk" if chat else "text_completion", counts))
                break
            else:
                yield _sse(p.error_body(event.message, "server_error"))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()
