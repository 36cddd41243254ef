"""The multimodal (typographic) check: does the unit respond to its concept written as text?

OpenAI's multimodal neurons in CLIP respond to a concept whether it is photographed,
drawn or written ("typographic attacks": the word "iPod" on a paper label turns an apple
into an iPod). For a unit and its explanation this module renders the explanation's key
words as pictures — plain black text on white, and written on a white label stuck onto
photos the unit does not respond to — and measures the unit on them, beside its mean
response to its own top images and to neutral control words rendered the same way:

    responds to the word "spider" rendered as text at 0.80× its top-image response
    (unrelated words 0.10×); writing it on unrelated photos raises the unit by +0.35
    (0.40× its top response)

For the image-embedding dimensions of CLIP-like subjects (layer `embeds`) it also reads
the concept through the text tower: dimension d of the key word's text embedding against
the control words' (a z-score), which says whether the concept itself, not its picture,
points along that dimension.

Results go to `<run>/typographic.jsonl` (one `TypographicResult` per unit, explanation
and subject; appended whole, so a killed check resumes), and every probe picture goes to
the run's image store so the report can show them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import append_jsonl, read_jsonl_if_exists
from neuroscribe.schema import ActivationRecord, Explanation, ImageRef, NeuronRecord, utc_now
from neuroscribe.vision.store import ImageStore, to_rgb

log = logging.getLogger(__name__)

TYPOGRAPHIC_FILE = "typographic.jsonl"  # in the run directory, beside scores.jsonl
TYPOGRAPHIC_SCHEMA_VERSION = 1
EMBEDS_LAYER = "embeds"  # the image embedding's dimensions: the text tower applies

# Everyday words picked to be unlike the concepts vision units tend to find (no animals,
# foods, faces, vehicles, colours or scenes): what the unit does for *any* written word.
CONTROL_WORDS: tuple[str, ...] = ("table", "seven", "window", "paper", "river", "number")

# Function words, plus the words explanations use about themselves ("images of", "the
# neuron fires on"), which would be rendered as probes of nothing.
_STOPWORD_TEXT = """
    a about above after again against all almost also although always am among an and any
    are as at be because been before being below between both but by can could did do does
    doing down during each either else even ever every few for from further had has have
    having he her here hers him his how however if in into is it its itself just least
    less like may me mainly might more most mostly much must my near neither nor not of off
    often on once only onto or other others our out over own per perhaps rather same she
    should since so some such than that the their them then there these they this those
    though through to too toward towards under until up upon us usually very via was we
    were what when where whether which while who whom whose why will with within without
    would yet you your
    neuron neurons unit units feature features activates activate activating activation
    activations fires fire firing responds respond response detects detect detecting finds
    find found seems appears looks related relating involving including includes contain
    containing contains show shows showing shown depicting depicts depict image images
    picture pictures photo photos photograph photographs thing things object objects
    something various different many several kind kinds type types sort lot lots mostly
    mainly especially particularly certain general generally specific concept concepts
    word words text token tokens visual visually typically often
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
MIN_WORD_LENGTH = 3

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def key_words(explanation: str, k: int = 3) -> list[str]:
    """The explanation's first `k` content words, lower-cased, in order, each once.

    Stopwords, explanation boilerplate ("images of", "neuron"), words shorter than
    three letters, numbers and punctuation are dropped; a possessive "'s" is cut.
    """
    if k < 1:
        raise ConfigError(f"k={k}: ask for at least one key word")
    out: list[str] = []
    for m in _WORD.finditer(explanation):
        w = m.group(0).lower().replace("’", "'")
        w = w.removesuffix("'s")
        if len(w) < MIN_WORD_LENGTH or w in STOPWORDS or w in out:
            continue
        out.append(w)
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- rendering


def _font(size: int) -> tuple[Any, float]:
    """Pillow's built-in font at `size` px, and the scale still to apply to its drawing.

    Pillow >= 10.1 ships a scalable font (`load_default(size=)`, FreeType); without
    FreeType (or on older Pillow) the bitmap default is ~11 px, so the caller draws it
    small and scales the drawing up. No system font is needed either way.
    """
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        font = ImageFont.load_default()
    if isinstance(font, ImageFont.FreeTypeFont):
        return font, size / font.size
    return font, size / 11.0


def _text_image(word: str, height_px: int, max_width_px: int) -> Any:
    """The word in black on white, as tall as `height_px` and at most `max_width_px` wide."""
    from PIL import Image, ImageDraw

    font, scale = _font(max(8, height_px))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), word, font=font)
    w, h = max(1, right - left), max(1, bottom - top)
    pad = max(1, h // 6)
    img = Image.new("RGB", (w + 2 * pad, h + 2 * pad), "white")
    ImageDraw.Draw(img).text((pad - left, pad - top), word, font=font, fill="black")
    # One rescale does both: the bitmap fallback drawn small, and a word too long.
    factor = min(scale, max_width_px / img.width)
    if abs(factor - 1.0) > 1e-6:
        size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def render_word(word: str, size: int = 224) -> Any:
    """The word as a picture: large black text centred on a white `size`×`size` square."""
    from PIL import Image

    if not word.strip():
        raise ConfigError("cannot render an empty word")
    canvas = Image.new("RGB", (size, size), "white")
    text = _text_image(word, height_px=size // 4, max_width_px=int(size * 0.9))
    canvas.paste(text, ((size - text.width) // 2, (size - text.height) // 2))
    return canvas


def write_on(photo: Any, word: str) -> Any:
    """`photo` with `word` written on a white label stuck on it (the "iPod" sticker attack).

    The label sits centred, a little below the middle, with a thin dark border; the
    photo keeps its size. The input is not changed.
    """
    from PIL import ImageDraw

    if not word.strip():
        raise ConfigError("cannot write an empty word")
    out = to_rgb(photo).copy()
    side = min(out.size)
    text = _text_image(word, height_px=max(8, side // 7), max_width_px=int(out.width * 0.7))
    pad = max(2, side // 40)
    box_w, box_h = text.width + 2 * pad, text.height + 2 * pad
    x0 = (out.width - box_w) // 2
    y0 = min(out.height - box_h, int(out.height * 0.55))
    y0 = max(0, y0)
    draw = ImageDraw.Draw(out)
    draw.rectangle(
        (x0, y0, x0 + box_w - 1, y0 + box_h - 1),
        fill="white",
        outline=(40, 40, 40),
        width=max(1, side // 112),
    )
    out.paste(text, (x0 + pad, y0 + pad))
    return out


# ---------------------------------------------------------------- the result


class ProbeImage(BaseModel):
    """One rendered probe and the unit's pooled activation on it."""

    kind: Literal["word", "control", "written", "photo"]
    word: str | None  # None for a photo without a word
    photo: str | None = None  # the sha256 of the photo it was written on
    activation: float
    image: ImageRef


class TextTower(BaseModel):
    """The concept through a CLIP-like subject's text tower, for an `embeds` dimension."""

    defined: bool
    note: str
    word: str | None = None
    word_value: float | None = None  # dimension d of the key word's text embedding
    control_mean: float | None = None
    control_std: float | None = None
    difference: float | None = None  # word_value - control_mean
    z: float | None = None  # difference / control_std


class TypographicResult(BaseModel):
    """The multimodal check of one unit and one explanation, against one subject."""

    schema_version: int = TYPOGRAPHIC_SCHEMA_VERSION
    unit_id: str
    explanation_id: str | None
    explanation: str
    subject: str
    layer: str
    unit_index: int
    pooling: Literal["max", "mean"]
    key_words: list[str]
    control_words: list[str]
    top_response: float | None  # mean activation over the unit's top images (the record)
    n_top: int
    word_responses: dict[str, float] = Field(default_factory=dict)  # each key word, as text
    control_responses: dict[str, float] = Field(default_factory=dict)
    word: str | None = None  # the key word the headline is about (the strongest)
    word_response: float | None = None
    control_response: float | None = None  # mean over the control words
    word_ratio: float | None = None  # word_response / top_response
    control_ratio: float | None = None
    # Written on unrelated photos: mean over photos of (with the word - without), per word.
    attack_effects: dict[str, float] = Field(default_factory=dict)
    attack_effect: float | None = None  # for `word`
    attack_ratio: float | None = None  # attack_effect / top_response
    n_photos: int = 0
    text_tower: TextTower | None = None
    probes: list[ProbeImage] = Field(default_factory=list)
    reason: str | None = None  # why a number is missing (no ratio, no key words, ...)
    summary: str
    created_at: str = Field(default_factory=utc_now)

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.unit_id, self.explanation_id, self.subject)


# ---------------------------------------------------------------- the maths (pure)


class VisionSubjectLike(Protocol):
    """What the check needs of a subject (see `neuroscribe.vision.subjects`)."""

    name: str

    def layers(self) -> list[str]: ...

    def n_units(self, layer: str) -> int: ...

    def activations(self, images: list[Any], layers: list[str]) -> dict[str, Any]: ...


def pooled(values: Any, pooling: str) -> list[float]:
    """One number per image from a layer's (n, H, W) or (n,) activations of one unit."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        out = arr
    else:
        flat = arr.reshape(arr.shape[0], -1)
        out = flat.max(axis=1) if pooling == "max" else flat.mean(axis=1)
    if not np.isfinite(out).all():
        raise DataError("the subject returned a non-finite activation on a probe image")
    return [float(v) for v in out]


def ratio(value: float | None, top: float | None) -> float | None:
    """value / top, or None when there is no positive top response to compare against."""
    if value is None or top is None or not top > 0:
        return None
    return value / top


def _signed(v: float) -> str:
    return f"{'+' if v >= 0 else '−'}{abs(v):.2f}"


def summarise(r: TypographicResult) -> str:
    """The one line a person reads: the word's response beside the top images' and controls'."""
    if not r.key_words or r.word is None or r.word_response is None:
        return r.reason or "no key words to render"
    if r.word_ratio is not None:
        head = (
            f'responds to the word "{r.word}" rendered as text at {r.word_ratio:.2f}× '
            "its top-image response"
        )
        if r.control_ratio is not None:
            head += f" (unrelated words {r.control_ratio:.2f}×)"
    else:
        head = (
            f'responds to the word "{r.word}" rendered as text at {r.word_response:.2f} '
            f"(no ratio: its top-image response is "
            f"{'unknown' if r.top_response is None else f'{r.top_response:.2f}'}, not positive)"
        )
        if r.control_response is not None:
            head += f" (unrelated words {r.control_response:.2f})"
    if r.attack_effect is not None:
        verb = "raises" if r.attack_effect >= 0 else "lowers"
        head += f"; writing it on unrelated photos {verb} the unit by {_signed(r.attack_effect)}"
        if r.attack_ratio is not None:
            head += f" ({r.attack_ratio:.2f}× its top response)"
    if r.text_tower is not None and r.text_tower.defined and r.text_tower.z is not None:
        head += (
            f"; text tower: dimension {r.unit_index} of the text embedding of "
            f'"{r.text_tower.word}" is {r.text_tower.z:+.1f} SD from unrelated words'
        )
    return head + verdict(r.word_response, r.control_responses)


def verdict(word_response: float, control_responses: dict[str, float]) -> str:
    """Whether the written word stands out from the control words at all: a ratio means
    little when any written word moves the unit as much (a CNN reading ink, not words)."""
    if not control_responses:
        return ""
    n = len(control_responses)
    as_much = sum(v >= word_response for v in control_responses.values())
    if as_much == 0:
        return f" — above all {n} unrelated words"
    return (
        f" — no more than unrelated words ({as_much} of {n} respond as much): "
        "no sign the unit reads the word"
    )


def headline(
    word_responses: dict[str, float],
    control_responses: dict[str, float],
    attack_effects: dict[str, float],
    top_response: float | None,
) -> dict[str, Any]:
    """The headline numbers: the strongest key word, its ratios, the controls' mean ratio."""
    if not word_responses:
        return {}
    word = max(word_responses, key=lambda w: word_responses[w])
    control = (
        sum(control_responses.values()) / len(control_responses) if control_responses else None
    )
    effect = attack_effects.get(word)
    return {
        "word": word,
        "word_response": word_responses[word],
        "control_response": control,
        "word_ratio": ratio(word_responses[word], top_response),
        "control_ratio": ratio(control, top_response),
        "attack_effect": effect,
        "attack_ratio": ratio(effect, top_response),
    }


def top_response(record: NeuronRecord) -> tuple[float | None, int]:
    """The unit's mean pooled activation over its top images, and how many there were."""
    values = [r.activations[0] for r in record.most_positive_activation_records if r.image]
    if not values:
        return None, 0
    return sum(values) / len(values), len(values)


def record_pooling(record: NeuronRecord) -> Literal["max", "mean"]:
    for r in (*record.most_positive_activation_records, *record.random_sample):
        if r.image is not None:
            return r.image.pooling
    raise DataError(f"unit {record.unit_id} has no image excerpts: the check is for image units")


# ---------------------------------------------------------------- the check


def _unit_activations(
    subject: VisionSubjectLike, images: list[Any], layer: str, unit_index: int, pooling: str
) -> list[float]:
    if not images:
        return []
    out = subject.activations(images, [layer])
    if layer not in out:
        raise DataError(f"subject {subject.name} returned no activations for layer {layer!r}")
    acts = out[layer]
    if int(acts.shape[0]) != len(images):
        raise DataError(
            f"subject {subject.name} returned {acts.shape[0]} rows for {len(images)} images"
        )
    if not 0 <= unit_index < int(acts.shape[1]):
        raise ConfigError(
            f"unit {unit_index} is out of range: layer {layer!r} of {subject.name} has "
            f"{acts.shape[1]} units"
        )
    return pooled(acts[:, unit_index], pooling)


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def text_features_of(subject: Any) -> Callable[[list[str]], Any] | None:
    """The subject's text tower as texts -> [n, d] embeddings, or None if it has none.

    A subject may offer `text_features` itself; a transformers subject whose model has
    `get_text_features` (CLIPModel, SiglipModel) gets one here, with the tokenizer from
    the same source. Its output is the projected text embedding without normalisation,
    as the subject's `embeds` layer is the projected image embedding without it.
    """
    own = getattr(subject, "text_features", None)
    if own is not None:
        return own
    model = getattr(subject, "model", None)
    source = getattr(subject, "source", None)
    if model is None or source is None or not hasattr(model, "get_text_features"):
        return None
    # SigLIP was trained on text padded to its full length; CLIP reads up to its EOS token.
    padding: bool | str = "max_length" if "siglip" in type(model).__name__.lower() else True

    def features(texts: list[str]) -> Any:
        import torch

        try:
            tok = _tokenizer(str(source))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{subject.name}: no tokenizer for its text tower in {source!r}: {exc}"
            ) from None
        batch = tok(texts, padding=padding, truncation=True, return_tensors="pt")
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model.get_text_features(**{k: v.to(device) for k, v in batch.items()})
        # transformers 5 returns an output object whose pooler_output is projected.
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return emb.float().cpu().numpy()

    return features


def text_tower(
    subject: Any, layer: str, unit_index: int, words: Sequence[str], controls: Sequence[str]
) -> TextTower | None:
    """Dimension `unit_index` of the text embeddings of `words` against the controls'.

    Defined for the `embeds` layer of subjects with a text tower (CLIP-like); None for
    subjects without one (a classifier), a note for other layers of CLIP subjects. The
    words are embedded alone, not in a prompt template: the concept, nothing else.
    """
    features = text_features_of(subject)
    if features is None:
        return None
    if layer != EMBEDS_LAYER:
        return TextTower(
            defined=False,
            note=f"text tower: n/a for MLP neurons and channels (layer {layer!r}); defined "
            f"for the image embedding's dimensions (layer {EMBEDS_LAYER!r})",
        )
    if not words:
        return TextTower(defined=False, note="text tower: no key words")
    import numpy as np

    emb = np.asarray(features([*words, *controls]), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(words) + len(controls):
        raise DataError(f"subject {subject.name}: text_features gave shape {emb.shape}")
    if not 0 <= unit_index < emb.shape[1]:
        raise ConfigError(
            f"unit {unit_index} is out of range: the text embedding has {emb.shape[1]} dimensions"
        )
    col = emb[:, unit_index]
    word_vals = dict(zip(words, col[: len(words)].tolist(), strict=True))
    word = max(word_vals, key=lambda w: word_vals[w])
    ctrl = col[len(words) :]
    mean = float(ctrl.mean()) if ctrl.size else None
    std = float(ctrl.std(ddof=1)) if ctrl.size >= 2 else None
    diff = None if mean is None else word_vals[word] - mean
    z = diff / std if diff is not None and std and std > 0 else None
    note = f'text tower: dimension {unit_index} of "{word}"\'s text embedding is ' + (
        f"{word_vals[word]:.3f} vs {mean:.3f} ± {std:.3f} for unrelated words (z {z:+.2f})"
        if z is not None and mean is not None and std is not None
        else f"{word_vals[word]:.3f} (no spread among unrelated words to compare against)"
    )
    return TextTower(
        defined=True,
        note=note,
        word=word,
        word_value=word_vals[word],
        control_mean=mean,
        control_std=std,
        difference=diff,
        z=z,
    )


def typographic_check(
    subject: VisionSubjectLike,
    record: NeuronRecord,
    explanation: str | Explanation,
    *,
    store: ImageStore,
    layer: str | None = None,
    unit_index: int | None = None,
    unrelated_words: Sequence[str] | None = None,
    photos: Sequence[tuple[Any, ImageRef | None]] | Sequence[Any] = (),
    k: int = 3,
    size: int = 224,
) -> TypographicResult:
    """Measure the unit on its explanation's key words rendered as pictures.

    `layer` / `unit_index` default to the record's. `unrelated_words` default to
    `CONTROL_WORDS` (words of the explanation are left out). `photos` are pictures the
    unit does not respond to (PIL images, or (PIL image, its ImageRef) pairs); each key
    word is written on each, and the unit is measured with and without the word. Probe
    pictures are stored in `store`. Pooling is the record's (`ImageRef.pooling`).
    """
    exp = explanation if isinstance(explanation, Explanation) else None
    text = exp.text if exp is not None else str(explanation)
    layer = str(layer if layer is not None else record.layer)
    if unit_index is None:
        if record.index is None:
            raise DataError(f"unit {record.unit_id} has no index; pass unit_index")
        unit_index = int(record.index)
    pooling = record_pooling(record)
    top, n_top = top_response(record)
    words = key_words(text, k=k)
    controls = [w for w in (unrelated_words or CONTROL_WORDS) if w.lower() not in set(words)]
    controls = [w for w in controls if w.lower() not in set(key_words(text, k=1000))]
    base = {
        "unit_id": record.unit_id,
        "explanation_id": exp.explanation_id if exp is not None else None,
        "explanation": text,
        "subject": subject.name,
        "layer": layer,
        "unit_index": unit_index,
        "pooling": pooling,
        "key_words": words,
        "control_words": controls,
        "top_response": top,
        "n_top": n_top,
    }
    if not words:
        reason = f"no content words in the explanation {text!r}: nothing to render"
        return TypographicResult(**base, reason=reason, summary=reason)

    # Every probe picture, measured in one call of the subject: (kind, word, photo, picture).
    pics = [p if isinstance(p, tuple) else (p, None) for p in photos]
    photo_refs = [ref or store.put(im, source="typographic:photo") for im, ref in pics]
    items: list[tuple[str, str | None, ImageRef | None, Any]] = [
        *(("word", w, None, render_word(w, size)) for w in words),
        *(("control", w, None, render_word(w, size)) for w in controls),
        *(("photo", None, ref, im) for (im, _), ref in zip(pics, photo_refs, strict=True)),
        *(
            ("written", w, ref, write_on(im, w))
            for w in words
            for (im, _), ref in zip(pics, photo_refs, strict=True)
        ),
    ]
    values = _unit_activations(subject, [it[3] for it in items], layer, unit_index, pooling)
    probes: list[ProbeImage] = []
    for (kind, word, photo, im), v in zip(items, values, strict=True):
        if kind == "photo" and photo is not None:
            ref = photo.model_copy(update={"spatial": None, "caption": "photo without a word"})
        else:
            caption = f'the word "{word}"' + (" written on a photo" if kind == "written" else "")
            ref = store.put(im, source=f"typographic:{kind}", caption=caption)
        probes.append(
            ProbeImage(
                kind=kind,  # type: ignore[arg-type]
                word=word,
                photo=photo.sha256 if photo is not None else None,
                activation=v,
                image=ref.model_copy(update={"pooling": pooling}),
            )
        )

    def responses(kind: str) -> dict[str, float]:
        return {p.word: p.activation for p in probes if p.kind == kind and p.word is not None}

    word_responses, control_responses = responses("word"), responses("control")
    plain = {p.photo: p.activation for p in probes if p.kind == "photo"}
    attack_effects: dict[str, float] = {}
    for w in words if pics else []:
        diffs = [
            p.activation - plain[p.photo] for p in probes if p.kind == "written" and p.word == w
        ]
        attack_effects[w] = sum(diffs) / len(diffs)

    result = TypographicResult(
        **base,
        word_responses=word_responses,
        control_responses=control_responses,
        attack_effects=attack_effects,
        n_photos=len(pics),
        text_tower=text_tower(subject, layer, unit_index, words, controls),
        probes=probes,
        summary="",
        **headline(word_responses, control_responses, attack_effects, top),
    )
    reasons = []
    if result.word_ratio is None:
        reasons.append(
            "no ratio: the unit's mean top-image response is "
            + ("unknown (no top images)" if top is None else f"{top:.3f}, not positive")
        )
    if not pics:
        reasons.append("no unrelated photos to write the word on")
    result.reason = "; ".join(reasons) or None
    result.summary = summarise(result)
    return result


# ---------------------------------------------------------------- a run


def typographic_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / TYPOGRAPHIC_FILE


def read_typographic(run_dir: Path | str) -> list[TypographicResult]:
    """Every check of the run (a missing file is none); the last line per key wins."""
    latest: dict[tuple[str, str | None, str], TypographicResult] = {}
    for r in read_jsonl_if_exists(typographic_path(run_dir), TypographicResult):
        latest[r.key] = r
    return list(latest.values())


def unrelated_photos(
    record: NeuronRecord, store: ImageStore, n: int = 3
) -> list[tuple[Any, ImageRef]]:
    """The unit's `n` weakest random images (pictures it does not respond to), opened."""
    seen: set[str] = set()
    weakest: list[ActivationRecord] = []
    for r in sorted(record.random_sample, key=lambda r: r.activations[0]):
        if r.image is None or r.image.sha256 in seen:
            continue
        seen.add(r.image.sha256)
        weakest.append(r)
    out = []
    for r in weakest:
        assert r.image is not None
        try:
            out.append((store.open(r.image), r.image))
        except DataError as e:
            log.warning("unit %s: skipping a missing random image: %s", record.unit_id, e)
        if len(out) == n:
            break
    return out


def latest_explanations(explanations: Sequence[Explanation]) -> dict[str, Explanation]:
    """Each unit's latest explanation (the last line of explanations.jsonl)."""
    out: dict[str, Explanation] = {}
    for e in explanations:
        out[e.unit_id] = e
    return out


def run_typographic_checks(
    run_dir: Path | str,
    subject_spec: str | VisionSubjectLike,
    *,
    units: Sequence[str] | None = None,
    n_photos: int = 3,
    k: int = 3,
) -> list[TypographicResult]:
    """Check every image unit's latest explanation; checks already in the file are skipped.

    `subject_spec` is a spec for `load_vision_subject` (or a loaded subject): the model
    that recorded the units. `units` limits the check to those (each must be an image
    unit of the run; one not explained yet, e.g. its explanation failed, is skipped).
    The unrelated photos are each unit's `n_photos` weakest random pictures. Returns the
    new results, including those with nothing to measure (no key words), which are not
    written (no numbers; rerunning them costs nothing).
    """
    from neuroscribe.rundir import RunDir

    rd = RunDir(run_dir)
    records = {r.unit_id: r for r in rd.records()}
    explanations = latest_explanations(rd.explanations())
    if units is not None:
        for u in units:
            if u not in records:
                raise ConfigError(f"{rd.root}: no record of unit {u!r}")
            if records[u].modality != "image":
                raise ConfigError(f"unit {u} is a text unit: the typographic check is for images")
        unexplained = [u for u in units if u not in explanations]
        if unexplained:
            log.warning(
                "typographic check: %d unit(s) have no explanation yet and are skipped (first: %s)",
                len(unexplained),
                unexplained[0],
            )
    wanted = list(units) if units is not None else list(explanations)
    todo = [
        (records[u], explanations[u])
        for u in wanted
        if u in records and u in explanations and records[u].modality == "image"
    ]
    name = subject_spec if isinstance(subject_spec, str) else subject_spec.name
    done = {r.key for r in read_typographic(rd.root)}
    if all((r.unit_id, e.explanation_id, name) in done for r, e in todo):
        return []  # nothing new: the subject is not even loaded
    if isinstance(subject_spec, str):
        from neuroscribe.vision.subjects import load_vision_subject

        subject: VisionSubjectLike = load_vision_subject(subject_spec)
    else:
        subject = subject_spec
    results = []
    with rd.lock():
        done = {r.key for r in read_typographic(rd.root)}
        for rec, exp in todo:
            if (rec.unit_id, exp.explanation_id, subject.name) in done:
                continue
            if rec.model and rec.model != subject.name:
                raise ConfigError(
                    f"unit {rec.unit_id} was recorded from {rec.model!r}, not {subject.name!r}: "
                    "check it with the subject that recorded it"
                )
            result = typographic_check(
                subject,
                rec,
                exp,
                store=rd.images,
                photos=unrelated_photos(rec, rd.images, n_photos),
                k=k,
            )
            if result.key_words:
                append_jsonl(typographic_path(rd.root), [result])
            results.append(result)
        if results:
            rd.update_manifest(
                "typographic",
                {
                    "subject": subject.name,
                    "k": k,
                    "n_photos": n_photos,
                    "control_words": list(CONTROL_WORDS),
                    "schema_version": TYPOGRAPHIC_SCHEMA_VERSION,
                },
            )
    return results
