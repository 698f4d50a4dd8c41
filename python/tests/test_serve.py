"""`warp-bitnet serve` through the official `openai` client, on 127.0.0.1 only.

The server runs a tiny random BitNet model saved by transformers (`save_pretrained` of a tiny
BitNetConfig) with a byte-level BPE tokenizer trained for it (examples/tiny_model.py), started by these tests
from the release binary (built with `cargo build --release -p warp-bitnet-cli` if missing).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

# The GPU host's image has no openai client; CI installs it (scripts/test.sh).
openai = pytest.importorskip("openai")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLOTS = 4
WIDE_SLOTS = 64
CONTEXT = 128
QUEUE = 8
NAME = "tiny"


@pytest.fixture(scope="module")
def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("WARP_BITNET_BIN", ROOT / "target" / "release" / "warp-bitnet"))
    if "WARP_BITNET_BIN" not in os.environ:
        # Cheap when up to date; makes the test run from a fresh checkout.
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "warp-bitnet-cli"], cwd=ROOT, check=True)
    assert path.is_file(), f"no server binary at {path}"
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    spec = importlib.util.spec_from_file_location("tiny_model", ROOT / "examples" / "tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_model(tmp_path_factory.mktemp("tiny-bitnet"))


class Server:
    """A `warp-bitnet serve` process on a free loopback port."""

    def __init__(self, binary: pathlib.Path, model: pathlib.Path, *extra: str) -> None:
        args = [str(binary), "serve", str(model), "--port", "0", "--model-name", NAME, "--threads", "1", *extra]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.proc.wait(timeout=30)
            raise AssertionError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = match.group(1)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=60)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == name:
                return float(parts[1])
        raise AssertionError(f"no metric {name}")

    def rss_kib(self) -> int:
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def server(binary: pathlib.Path, tiny_model: pathlib.Path):
    s = Server(
        binary,
        tiny_model,
        *("--max-batch", str(SLOTS), "--max-context", str(CONTEXT), "--max-queue", str(QUEUE)),
        *("--prefill-chunk", "16", "--max-body-bytes", str(512 * 1024)),
    )
    yield s
    assert s.stop() == 0


def greedy(server: Server, prompt: str | list[int], n: int, **kw) -> openai.types.Completion:
    return server.client.completions.create(
        model=NAME, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True}, **kw
    )


def test_completion_and_usage(server: Server, tiny_model: pathlib.Path) -> None:
    from tokenizers import Tokenizer

    r = greedy(server, "hello world", 12)
    assert r.object == "text_completion" and r.model == NAME
    assert isinstance(r.choices[0].text, str) and r.choices[0].finish_reason == "length"
    prompt_ids = Tokenizer.from_file(str(tiny_model / "tokenizer.json")).encode("hello world").ids
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == len(prompt_ids) + 12
    # The same prompt as token ids gives the same text.
    assert greedy(server, prompt_ids, 12).choices[0].text == r.choices[0].text


def test_chat(server: Server) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    r = server.client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5


def test_streaming_joins_to_the_same_text(server: Server) -> None:
    whole = greedy(server, "the quick brown", 30).choices[0].text
    chunks = list(greedy(server, "the quick brown", 30, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    messages = [{"role": "user", "content": "hi"}]
    stream = server.client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=20, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = server.client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)
    assert text == whole.choices[0].message.content


def test_stop_strings(server: Server) -> None:
    text = greedy(server, "hello", 60).choices[0].text
    assert len(text) > 10, text
    stop = text[5:8]
    r = greedy(server, "hello", 60, stop=[stop])
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = greedy(server, "hello", 60, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_same_seed_same_text(server: Server) -> None:
    def sample(seed: int) -> str:
        r = server.client.completions.create(
            model=NAME, prompt="the lazy", max_tokens=40, temperature=1.0, seed=seed, extra_body={"ignore_eos": True}
        )
        return r.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        a, b, c = pool.map(sample, [11, 11, 12])
    assert a == b
    assert a != c


def test_batched_greedy_equals_each_request_alone(server: Server) -> None:
    prompts = ["hello", "the quick brown fox", "naïve café ✓", "lazy dog " * 6, "w", "jumps over"]
    alone = [greedy(server, p, 24).choices[0].text for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        batched = list(pool.map(lambda p: greedy(server, p, 24).choices[0].text, prompts))
    assert batched == alone


def check_error(status: int, body: dict, expected_status: int | tuple[int, ...]) -> dict:
    expected = expected_status if isinstance(expected_status, tuple) else (expected_status,)
    assert status in expected, (status, body)
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and "param" in error and "code" in error
    return error


def test_bad_input_gets_openai_errors(server: Server) -> None:
    c = server.client
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=NAME, prompt="hello", max_tokens=CONTEXT)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=NAME, prompt="", max_tokens=2)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=NAME, prompt="the quick brown fox " * 40, max_tokens=2)
    assert e.value.body["param"] == "prompt" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=NAME, messages=[], max_tokens=2)
    assert e.value.body["param"] == "messages"

    check_error(*server.post("/v1/completions", b'{"model": "tiny", "prompt": '), 400)
    err = check_error(*server.post("/v1/completions", b'{"model": "tiny", "prompt": "x", "max_tokens": "9"}'), 400)
    assert err["param"] == "max_tokens"
    err = check_error(*server.post("/v1/completions", b'{"model": "tiny", "prompt": 5}'), 400)
    assert err["param"] == "prompt"
    err = check_error(*server.post("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": 1}]}'), 400)
    assert err["param"].startswith("messages[0]")
    # 1 MB of garbage: over this server's 512 KiB body limit.
    garbage = os.urandom(1_000_000)
    check_error(*server.post("/v1/completions", garbage, "application/octet-stream"), 413)
    # Under the limit but not JSON.
    check_error(*server.post("/v1/completions", garbage[:200_000]), 400)
    # Still serving.
    assert greedy(server, "hello", 3).usage.completion_tokens == 3


def wait_for_idle(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.metric("warp_bitnet_slots_in_use") != 0 or server.metric("warp_bitnet_queue_length") != 0:
        assert time.monotonic() < deadline, server.get("/metrics")[1]
        time.sleep(0.02)


def test_client_disconnect_mid_stream_frees_its_slot(server: Server) -> None:
    cancelled = (
        server.metric('warp_bitnet_requests_finished_total{reason="cancelled"}') if _has_cancelled(server) else 0
    )
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": NAME, "prompt": "hello", "max_tokens": 100, "stream": True, "ignore_eos": True, "temperature": 0}
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")
    wait_for_idle(server)
    # Either it finished before the hang-up was seen, or it was cancelled; no slot is held.
    assert server.metric('warp_bitnet_requests_finished_total{reason="cancelled"}') >= cancelled


def _has_cancelled(server: Server) -> bool:
    return 'reason="cancelled"' in server.get("/metrics")[1]


@pytest.fixture(scope="module")
def wide_server(binary: pathlib.Path, tiny_model: pathlib.Path):
    """The issue's storm setting: 64 slots and a queue of 64, so that 200 clients overflow both."""
    s = Server(
        binary,
        tiny_model,
        *("--max-batch", str(WIDE_SLOTS), "--max-context", str(CONTEXT), "--max-queue", str(WIDE_SLOTS)),
    )
    yield s
    assert s.stop() == 0


def test_200_concurrent_connections_on_a_64_slot_server(wide_server: Server) -> None:
    server = wide_server
    assert server.metric("warp_bitnet_slots") == WIDE_SLOTS
    rss_before = server.rss_kib()

    def one(i: int) -> tuple[int, dict]:
        body = {"model": NAME, "prompt": f"request {i}", "max_tokens": 8, "ignore_eos": True, "stream": i % 2 == 0}
        req = urllib.request.Request(
            server.url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read().decode()
                return r.status, (json.loads(raw) if i % 2 else {"sse": raw})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    ok = [b for s, b in results if s == 200]
    refused = [check_error(s, b, 429) for s, b in results if s != 200]
    assert len(ok) + len(refused) == 200
    assert len(ok) >= WIDE_SLOTS and all(e["code"] == "queue_full" for e in refused)
    for body in ok:
        if "sse" in body:
            assert body["sse"].rstrip().endswith("data: [DONE]")
        else:
            assert body["usage"]["completion_tokens"] == 8
    wait_for_idle(server)
    assert server.get("/health") == (200, '{"status":"ok"}')
    # Bounded memory: 200 requests leave no lasting growth beyond allocator noise.
    assert server.rss_kib() - rss_before < 64 * 1024


def test_models_health_metrics(server: Server) -> None:
    models = server.client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert server.get("/health") == (200, '{"status":"ok"}')
    assert server.metric("warp_bitnet_slots") == SLOTS
    before = server.metric("warp_bitnet_generation_tokens_total")
    greedy(server, "count me", 3)
    assert server.metric("warp_bitnet_generation_tokens_total") == before + 3
    assert server.metric("warp_bitnet_time_to_first_token_seconds_count") > 0


def test_small_load_test(server: Server, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(ROOT / "examples" / "load_test.py"), "--url", server.url, "--model", NAME]
    cmd += ["--concurrency", "1", "4", "--requests-per-stream", "2", "--prompt-tokens", "16", "--max-tokens", "24"]
    cmd += ["--vocab", "300", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["errors"] == 0 and r["completion_tokens"] == r["requests"] * 24
        assert r["tokens_per_s"] > 0 and r["ttft_p50_ms"] > 0 and r["itl_p99_ms"] >= r["itl_p50_ms"]
        assert 0 < r["server_itl_p50_ms"] <= r["server_itl_p99_ms"] and r["server_ttft_p50_ms"] > 0


def test_sigterm_with_a_stream_in_flight_exits_0(binary: pathlib.Path, tiny_model: pathlib.Path) -> None:
    s = Server(binary, tiny_model, "--max-batch", "2", "--max-context", "256", "--shutdown-grace", "0.5")
    stream = s.client.completions.create(
        model=NAME, prompt="hello", max_tokens=250, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    started = time.monotonic()
    assert s.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    # The stream ended, finished or cancelled, and the port is closed.
    try:
        for _ in stream:
            pass
    except openai.APIError:
        pass
    host, port = s.url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)
