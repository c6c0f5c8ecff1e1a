"""`llmft serve` driven by the official `openai` client: a tiny trained run served in-process on
loopback (uvicorn in a thread), answering chat and plain completions, streamed and not; concurrent
requests all answered; malformed requests refused with HTTP 400 (the server healthy after each);
a full queue refused with 503."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn
from conftest import CONVERSATIONS, make_recipe, write_jsonl

from llmft.config import validate_recipe
from llmft.run import train
from llmft.serve.app import create_app
from llmft.serve.server import load_app

HELLO = [{"role": "user", "content": "Hello! How are you today?"}]


class Running:
    """A uvicorn server for `app` in a thread, on a free loopback port."""

    def __init__(self, app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", **kwargs)

    def healthy(self) -> bool:
        return httpx.get(self.url + "/health").json()["status"] == "ok"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    data = write_jsonl(tmp / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, data, out, data={"template": "chatml"}, training={"max_steps": 3})))
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    running = Running(load_app(str(run_dir), max_queue=32))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server):
    return server.client(max_retries=0)


def test_models_and_health(server, client, run_dir):
    assert [m.id for m in client.models.list().data] == [str(run_dir)]
    assert server.healthy()


def test_chat_answer_with_usage_and_finish_reason(client, run_dir):
    reply = client.chat.completions.create(model=str(run_dir), messages=HELLO, max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens > 5  # the rendered template, not just the user's words
    long = client.chat.completions.create(model=str(run_dir), messages=HELLO, max_tokens=1, temperature=0)
    assert long.usage.completion_tokens == 1
    assert long.choices[0].finish_reason == ("stop" if long.choices[0].message.content == "" else "length")


def test_stream_equals_the_plain_answer_under_greedy(client, run_dir):
    asked = dict(model=str(run_dir), messages=HELLO, max_tokens=8, temperature=0)
    plain = client.chat.completions.create(**asked)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **asked))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_raw_stream_ends_with_done(server, run_dir):
    body = {"model": str(run_dir), "messages": HELLO, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_string_cuts_the_answer(client, run_dir):
    asked = dict(model=str(run_dir), messages=HELLO, max_tokens=8, temperature=0)
    full = client.chat.completions.create(**asked).choices[0].message.content
    if len(full) < 2:
        pytest.skip("the tiny run answered too little to cut")
    stop = full[1:3]
    cut = client.chat.completions.create(stop=[stop], **asked).choices[0]
    assert cut.message.content == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(stop=stop, stream=True, **asked)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content


def test_completions(client, run_dir):
    reply = client.completions.create(model=str(run_dir), prompt="The quick brown", max_tokens=4, temperature=0)
    assert reply.object == "text_completion" and isinstance(reply.choices[0].text, str)
    assert reply.usage.completion_tokens <= 4 and reply.choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(model=str(run_dir), prompt="The quick brown", max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_sampling_with_a_seed_repeats(client, run_dir):
    asked = dict(model=str(run_dir), messages=HELLO, max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    first, second = (client.chat.completions.create(**asked).choices[0].message.content for _ in range(2))
    assert first == second


def test_twenty_concurrent_requests_are_all_answered(client, run_dir):
    def ask(i: int) -> str:
        messages = [{"role": "user", "content": f"Numbers: {i}"}]
        return client.chat.completions.create(model=str(run_dir), messages=messages, max_tokens=3, temperature=0).id

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(ask, range(20)))
    assert len(set(ids)) == 20


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"temperature": -1}, "temperature: Input should be greater than or equal to 0"),
        ({"n": 2}, "n: only n=1 is supported"),
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"top_p": 0}, "top_p: Input should be greater than 0"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": 10**6}, "the model's context is"),
        ({"stop": list("abcde")}, "stop: at most 4 stop strings"),
        ({"temprature": 0.5}, "temprature: unknown field"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
    ],
)
def test_bad_requests_are_400_and_the_server_stays_up(server, run_dir, change, says):
    body = {"model": str(run_dir), "messages": HELLO, "max_tokens": 2, **change}
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    assert server.healthy()


def test_unreadable_json_and_a_wrong_model(server, client, run_dir):
    for raw in (b"{not json", b"[1, 2]", b"\xff"):
        response = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
        assert server.healthy()
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=str(run_dir), messages=HELLO, temperature=-1)
    with pytest.raises(openai.NotFoundError, match="serves"):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    assert server.healthy()


def test_a_full_queue_is_503(server):
    """Queue of 1: one request running (held), one waiting; the third is refused at once."""
    worker = server.server.config.app.state.worker
    running = Running(create_app("tiny", worker.model, worker.tokenizer, max_queue=1))
    held = running.server.config.app.state.worker
    gate, original = threading.Event(), held.run
    held.run = lambda job: (gate.wait(60), original(job))
    client = running.client(max_retries=0)
    ask = lambda: client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2, temperature=0)  # noqa: E731
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(ask)
            _wait(held.busy.is_set)
            second = pool.submit(ask)
            _wait(lambda: held.jobs.qsize() == 1)
            with pytest.raises(openai.APIStatusError) as refused:
                ask()
            assert refused.value.status_code == 503 and "busy" in refused.value.message
            assert running.healthy()
            gate.set()
            assert first.result(timeout=60).choices and second.result(timeout=60).choices
    finally:
        gate.set()
        running.close()


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_missing_packages_name_the_pip_command(monkeypatch):
    import importlib.util

    from llmft.errors import UserError
    from llmft.serve.server import require_packages

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'llmft\[serve\]'"):
        require_packages()


@pytest.mark.usefixtures("restore_process_state")
def test_cli_refuses_an_empty_queue_before_loading(tiny_model_dir, capsys):
    from llmft.cli import main

    assert main(["serve", str(tiny_model_dir), "--max-queue", "0"]) == 2
    assert "--max-queue: must be at least 1 (got 0)" in capsys.readouterr().err
