"""Explainer prompts for image units (vision neurons), versioned.

Two routes, one answer form (`...: the main thing this neuron does is find ...`, the text
explainer's, so the same cleaner reads both):

- `explain-images-captions-v1` (any text LLM): each image is its text description (a
  dataset caption, class labels, CLIP zero-shot labels) on one numbered line with the
  unit's activation normalised 0–10 against the strongest image shown, strongest first,
  then low-activating contrast images; two few-shot image units in the same layout.
- `explain-images-pixels-v1` (vision-language chat endpoints): the same instructions
  as content parts, each top image as an image part (the activation map overlaid by the
  caller) after a text part with its activation, then the contrast images.

Descriptions are untrusted text: each is written as a JSON string literal (quotes,
backslashes, newlines and tabs escaped), cut to `MAX_DESCRIPTION_CHARS`, so a caption
can never end its line, open a new row or pose as the prompt's own text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from neuroscribe.llm.messages import ContentPart, Message, text_part
from neuroscribe.prompts.explain import ANSWER_PREFIX, ExplainPrompt

CAPTIONS_VERSION = "explain-images-captions-v1"
PIXELS_VERSION = "explain-images-pixels-v1"
IMAGE_EXPLAIN_VERSIONS = (CAPTIONS_VERSION, PIXELS_VERSION)

# A description longer than this is cut (with an ellipsis): captions are a phrase or two.
MAX_DESCRIPTION_CHARS = 200
# Train images at or below this normalised value are shown as contrast, not as top images.
CONTRAST_MAX_VALUE = 2


def quote_description(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """An image description as a one-line JSON string literal, cut to `limit` characters."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class ImageExample:
    """One few-shot image unit: (description, value 0–10) pairs and its explanation."""

    top: tuple[tuple[str, int], ...]
    contrast: tuple[tuple[str, int], ...]
    explanation: str


# Photo-style captions (not emoji names), so no example shares a picture with the
# ground-truth suite; explanations specific enough that a real unit's answer rarely
# equals one (an answer that does is refused as a copy).
IMAGE_EXAMPLES: tuple[ImageExample, ...] = (
    ImageExample(
        top=(
            ("a steam train crossing a stone bridge", 10),
            ("a red tram in a city street", 9),
            ("a high-speed train at a platform", 9),
            ("an underground metro carriage", 7),
            ("a bus stopped at traffic lights", 3),
        ),
        contrast=(
            ("a bowl of oranges on a table", 0),
            ("a child riding a bicycle", 1),
        ),
        explanation="trains, trams and other vehicles that run on rails",
    ),
    ImageExample(
        top=(
            ("a zebra standing in tall grass", 10),
            ("a man in a striped shirt", 8),
            ("a striped beach umbrella", 7),
            ("a tiger lying in the shade", 6),
            ("a barcode on a cardboard box", 4),
        ),
        contrast=(
            ("a plain white wall", 0),
            ("a brown horse in a field", 1),
        ),
        explanation="stripes and striped patterns, as on zebras and striped clothing",
    ),
)

CAPTIONS_SYSTEM = (
    "You are helping to understand the individual neurons of a vision model. For each "
    "neuron you are shown the images it responds to most, each written as a short text "
    "description in quotes, with the neuron's activation from 0 (silent) to 10 (its "
    "strongest response), strongest first, and then images on which it is weak or silent. "
    "Work out what the strongly activating images have in common that the weak ones lack, "
    "and describe it in one short phrase. Describe the visual concept, do not just list "
    "the images."
)

PIXELS_SYSTEM = (
    "You are helping to understand a neuron of a vision model. You are shown the images "
    "it responds to most, strongest first, each with the neuron's activation from 0 "
    "(silent) to 10 (its strongest response); where the neuron fired inside an image is "
    "shaded red to yellow (yellow: strongest). Then come images on which it is weak or "
    "silent. Work out what the strongly activating images (and the shaded parts) have in "
    "common that the weak ones lack, and describe it in one short phrase. Describe the "
    "visual concept, do not just list the images."
)

TOP_HEADING = "Images, strongest first:"
CONTRAST_HEADING = "Weak or silent images:"


def _rows(images: Sequence[tuple[str, int]]) -> list[str]:
    return [f"{k}. {quote_description(d)} {v}" for k, (d, v) in enumerate(images, start=1)]


def neuron_block(
    number: int, top: Sequence[tuple[str, int]], contrast: Sequence[tuple[str, int]]
) -> str:
    """One unit's images: numbered quoted descriptions with their 0–10 values."""
    lines = [f"Neuron {number}", TOP_HEADING, *_rows(top)]
    if contrast:
        lines += [CONTRAST_HEADING, *_rows(contrast)]
    return "\n".join(lines) + "\n"


def answer_line(number: int, explanation: str | None = None) -> str:
    head = f"Explanation of neuron {number} behavior: {ANSWER_PREFIX}"
    return head if explanation is None else f"{head} {explanation}."


def _completing(number: int) -> str:
    return f'\nAnswer in the same form, completing: "{answer_line(number)} ..."'


def build_captions_prompt(
    top: Sequence[tuple[str, int]],
    contrast: Sequence[tuple[str, int]] = (),
    *,
    n_examples: int = 2,
) -> ExplainPrompt:
    """The text-only prompt: the few-shot units, then this unit's images (values 0–10).

    `top` strongest first, `contrast` the weak images; descriptions are quoted.
    """
    if not top:
        raise ValueError("cannot explain an image unit without top images")
    n_ex = max(0, min(n_examples, len(IMAGE_EXAMPLES)))
    messages: list[dict[str, str]] = [{"role": "system", "content": CAPTIONS_SYSTEM}]
    text = [CAPTIONS_SYSTEM + "\n"]
    for k, ex in enumerate(IMAGE_EXAMPLES[:n_ex], start=1):
        block = neuron_block(k, ex.top, ex.contrast)
        messages.append({"role": "user", "content": block})
        messages.append({"role": "assistant", "content": answer_line(k, ex.explanation)})
        text.append(f"\n{block}{answer_line(k, ex.explanation)}\n")
    target = n_ex + 1
    block = neuron_block(target, top, contrast)
    messages.append({"role": "user", "content": block + _completing(target)})
    text.append(f"\n{block}{answer_line(target)}")
    return ExplainPrompt(
        messages=messages,
        text="".join(text),
        n_excerpts=len(top) + len(contrast),
        prompt_version=CAPTIONS_VERSION,
    )


@dataclass(frozen=True)
class PixelImage:
    """One picture of a pixels prompt: its data URL (overlay drawn), value and description."""

    url: str
    value: int
    description: str | None = None


def build_pixels_messages(
    top: Sequence[PixelImage], contrast: Sequence[PixelImage] = ()
) -> list[Message]:
    """The vision-language prompt: instructions, each image part after its activation."""
    if not top:
        raise ValueError("cannot explain an image unit without top images")
    from neuroscribe.llm.messages import image_part

    content: list[ContentPart] = [text_part(f"Neuron 1\n{TOP_HEADING}")]

    def add(k: int, img: PixelImage) -> None:
        label = f"\nImage {k}: activation {img.value}"
        if img.description:
            label += f" (described as {quote_description(img.description)})"
        content.append(text_part(label))
        content.append(image_part(img.url))

    for k, img in enumerate(top, start=1):
        add(k, img)
    if contrast:
        content.append(text_part(f"\n{CONTRAST_HEADING}"))
        for k, img in enumerate(contrast, start=len(top) + 1):
            add(k, img)
    # "neuron 1": the answer form the cleaner strips (`clean.explanation_or_reason`).
    content.append(text_part(_completing(1)))
    return [
        {"role": "system", "content": PIXELS_SYSTEM},
        {"role": "user", "content": content},
    ]


__all__ = [
    "CAPTIONS_VERSION",
    "IMAGE_EXAMPLES",
    "IMAGE_EXPLAIN_VERSIONS",
    "MAX_DESCRIPTION_CHARS",
    "PIXELS_VERSION",
    "ImageExample",
    "PixelImage",
    "build_captions_prompt",
    "build_pixels_messages",
    "neuron_block",
    "quote_description",
]
