"""Simulation prompts for image units: an explanation in, a predicted activation per image.

Captions route (any text LLM), one prompt per explanation:
- exact (a local model): the completion-style text below; each held-out image is a row
  `"<description>"<TAB>` followed by the value slot, and the slot's digit distribution is
  read from the model's logits (`vision.simulate`, with the exact simulator's machinery).
  `layout` "each": every image continues the shared prefix on its own (no image sees
  another's row; one KV-cached prefix, the rows in batches); "list": all images are rows
  of one list.
- JSON (API models): the same instructions as chat messages, the images numbered, the
  answer a JSON object mapping each number to an integer (`{"1": 7, "2": 0}`): a number
  the model leaves out or spoils is a missing value, never a guess.

Pixels route (vision-language models): the explanation, then each image as an image
part after its number (the plain picture: an activation map would give the answer
away), and the same JSON answer.

Descriptions are untrusted: written as JSON string literals (`quote_description`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from neuroscribe.errors import ConfigError
from neuroscribe.llm.messages import ContentPart, Message, image_part, text_part
from neuroscribe.prompts.explain_images import quote_description
from neuroscribe.prompts.format import rescale

UNKNOWN = "unknown"
PIXELS_SIM_VERSION = "simulate-images-pixels-v1"
JSON_SIM_VERSION = "simulate-images-json-v1"


def _system(scale_max: int) -> str:
    return (
        "You are predicting how a neuron of a vision model responds to images. You get an "
        "explanation of what the neuron looks for and images, each written as a short text "
        "description in quotes. For every image give the neuron's activation, an integer "
        f"from 0 (no response) to {scale_max} (strongest response). Images that match the "
        "explanation get high values; images that do not match get 0."
    )


def _system_fits(scale_max: int) -> str:
    # The shorter instruction of the text simulator's simulate-v2: "how well does it fit".
    return (
        "Each neuron below fires on the images its explanation describes and on nothing "
        "else. Next to every image description write how well the image fits the "
        f"explanation: 0 if it does not fit, 1 to {scale_max} if it does (higher fits better)."
    )


@dataclass(frozen=True)
class SimExample:
    explanation: str
    rows: tuple[tuple[str, int], ...]  # (description, value 0–10)


# Photo-style captions, no emoji names (the ground-truth suite's pictures), values on 0–10.
SIM_EXAMPLES: tuple[SimExample, ...] = (
    SimExample(
        explanation="trains, trams and other vehicles that run on rails",
        rows=(
            ("a bowl of oranges on a table", 0),
            ("a steam train crossing a stone bridge", 10),
            ("a child riding a bicycle", 0),
            ("a red tram in a city street", 9),
            ("a bus stopped at traffic lights", 2),
            ("a dog asleep on a sofa", 0),
        ),
    ),
    SimExample(
        explanation="stripes and striped patterns, as on zebras and striped clothing",
        rows=(
            ("a plain white wall", 0),
            ("a man in a striped shirt", 8),
            ("a cup of coffee", 0),
            ("a zebra standing in tall grass", 10),
            ("a brown horse in a field", 1),
            ("a striped beach umbrella", 7),
        ),
    ),
)


@dataclass(frozen=True)
class ImageSimulationStyle:
    """One versioned captions-route simulation method for a local model (exact).

    `layout`: "each" (every image its own continuation of the prefix) or "list".
    `readout` and `contrast` as in the text simulator's styles (`simulator.readout`):
    "expected" Σ v·p or "p-active" P(value > 0); `contrast` an explanation whose
    prediction is subtracted image by image (None: none).
    """

    version: str
    system: Callable[[int], str]
    layout: Literal["each", "list"]
    readout: str = "expected"
    contrast: str | None = None
    header: str = "Explanation: {explanation}\nImages:\n"


CONTRAST_EXPLANATION = "nothing in particular"

STYLES: dict[str, ImageSimulationStyle] = {
    s.version: s
    for s in (
        ImageSimulationStyle("simulate-images-captions-v1", _system, "each"),
        ImageSimulationStyle("simulate-images-captions-list-v1", _system, "list"),
        ImageSimulationStyle(
            "simulate-images-captions-fits-v1",
            _system_fits,
            "each",
            readout="p-active",
            contrast=CONTRAST_EXPLANATION,
            header='Fires on: {explanation}\nFits "{explanation}"?\n',
        ),
        ImageSimulationStyle(
            "simulate-images-captions-contrast-v1", _system, "each", contrast=CONTRAST_EXPLANATION
        ),
    )
}
# Chosen on the dev half of the emoji ground-truth suite (bench/vision_discrimination.py).
DEFAULT_CAPTIONS_STYLE = "simulate-images-captions-v1"
IMAGE_SIM_VERSIONS = (*STYLES, JSON_SIM_VERSION, PIXELS_SIM_VERSION)


def image_style(version: str | None) -> ImageSimulationStyle:
    key = version or DEFAULT_CAPTIONS_STYLE
    if key not in STYLES:
        raise ConfigError(
            f"unknown image simulation prompt {key!r}; choose one of {', '.join(STYLES)}"
        )
    return STYLES[key]


@dataclass
class ImageSimulationPrompt:
    """The completion-style captions prompt: a prefix, one row per image, the slot text.

    `rows[i]` is the quoted description; the value of row i is read right after
    `row_head(i)`. `shared_chars`: the prefix characters that do not depend on the
    explanation (instructions, few-shot units).
    """

    prefix: str
    rows: list[str]
    scale_max: int
    version: str
    layout: str
    slot: str = UNKNOWN
    shared_chars: int = 0

    def row_head(self, i: int) -> str:
        return f"{self.rows[i]}\t"

    def text(self, fill: str | None = None) -> str:
        """The whole prompt as the list layout writes it (for counting and display)."""
        fill = self.slot if fill is None else fill
        return self.prefix + "".join(f"{self.row_head(i)}{fill}\n" for i in range(len(self.rows)))


def build_captions_sim_prompt(
    explanation: str,
    descriptions: Sequence[str],
    *,
    scale_max: int = 10,
    n_examples: int = 2,
    version: str | None = None,
) -> ImageSimulationPrompt:
    """The exact route's prompt: system text, few-shot units with values, the target."""
    style = image_style(version)
    units = [(ex.explanation, ex.rows) for ex in SIM_EXAMPLES[: max(0, n_examples)]]
    parts = [style.system(scale_max) + "\n"]
    for k, (expl, rows) in enumerate(units, start=1):
        text = "".join(f"{quote_description(d)}\t{rescale(v, 10, scale_max)}\n" for d, v in rows)
        parts.append(f"\nNeuron {k}\n" + style.header.format(explanation=expl) + text)
    shared = sum(len(p) for p in parts)
    n = len(units) + 1
    parts.append(f"\nNeuron {n}\n" + style.header.format(explanation=explanation.strip()))
    return ImageSimulationPrompt(
        prefix="".join(parts),
        rows=[quote_description(d) for d in descriptions],
        scale_max=scale_max,
        version=style.version,
        layout=style.layout,
        shared_chars=shared,
    )


# -- JSON answers (API models, VLMs) ------------------------------------------------------


def values_json_schema(n: int, scale_max: int = 10) -> dict[str, Any]:
    """The answer's schema: one integer 0..scale_max per image number "1".."n"."""
    keys = [str(k) for k in range(1, n + 1)]
    return {
        "type": "object",
        "properties": {k: {"type": "integer", "minimum": 0, "maximum": scale_max} for k in keys},
        "required": keys,
        "additionalProperties": False,
    }


def _json_instructions(scale_max: int, n: int) -> str:
    return (
        f"Answer with a JSON object mapping each image number (1 to {n}) to its activation, "
        f'an integer from 0 to {scale_max}, e.g. {{"1": 0, "2": {scale_max}}}, and nothing else.'
    )


def _numbered(descriptions: Sequence[str]) -> str:
    return "\n".join(f"{k}. {quote_description(d)}" for k, d in enumerate(descriptions, 1))


def build_json_sim_messages(
    explanation: str, descriptions: Sequence[str], *, scale_max: int = 10, n_examples: int = 2
) -> list[Message]:
    """Captions route for chat models: few-shot turns, then the numbered descriptions."""
    messages: list[Message] = [{"role": "system", "content": _system(scale_max)}]
    for ex in SIM_EXAMPLES[: max(0, n_examples)]:
        descs = [d for d, _ in ex.rows]
        messages.append(
            {
                "role": "user",
                "content": f"Explanation: {ex.explanation}\nImages:\n{_numbered(descs)}\n\n"
                + _json_instructions(scale_max, len(descs)),
            }
        )
        answer = {str(k): rescale(v, 10, scale_max) for k, (_, v) in enumerate(ex.rows, 1)}
        messages.append({"role": "assistant", "content": json.dumps(answer)})
    messages.append(
        {
            "role": "user",
            "content": f"Explanation: {explanation.strip()}\nImages:\n{_numbered(descriptions)}"
            f"\n\n" + _json_instructions(scale_max, len(descriptions)),
        }
    )
    return messages


PIXELS_SYSTEM = (
    "You are predicting how a neuron of a vision model responds to images. You get an "
    "explanation of what the neuron looks for and numbered images. For every image give "
    "the neuron's activation: high for images that match the explanation, 0 for images "
    "that do not."
)


def build_pixels_sim_messages(
    explanation: str, urls: Sequence[str], *, scale_max: int = 10
) -> list[Message]:
    """Pixels route: the explanation, each picture after its number, a JSON answer."""
    content: list[ContentPart] = [text_part(f"Explanation: {explanation.strip()}\nImages:")]
    for k, url in enumerate(urls, start=1):
        content.append(text_part(f"\nImage {k}:"))
        content.append(image_part(url))
    content.append(text_part("\n\n" + _json_instructions(scale_max, len(urls))))
    return [{"role": "system", "content": PIXELS_SYSTEM}, {"role": "user", "content": content}]


def parse_values_json(text: str, n: int, scale_max: int) -> list[float | None]:
    """One value per image from a JSON answer; None where it is missing or unusable.

    Accepts an object keyed by image number ("1".."n"; an `activations` object or list
    inside it too) or a list of exactly n values. A value outside 0..scale_max, not a
    number, or a number the answer leaves out is None. Raises nothing: an answer that is
    not JSON at all gives n Nones (the caller decides whether that fails the task).
    """
    missing: list[float | None] = [None] * n
    try:
        obj: Any = json.loads(_json_part(text))
    except (json.JSONDecodeError, ValueError):
        return missing
    if isinstance(obj, dict) and isinstance(obj.get("activations"), dict | list):
        obj = obj["activations"]
    if isinstance(obj, list):
        if len(obj) != n:
            return missing  # which entry is which is unknown: no guess
        return [_value(v, scale_max) for v in obj]
    if not isinstance(obj, dict):
        return missing
    return [_value(obj.get(str(k)), scale_max) for k in range(1, n + 1)]


def _json_part(text: str) -> str:
    """The JSON object or list in an answer (models wrap it in prose or code fences)."""
    text = text.strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON in the answer")
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    if end < start:
        raise ValueError("no JSON in the answer")
    return text[start : end + 1]


def _value(v: Any, scale_max: int) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if not 0 <= v <= scale_max:
        return None
    return float(v)


__all__ = [
    "CONTRAST_EXPLANATION",
    "DEFAULT_CAPTIONS_STYLE",
    "IMAGE_SIM_VERSIONS",
    "JSON_SIM_VERSION",
    "PIXELS_SIM_VERSION",
    "SIM_EXAMPLES",
    "STYLES",
    "ImageSimulationPrompt",
    "ImageSimulationStyle",
    "build_captions_sim_prompt",
    "build_json_sim_messages",
    "build_pixels_sim_messages",
    "image_style",
    "parse_values_json",
    "values_json_schema",
]
