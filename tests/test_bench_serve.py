"""`ember bench serve`: percentiles, prompts, arrivals, the SSE parser, and whole runs against a fake server.

These tests need no real server: a small threaded HTTP server here speaks just enough of the
OpenAI streaming API.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ember.benchmark import serve
from ember.benchmark import sse_client as sse

# --- percentiles ---------------------------------------------------------------------------------


def test_percentile_interpolates_linearly_between_ranks() -> None:
    """Same values as numpy.percentile's default (linear) method, on unsorted input."""
    values = [40.0, 15.0, 50.0, 35.0, 20.0]
    assert serve.percentile(values, 0) == 15.0
    assert serve.percentile(values, 100) == 50.0
    assert serve.percentile(values, 50) == 35.0
    assert serve.percentile(values, 40) == pytest.approx(29.0)
    assert serve.percentile([float(v) for v in range(1, 11)], 90) == pytest.approx(9.1)
    assert serve.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert serve.percentile([7.0], 99) == 7.0


def test_percentile_rejects_empty_input_and_bad_q() -> None:
    """No values or a q outside [0, 100] is an error, not a made-up number."""
    with pytest.raises(ValueError, match="empty"):
        serve.percentile([], 50)
    with pytest.raises(ValueError, match="q"):
        serve.percentile([1.0], 101)


def test_latency_stats_are_in_milliseconds_and_none_when_empty() -> None:
    """Seconds in, milliseconds out; no samples gives None for every statistic."""
    stats = serve.latency_stats_ms([0.001, 0.002, 0.003])
    assert stats == pytest.approx({"mean": 2.0, "p50": 2.0, "p90": 2.8, "p99": 2.98})
    assert serve.latency_stats_ms([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


# --- prompts and arrivals ------------------------------------------------------------------------


def test_prompts_are_seeded_distinct_and_about_the_requested_length() -> None:
    """Same seed, same prompts; another seed, other prompts; all distinct, each starting with its index."""
    prompts = serve.make_prompts(300, 200, seed=0)
    assert prompts == serve.make_prompts(300, 200, seed=0)
    assert prompts != serve.make_prompts(300, 200, seed=1)
    assert len(set(prompts)) == 300
    assert len({p.split(": ", 1)[1] for p in prompts}) == 300  # the words differ too, not just the index
    for i, prompt in enumerate(prompts):
        index, words = prompt.split(": ", 1)
        assert index == str(i)
        assert len(words.split()) == round(200 * serve.WORDS_PER_TOKEN)
    assert len(serve.make_prompts(1, 1, seed=0)[0].split()) == 2  # index and one word


def test_shared_prefix_prompts_interleave_every_prefix_once_per_round() -> None:
    prompts = serve.shared_prefix_prompts(20, 8, 30, 4, seed=0)
    assert prompts == serve.shared_prefix_prompts(20, 8, 30, 4, seed=0) and len(set(prompts)) == 20
    prefixes = [p.split("\n")[0] for p in prompts]
    assert len(set(prefixes)) == 4 and all(len(p.split()) == 2 + 30 for p in prefixes)  # "Agent g." and the words
    for start in range(0, 16, 4):
        assert len(set(prefixes[start : start + 4])) == 4
    assert prefixes[:4] != prefixes[4:8] or prefixes[4:8] != prefixes[8:12]  # not one fixed cycle
    for i, prompt in enumerate(prompts):
        index, words = prompt.split("\n")[1].split(": ", 1)
        assert index == str(i) and len(words.split()) == 8


def test_arrivals_are_seeded_poisson_or_all_at_once() -> None:
    """An infinite rate sends everything at 0; a finite one gives seeded, increasing times at about that rate."""
    assert serve.arrival_offsets_s(5, float("inf"), seed=0) == [0.0] * 5
    offsets_s = serve.arrival_offsets_s(4000, 50.0, seed=3)
    assert offsets_s == serve.arrival_offsets_s(4000, 50.0, seed=3)
    assert offsets_s != serve.arrival_offsets_s(4000, 50.0, seed=4)
    assert offsets_s[0] == 0.0
    assert offsets_s == sorted(offsets_s)
    assert offsets_s[-1] / (len(offsets_s) - 1) == pytest.approx(1 / 50.0, rel=0.1)


# --- SSE parsing ---------------------------------------------------------------------------------

STREAM = (
    b": a comment\n"
    b'data: {"choices": [{"text": "h\xc3\xa9"}]}\n\n'
    b"event: message\r\n"
    b"data:first line\r\n"
    b"data: second line\r\n\r\n"
    b"data: [DONE]\n\n"
)
STREAM_EVENTS = ['{"choices": [{"text": "hé"}]}', "first line\nsecond line", "[DONE]"]


def test_sse_parser_reads_whole_body() -> None:
    """Comments and other fields are skipped; multi-line data is joined; [DONE] is just data."""
    parser = sse.SseParser()
    assert parser.feed(STREAM) == STREAM_EVENTS
    assert parser.finish() == []


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16])
def test_sse_parser_handles_chunks_split_anywhere(size: int) -> None:
    """Splitting the body anywhere (inside \\r\\n, inside a UTF-8 character) changes nothing."""
    parser = sse.SseParser()
    events = [event for i in range(0, len(STREAM), size) for event in parser.feed(STREAM[i : i + size])]
    assert [*events, *parser.finish()] == STREAM_EVENTS


def test_sse_parser_waits_for_the_blank_line_and_keeps_an_unterminated_tail() -> None:
    """An event is only complete at its blank line; at the end of the body, a leftover event still counts."""
    parser = sse.SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == ["a"]
    assert parser.feed(b"data: b\rdata: c\r\r") == []  # the last \r may be half of \r\n
    assert parser.feed(b"data: [DONE]") == ["b\nc"]
    assert parser.finish() == ["[DONE]"]


def test_recorder_times_content_and_takes_usage() -> None:
    """TTFT at the first non-empty text, gaps after it, tokens from usage, [DONE] ends the stream."""
    recorder = sse.StreamRecorder(start_s=10.0)
    role_only = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    assert not recorder.on_data(json.dumps(role_only), 10.1)
    assert not recorder.on_data(json.dumps({"choices": [{"delta": {"content": "Hi"}}]}), 10.5)
    assert not recorder.on_data(json.dumps({"choices": [{"text": " there"}]}), 10.75)
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
    assert not recorder.on_data(json.dumps({"choices": [], "usage": usage}), 11)
    assert recorder.on_data("[DONE]", 11.0)
    result = recorder.result
    assert result.error == ""
    assert result.ttft_s == pytest.approx(0.5)
    assert result.itl_s == pytest.approx([0.25])
    assert (result.prompt_tokens, result.output_tokens, result.num_content_chunks) == (9, 3, 2)
    assert result.cached_tokens == 4


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"error": {"message": "boom", "code": 500}}', 'error event: {"message": "boom", "code": 500}'),
        ("not json", "malformed event: not json"),
        ("[1, 2]", "malformed event: [1, 2]"),
    ],
)
def test_recorder_stops_on_error_events_and_bad_json(data: str, expected: str) -> None:
    """An error event or a payload that is not a JSON object ends the stream as a failure, with its text."""
    recorder = sse.StreamRecorder(start_s=0.0)
    assert recorder.on_data(data, 1.0)
    assert recorder.result.error == expected


# --- a fake OpenAI-compatible server -------------------------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """Counts requests, keeps their bodies, and fails some on purpose (see FakeOpenAI)."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs under bursts: 1 s retransmit stalls

    def __init__(self, failures: str = "none", api_key: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), FakeOpenAI)
        self.failures = failures
        self.api_key = api_key
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def take_number(self, body: dict[str, Any]) -> int:
        """Records a request body; returns how many came before it."""
        with self._lock:
            self.bodies.append(body)
            return len(self.bodies) - 1

    @property
    def base_url(self) -> str:
        """The OpenAI API root of this server."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams "Hello world!" in three chunks plus a usage chunk. With failures="mixed", request n
    fails by n % 4: 1 answers HTTP 400, 2 streams an error event, 3 ends without [DONE]; "all" answers 400."""

    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keeps the test output quiet."""

    def do_GET(self) -> None:
        """GET /v1/models."""
        self._send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self) -> None:
        """POST /v1/completions or /v1/chat/completions, always streamed."""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = self.server.take_number(body)
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            return self._send_json(401, {"error": {"message": "missing API key", "code": 401}})
        failure = n % 4 if self.server.failures == "mixed" else 1 if self.server.failures == "all" else 0
        if failure == 1:
            return self._send_json(400, {"error": {"message": "bad request", "code": 400}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        prompt = body.get("prompt") or body["messages"][0]["content"]
        try:
            for event in self._events("chat" in self.path, len(prompt.split()), failure):
                self._send_event(event)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up after an error event, as it should

    def _events(self, chat: bool, num_prompt_tokens: int, failure: int) -> Iterator[str]:
        """The SSE data payloads of one streamed answer."""
        if chat:
            yield json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for text in ["Hello", " world", "!"]:
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            yield json.dumps({"choices": [choice]})
        if failure == 2:
            yield json.dumps({"error": {"message": "engine failed", "code": 500}})
        usage = {"prompt_tokens": num_prompt_tokens, "completion_tokens": 4, "total_tokens": num_prompt_tokens + 4}
        yield json.dumps({"choices": [], "usage": usage})
        if failure != 3:
            yield "[DONE]"

    def _send_event(self, data: str) -> None:
        """Writes one event in two pieces with a pause between them, so the client sees split chunks."""
        raw = f"data: {data}\n\n".encode()
        for piece in (raw[:7], raw[7:]):
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.002)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        """A complete JSON response."""
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Starts fake servers on free loopback ports; stops them after the test."""
    servers: list[FakeServer] = []

    def start(**kwargs: Any) -> FakeServer:
        server = FakeServer(**kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _parse(*argv: str) -> argparse.Namespace:
    """The options `ember bench serve` would get from `argv`."""
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def _no_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The --api-key default comes from the environment: keep it out of these tests."""
    monkeypatch.delenv("EMBER_API_KEY", raising=False)


def test_run_against_fake_server_counts_successes_and_failures(
    start_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A capped-concurrency completions run: HTTP errors, error events and cut streams count as failures."""
    server = start_server(failures="mixed")
    out = tmp_path / "result.json"
    argv = ["--base-url", server.base_url, "--num-prompts", "12", "--max-concurrency", "3", "--out", str(out)]
    assert serve.run(_parse(*argv, "--input-len", "20", "--output-len", "16", "--no-progress")) == 0

    record = json.loads(out.read_text())
    assert record["model"] == "fake-model"  # from GET /models
    assert record["base_url"] == server.base_url
    assert (record["num_requests"], record["num_succeeded"], record["num_failed"]) == (12, 3, 9)
    assert record["total_output_tokens"] == 3 * 4
    assert record["total_input_tokens"] == 3 * 21  # 20 words and the index, one "token" each here
    assert record["args"]["max_concurrency"] == 3 and record["args"]["request_rate"] == "inf"
    errors = record["errors"]
    assert sum(errors.values()) == 9
    assert errors['HTTP 400: {"error": {"message": "bad request", "code": 400}}'] == 3
    assert any(e.startswith("error event: ") and "engine failed" in e and n == 3 for e, n in errors.items())
    assert errors["stream ended without data: [DONE]"] == 3
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(record[name]) == {"mean", "p50", "p90", "p99"}
        assert all(value > 0 for value in record[name].values())
    assert record["ttft_ms"]["p99"] <= record["e2e_ms"]["p99"]
    assert record["request_throughput_per_s"] == pytest.approx(3 / record["duration_s"])
    assert record["output_token_throughput_per_s"] == pytest.approx(12 / record["duration_s"])

    body = server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 16 and body["model"] == "fake-model" and "prompt" in body
    stdout = capsys.readouterr().out
    assert "Requests: succeeded / failed" in stdout and "TTFT" in stdout and "ITL" in stdout


def test_chat_run_at_a_request_rate_with_api_key_writes_into_a_folder(
    start_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Chat at a fixed Poisson rate with a bearer token and the progress bar; --out names a folder."""
    server = start_server(api_key="secret")
    argv = ["--base-url", server.base_url, "--api-key", "secret", "--endpoint", "chat", "--model", "m"]
    args = _parse(*argv, "--num-prompts", "6", "--request-rate", "200", "--out", str(tmp_path / "out"))
    args.extra_body = {"ignore_eos": True}
    assert serve.run(args) == 0

    (path,) = (tmp_path / "out").glob("serve-*.json")
    record = json.loads(path.read_text())
    assert (record["num_succeeded"], record["num_failed"], record["model"]) == (6, 0, "m")
    assert record["args"]["api_key"] == "<redacted>" and "secret" not in path.read_text()
    assert record["itl_ms"]["p50"] > 0  # three content chunks: the role-only chunk is not a token
    body = server.bodies[0]
    assert body["messages"][0]["role"] == "user" and body["ignore_eos"] is True
    assert "Requests" in capsys.readouterr().err  # the progress bar


def test_all_requests_failing_exits_non_zero(
    start_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request rejected: exit status 1 with the error, and the JSON still written."""
    server = start_server(failures="all")
    args = _parse("--base-url", server.base_url, "--num-prompts", "4", "--out", str(tmp_path / "r.json"))
    args.no_progress = True
    assert serve.run(args) == 1
    assert "all 4 requests failed; most common error: HTTP 400" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["num_failed"] == 4


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_exits_non_zero_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No server: model discovery fails with the URL in the message; with --model, every request fails."""
    base_url = f"http://127.0.0.1:{_closed_port()}/v1"
    args = _parse("--base-url", base_url, "--num-prompts", "2", "--no-progress", "--out", str(tmp_path))
    assert serve.run(args) == 1
    assert f"cannot reach the server at {base_url}/models (ConnectError" in capsys.readouterr().err
    args.model = "m"
    assert serve.run(args) == 1
    assert "all 2 requests failed; most common error: ConnectError" in capsys.readouterr().err


def test_options_reject_non_positive_values(capsys: pytest.CaptureFixture[str]) -> None:
    """Counts, rates and lengths must be positive; --extra-body must be a JSON object."""
    for argv in (["--num-prompts", "0"], ["--request-rate", "-1"], ["--request-rate", "nan"], ["--extra-body", "[]"]):
        with pytest.raises(SystemExit):
            _parse(*argv)
    assert "must be" in capsys.readouterr().err
    assert _parse().request_rate == float("inf") and _parse().max_concurrency is None
