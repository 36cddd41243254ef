"""A deterministic model backend for the service tests and the load bench: `svcfake:NAME`.

Registered under its own prefix, so a `RunConfig` can name it like any model (the CLI,
the facade and the service all build it from the spec). Explaining, it names the
strongest token of the last excerpt ("the word cat"); simulating (JSON), it gives 7 to
tokens the explanation names and 0 to the rest, so scores are real correlations. A spec
`svcfake:d0.2` answers after 0.2 s (a job slow enough to be killed half-way);
`svcfake:b0.2` holds its event loop for 0.2 s per call, as CPU-bound work on a loop does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from neuroscribe.llm.fake import FakeLLM, _chat_tokens, tokenize

PREFIX = "svcfake:"


def _text(request: Any) -> str:
    if isinstance(request, str):
        return request
    content = request[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def answers(request: Any, **params: Any) -> str:
    text = _text(request)
    rows = text.rsplit("<start>\n", 1)[-1].split("\n<end>")[0].split("\n")
    if params.get("response_format"):  # simulation: one value per token row
        m = re.search(r"Explanation: (.*)\n", text)
        words = set(re.findall(r"\w+", (m.group(1) if m else "").lower())) - {"the", "word"}
        values = [7 if row.strip().lower() in words else 0 for row in rows]
        return json.dumps({"activations": values})
    best, top = "x", float("-inf")
    for row in rows:
        token, _, value = row.rpartition("\t")
        try:
            v = float(value)
        except ValueError:
            continue
        if v > top and token.strip():
            best, top = token.strip(), v
    return f"the word {best}"


class ServiceFake(FakeLLM):
    def __init__(self, spec: str, **kw: Any) -> None:
        super().__init__(spec, answers=answers, **kw)
        m = re.match(r"svcfake:d([0-9.]+)", spec)
        self.delay = float(m.group(1)) if m else 0.0
        m = re.match(r"svcfake:b([0-9.]+)", spec)
        self.block = float(m.group(1)) if m else 0.0

    async def chat(self, *args: Any, **kwargs: Any):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.block:
            time.sleep(self.block)  # on purpose: the loop can do nothing else meanwhile
        return await super().chat(*args, **kwargs)


def register() -> None:
    from neuroscribe.llm.registry import BackendInfo, register_backend

    register_backend(
        PREFIX,
        lambda spec, **kw: ServiceFake(spec, **kw),
        BackendInfo(
            name="svcfake",
            prefix=PREFIX,
            local=True,
            token_counter=lambda spec: (lambda t: len(tokenize(t)), _chat_tokens, "fake"),
        ),
    )
