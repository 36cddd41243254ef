"""The endpoint probe finds out whether a model reads pictures (`image_input`).

A vision model's server accepts an image part and charges prompt tokens for it; a text
server refuses it (llama.cpp answers a 500: tests/test_openai_client.py runs the real one)
or drops it silently, charging nothing. No vision-language server runs here, so this is
the contract, on an `httpx.MockTransport` server of each kind.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.vision.simulate import choose_route

URL = "http://vlm.test/v1"


class ChatServer:
    """/models and /chat/completions; an image part costs `image_tokens` prompt tokens,
    or is refused (`refuse`), or the answer carries no usage (`usage=False`)."""

    def __init__(self, image_tokens: int = 85, *, refuse: bool = False, usage: bool = True):
        self.image_tokens, self.refuse, self.usage = image_tokens, refuse, usage
        self.images_seen = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        if not path.endswith("/chat/completions"):
            return httpx.Response(404, json={"error": {"message": "no such route"}})
        body = json.loads(request.content)
        tokens = 3
        for message in body["messages"]:
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                if part["type"] == "text":
                    tokens += len(part["text"].split())
                elif part["type"] == "image_url":
                    assert part["image_url"]["url"].startswith("data:image/png;base64,")
                    self.images_seen += 1
                    if self.refuse:
                        return httpx.Response(
                            500, json={"error": {"message": "image input is not supported"}}
                        )
                    tokens += self.image_tokens
        answer: dict[str, Any] = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "7"}}]
        }
        if self.usage:
            answer["usage"] = {"prompt_tokens": tokens, "completion_tokens": 1}
        return httpx.Response(200, json=answer)


def probe(server: ChatServer) -> dict[str, Any]:
    llm = make_llm(
        "m",
        base_url=URL,
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(max_attempts=2, base_s=0.001, max_wait_s=0.01),
    )
    result = asyncio.run(unwrap(llm).probe())
    caps = asyncio.run(llm.capabilities())
    assert caps.image_input is result["image_input"]
    return result


def test_a_vision_model_is_found_and_auto_routes_pictures_to_it():
    server = ChatServer(image_tokens=85)
    result = probe(server)
    assert result["image_input"] is True and "image_input" not in result["errors"]
    assert server.images_seen == 1  # one small picture, asked once
    assert choose_route("auto", result["image_input"]) == "pixels"


@pytest.mark.parametrize(
    ("server", "why"),
    [
        (ChatServer(refuse=True), "image input is not supported"),
        (ChatServer(image_tokens=0), "drops image parts"),
    ],
    ids=["refused", "dropped"],
)
def test_a_text_model_is_not_taken_for_a_vision_one(server, why):
    result = probe(server)
    assert result["image_input"] is False and why in result["errors"]["image_input"]
    assert result["chat"] is True  # the rest of the probe is unaffected
    assert choose_route("auto", result["image_input"]) == "captions"


def test_an_accepted_picture_without_token_counts_counts_as_vision():
    assert probe(ChatServer(usage=False))["image_input"] is True
