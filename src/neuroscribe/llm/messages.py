"""Chat messages whose content is a list of parts (text now, images later).

A message is the OpenAI wire shape, typed: `{"role": ..., "content": str | [part, ...]}`
with parts `{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url":
...}}`. A plain string is shorthand for one text part, so prompt builders can keep
returning strings. Backends normalise with `to_wire` (text-only content collapses to
the string it spells, so what is sent — and the cache key — is byte-identical whichever
form the caller used) and read text with `message_text` (which refuses image parts for
backends that cannot see them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict, Union

from typing_extensions import NotRequired

from neuroscribe.errors import ConfigError

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImageURL(TypedDict):
    url: str  # https URL or a data: URL (base64)
    detail: NotRequired[Literal["auto", "low", "high"]]


class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Union[TextPart, ImagePart]  # noqa: UP007 (a runtime alias on py3.10)


class Message(TypedDict):
    role: Role
    content: str | list[ContentPart]


_PART_FIELDS: dict[str, type] = {"text": str, "image_url": dict}


def text_part(text: str) -> TextPart:
    return {"type": "text", "text": text}


def image_part(url: str, *, detail: Literal["auto", "low", "high"] | None = None) -> ImagePart:
    image: ImageURL = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def parts(content: str | Sequence[ContentPart]) -> list[ContentPart]:
    """The content as a list of validated parts (a string is one text part)."""
    if isinstance(content, str):
        return [text_part(content)]
    if not isinstance(content, Sequence):
        raise ConfigError(f"message content must be a string or a list of parts, not {content!r}")
    out: list[ContentPart] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        # Each part type carries a field of its own name: {"type": "text", "text": "..."}.
        expected = _PART_FIELDS.get(kind or "")
        if expected is not None and isinstance(part.get(kind), expected):
            out.append(part)  # type: ignore[arg-type]
        else:
            raise ConfigError(f"unknown message content part {part!r} (text or image_url)")
    return out


def has_image(messages: Sequence[Message]) -> bool:
    return any(
        p["type"] == "image_url"
        for m in messages
        if not isinstance(m["content"], str)
        for p in parts(m["content"])
    )


def message_text(message: Message, *, backend: str = "this backend") -> str:
    """The text of a message, its text parts joined; an image part is a ConfigError."""
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = []
    for p in parts(content):
        if p["type"] != "text":
            raise ConfigError(
                f"{backend} takes text only (its capabilities say image_input=False); "
                "the message has an image part"
            )
        texts.append(p["text"])
    return "".join(texts)


def counted_text(message: Message) -> str:
    """The text a message's tokens are counted over: its text parts (images are not
    text, and are counted apart or not at all)."""
    return "".join(p["text"] for p in parts(message["content"]) if p["type"] == "text")


def to_wire(messages: Sequence[Message | dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as sent: validated, text-only content collapsed to one string.

    Collapsing keeps the bytes sent for text identical to the string form, which every
    OpenAI-compatible server accepts (not all accept part lists); content with an image
    stays a part list.
    """
    out = []
    for m in messages:
        role = m.get("role")
        if role not in ROLES:
            raise ConfigError(f"unknown message role {role!r}: use one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        ps = parts(content)  # type: ignore[arg-type]
        if all(p["type"] == "text" for p in ps):
            out.append({"role": role, "content": "".join(p["text"] for p in ps)})  # type: ignore[typeddict-item]
        else:
            out.append({"role": role, "content": [dict(p) for p in ps]})
    return out


__all__ = [
    "ContentPart",
    "ImagePart",
    "ImageURL",
    "Message",
    "Role",
    "TextPart",
    "counted_text",
    "has_image",
    "image_part",
    "message_text",
    "parts",
    "text_part",
    "to_wire",
]
