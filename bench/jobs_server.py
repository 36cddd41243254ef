"""A loopback OpenAI-compatible server with a fixed latency and no model (for bench/jobs.py).

Every request waits `latency_s` and gets a canned, well-formed answer:
- `POST /v1/chat/completions`: content `chat_content` (n choices; `logprobs` with
  `top_logprobs` over the digits when asked);
- `POST /v1/completions`: text `completion_text`; with `echo` the prompt split into
  whitespace/word tokens with `text_offset`, and `top_logprobs` over the digits "0".."9"
  at every position when `logprobs` is set (shift 0, OpenAI semantics);
- `GET /v1/models`: the model "bench".
Usage counts one token per whitespace-separated piece. HTTP/1.1 keep-alive is
supported, so the client's connection pool is exercised as against a real provider.

    python bench/jobs_server.py --latency 0.2 --port 8099
    python -c "from bench.jobs_server import start_fixed_latency_server as s; print(s(0.2))"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(r"\s*\S+|\s+")
_DIGITS = {str(d): math.log(p) for d, p in zip(range(10), [0.5] + [0.5 / 9] * 9, strict=True)}


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text) or [""]


def _completion_body(req: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = req.get("prompt") or ""
    if isinstance(prompt, list):
        prompt = "".join(map(str, prompt))
    echo = bool(req.get("echo"))
    toks = (_tokens(prompt) if echo else []) + [text]
    full = (prompt if echo else "") + text
    logprobs = None
    if req.get("logprobs") is not None:
        offsets, pos = [], (0 if echo else len(prompt))
        for t in toks:
            offsets.append(pos)
            pos += len(t)
        logprobs = {
            "tokens": toks,
            "token_logprobs": [None] + [_DIGITS["0"]] * (len(toks) - 1),
            "top_logprobs": [None] + [dict(_DIGITS)] * (len(toks) - 1),
            "text_offset": offsets,
        }
    n = int(req.get("n") or 1)
    return {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.get("model", "bench"),
        "choices": [
            {"index": i, "text": full, "logprobs": logprobs, "finish_reason": "length"}
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": len(_tokens(prompt)),
            "completion_tokens": n,
            "total_tokens": len(_tokens(prompt)) + n,
        },
    }


def _chat_body(req: dict[str, Any], content: str) -> dict[str, Any]:
    n = int(req.get("n") or 1)
    logprobs = None
    if req.get("logprobs"):
        k = int(req.get("top_logprobs") or 0)
        logprobs = {
            "content": [
                {
                    "token": t,
                    "logprob": -0.1,
                    "bytes": None,
                    "top_logprobs": [
                        {"token": d, "logprob": lp, "bytes": None}
                        for d, lp in list(_DIGITS.items())[:k]
                    ],
                }
                for t in _tokens(content)
            ]
        }
    prompt_tokens = sum(len(_tokens(str(m.get("content", "")))) for m in req.get("messages", []))
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "bench"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(_tokens(content)) * n,
            "total_tokens": prompt_tokens + len(_tokens(content)) * n,
        },
    }


class FixedLatencyServer:
    """The server; `start()` runs it in a daemon thread with its own event loop."""

    def __init__(
        self,
        latency_s: float = 0.2,
        *,
        port: int = 0,
        chat_content: str = "0",
        completion_text: str = "0",
    ):
        self.latency_s = latency_s
        self.port = port
        self.chat_content = chat_content
        self.completion_text = completion_text
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: many requests per connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                self.requests += 1
                status, payload = await self._answer(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    (
                        f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                        "content-type: application/json\r\n"
                        f"content-length: {len(data)}\r\n\r\n"
                    ).encode()
                    + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "bench", "object": "model"}]}
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": {"message": "invalid JSON body"}}
        await asyncio.sleep(self.latency_s)
        if path.endswith("/chat/completions"):
            return 200, _chat_body(req, self.chat_content)
        if path.endswith("/completions"):
            return 200, _completion_body(req, self.completion_text)
        return 404, {"error": {"message": f"no route {path}"}}

    def start(self) -> FixedLatencyServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fixed-latency-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None


def start_fixed_latency_server(
    latency_s: float = 0.2, **kwargs: Any
) -> tuple[str, Callable[[], None]]:
    """Start the server on a free loopback port; returns (base_url ending in /v1, stop)."""
    server = FixedLatencyServer(latency_s, **kwargs).start()
    return server.base_url, server.stop


def _self_check(latency_s: float, concurrency: int, total: int) -> None:
    """Drive the server with our own client and print requests/s against the ideal."""
    from neuroscribe.llm.openai_api import OpenAICompatibleLLM

    url, stop = start_fixed_latency_server(latency_s)
    llm = OpenAICompatibleLLM("bench", base_url=url, concurrency=concurrency, timeout_s=30)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(
            *(llm.chat([{"role": "user", "content": f"q{i}"}], max_tokens=1) for i in range(total))
        )
        took = time.perf_counter() - start
        await llm.aclose()
        return took

    try:
        cpu0 = time.process_time()
        took = asyncio.run(main())
        cpu = time.process_time() - cpu0
    finally:
        stop()
    ideal = concurrency / latency_s
    print(
        f"concurrency {concurrency:4d}: {total / took:7.1f} req/s, ideal {ideal:7.1f} "
        f"({100 * total / took / ideal:5.1f}%), process CPU {1000 * cpu / total:.2f} ms/request"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--chat-content", default="0", help="the content of every chat answer")
    ap.add_argument(
        "--self-check",
        action="store_true",
        help="instead of serving, measure our client against it at several concurrencies",
    )
    args = ap.parse_args()
    if args.self_check:
        for c in (1, 8, 32, 128):
            _self_check(args.latency, c, total=max(10, 4 * c))
    else:
        srv = FixedLatencyServer(
            args.latency, port=args.port, chat_content=args.chat_content
        ).start()
        print(f"serving {srv.base_url} with {args.latency:g} s latency; Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            srv.stop()
