"""Real servers for the tests: a llama.cpp OpenAI-compatible server and a fault proxy.

`start_llama_server()` runs `python -m llama_cpp.server` (llama-cpp-python[server]) on
loopback with the embedded SmolLM2 GGUF and waits until `/v1/models` answers.
`FaultProxy` sits in front of any upstream and injects 429s, 5xx, dropped connections,
slow answers, truncated bodies and well-formed but unusable answers, at seeded rates or
from a script, counting what it injected. Both are plain helpers; `conftest.py` turns
them into fixtures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MODEL_ALIAS = "smollm2"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_available() -> str | None:
    """None when a llama.cpp server can be started here, else the reason why not."""
    try:
        import llama_cpp.server  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native build
        return f"llama-cpp-python[server] is not importable: {exc}"
    try:
        from neuroscribe.embedded import gguf_path

        gguf_path()
    except Exception as exc:
        return str(exc)
    return None


@dataclass
class LlamaServer:
    """A running `llama_cpp.server` process."""

    base_url: str  # ends in /v1, ready for the openai SDK
    model: str  # the name to send as `model`
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit in 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_llama_server(
    model_path: str | os.PathLike[str] | None = None,
    *,
    alias: str = MODEL_ALIAS,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    api_key: str | None = None,
    startup_timeout_s: float = 120.0,
) -> LlamaServer:
    """Start llama-cpp-python's OpenAI-compatible server and wait until it answers.

    `model_path` defaults to the embedded SmolLM2 GGUF. With `api_key` every request
    must carry that bearer key (used to test 401 handling). `n_threads` defaults to
    `$NEUROSCRIBE_TEST_SERVER_THREADS` or 1: on this busy 2-core machine llama.cpp with 2
    threads was 3-10x slower than with 1 (its threads spin-wait for each other).
    """
    if n_threads is None:
        n_threads = int(os.environ.get("NEUROSCRIBE_TEST_SERVER_THREADS", "1"))
    if model_path is None:
        from neuroscribe.embedded import gguf_path

        model_path = gguf_path()
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--verbose",
        "False",
    ]
    if api_key:
        cmd += ["--api_key", api_key]
    proc = subprocess.Popen(cmd, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(log_fd)
    server = LlamaServer(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=alias,
        port=port,
        process=proc,
        log_path=Path(log_name),
        api_key=api_key,
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + startup_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {proc.returncode} during start-up:\n"
                    f"{server.log_tail()}"
                )
            try:
                r = httpx.get(f"{server.base_url}/models", headers=headers, timeout=2.0)
                if r.status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama.cpp server did not answer within {startup_timeout_s:.0f} s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise


# --------------------------------------------------------------------------- fault proxy

#: Every fault the proxy knows. "ok" means: forward unchanged.
FAULTS = (
    "429",  # 429 without Retry-After
    "429_retry_after",  # 429 with `Retry-After: <retry_after_s>` (integer seconds, rounded up)
    "429_retry_after_ms",  # 429 with `retry-after-ms: <retry_after_s*1000>`
    "400",  # a plain bad-request error (must NOT be retried)
    "500",
    "502",
    "503",
    "drop",  # read the request, then close the connection without answering
    "slow",  # forward, but wait `slow_s` before answering (longer than the client timeout)
    "truncate",  # forward, answer 200 with the first half of the JSON body (well framed)
    "unusable",  # forward, answer 200 with the body passed through `rewrite`
)

Rewrite = Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]]


def strip_digits_rewrite(
    path: str, request: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    """Default `rewrite` for "unusable": remove every digit from texts and logprob tokens.

    The answer stays well formed JSON of the right shape, but a simulator finds no
    digits in it (neither in text nor in the top logprobs).
    """

    def nodigits(s: str) -> str:
        return "".join(ch for ch in s if not ch.isdigit()) or "none"

    for choice in body.get("choices", []):
        msg = choice.get("message")
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            msg["content"] = nodigits(msg["content"])
        if isinstance(choice.get("text"), str):
            choice["text"] = nodigits(choice["text"])
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if isinstance(lp.get("content"), list):  # chat logprobs
                for item in lp["content"]:
                    item["token"] = nodigits(item.get("token", ""))
                    item["top_logprobs"] = [
                        {**alt, "token": nodigits(alt.get("token", ""))}
                        for alt in item.get("top_logprobs") or []
                    ]
            if isinstance(lp.get("top_logprobs"), list):  # completion logprobs
                lp["top_logprobs"] = [
                    None
                    if d is None
                    else {f"{nodigits(k)}#{i}": v for i, (k, v) in enumerate(d.items())}
                    for d in lp["top_logprobs"]
                ]
    return body


def drop_last_line_rewrite(
    path: str, request: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    """A `rewrite` for "unusable": drop the last line of every answer (wrong line count)."""
    for choice in body.get("choices", []):
        msg = choice.get("message")
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            msg["content"] = "\n".join(msg["content"].split("\n")[:-1])
        if isinstance(choice.get("text"), str):
            choice["text"] = "\n".join(choice["text"].split("\n")[:-1])
    return body


@dataclass
class FaultProxy:
    """A loopback HTTP proxy that injects faults in front of an OpenAI-compatible server.

    Configure with `rates` (fault name → probability per request, drawn with `seed`)
    and/or `script` (a list of fault names applied to the next requests in order, before
    any random draw). `rewrite(path, request_json, response_json) -> response_json`
    produces "unusable" answers. `counts` tallies what was done per request ("ok" for
    forwarded unchanged), `upstream_requests` how many reached the real server.

    Runs its own event loop in a daemon thread, so it works with any client (sync or
    async, any loop). Use as a context manager or call `start()`/`stop()`.
    """

    upstream: str  # root URL of the real server, e.g. http://127.0.0.1:8000 (no /v1)
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    script: list[str] = field(default_factory=list)
    retry_after_s: float = 1.0
    slow_s: float = 5.0
    rewrite: Rewrite = strip_digits_rewrite
    upstream_timeout_s: float = 300.0

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    upstream_requests: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS)
        unknown |= set(self.script) - {*FAULTS, "ok"}
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        self.upstream = self.upstream.rstrip("/")
        if self.upstream.endswith("/v1"):
            self.upstream = self.upstream[: -len("/v1")]
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._client: httpx.AsyncClient | None = None

    # ---- configuration -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The URL to give the client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def configure(
        self,
        *,
        rates: dict[str, float] | None = None,
        script: Iterable[str] | None = None,
        seed: int | None = None,
        rewrite: Rewrite | None = None,
    ) -> None:
        """Change the fault plan between requests (thread-safe)."""
        with self._lock:
            if rates is not None:
                self.rates = dict(rates)
            if script is not None:
                self.script = list(script)
            if seed is not None:
                self._rng = random.Random(seed)
            if rewrite is not None:
                self.rewrite = rewrite
        self.__post_init_check()

    def __post_init_check(self) -> None:
        unknown = (set(self.rates) | set(self.script)) - {*FAULTS, "ok"}
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.upstream_requests = 0

    @property
    def injected(self) -> int:
        """How many requests got a fault (everything but "ok")."""
        return sum(v for k, v in self.counts.items() if k != "ok")

    def _choose(self) -> str:
        with self._lock:
            if self.script:
                fault = self.script.pop(0)
            else:
                fault = "ok"
                u = self._rng.random()
                acc = 0.0
                for name in sorted(self.rates):
                    acc += self.rates[name]
                    if u < acc:
                        fault = name
                        break
            self.counts[fault] += 1
            return fault

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._client = httpx.AsyncClient(timeout=self.upstream_timeout_s)
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            # shutdown: close the listener, cancel in-flight handlers, close the client
            self._server.close()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self._client.aclose())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP ----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            method, path, headers, body = request
            fault = self._choose()
            await self._respond(fault, method, path, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(
        self,
        fault: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        if fault == "drop":
            writer.transport.abort()
            return
        if fault in ("429", "429_retry_after", "429_retry_after_ms", "400", "500", "502", "503"):
            status = int(fault[:3])
            extra: dict[str, str] = {}
            if fault == "429_retry_after":
                extra["Retry-After"] = str(max(1, int(-(-self.retry_after_s // 1))))
            elif fault == "429_retry_after_ms":
                extra["retry-after-ms"] = str(int(self.retry_after_s * 1000))
            message = {
                400: "injected bad request",
                429: "injected rate limit",
                500: "injected server error",
                502: "injected bad gateway",
                503: "injected unavailable",
            }[status]
            payload = json.dumps(
                {"error": {"message": message, "type": "injected", "code": status}}
            ).encode()
            await _write_response(writer, status, payload, extra)
            return

        fwd_headers = {
            k: v
            for k, v in headers.items()
            if k not in ("host", "content-length", "connection", "accept-encoding")
        }
        with self._lock:
            self.upstream_requests += 1
        assert self._client is not None
        resp = await self._client.request(
            method, self.upstream + path, headers=fwd_headers, content=body
        )
        payload = resp.content
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        elif fault == "truncate" and resp.status_code == 200:
            payload = payload[: max(1, len(payload) // 2)]
        elif fault == "unusable" and resp.status_code == 200:
            try:
                req_json = json.loads(body or b"{}")
                payload = json.dumps(self.rewrite(path, req_json, json.loads(payload))).encode()
            except ValueError:
                pass
        keep = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() in ("content-type", "retry-after", "retry-after-ms", "www-authenticate")
        }
        await _write_response(writer, resp.status_code, payload, keep)


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0]:
        return None
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


async def _write_response(
    writer: asyncio.StreamWriter, status: int, payload: bytes, headers: dict[str, str]
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    hdrs = {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}}
    hdrs["content-length"] = str(len(payload))
    hdrs["connection"] = "close"  # one request per connection keeps the proxy simple
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()
