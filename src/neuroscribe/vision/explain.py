"""The image explainer (`image`): explain a vision unit from its top images.

Two routes (`route`):

- `captions`: any text LLM. Each train image is its description (caption, labels or
  CLIP zero-shot labels: `ImageRef.description`, what the recorder put in the excerpt's
  one token) with the activation normalised 0–10 against the strongest train image
  (prompt `explain-images-captions-v1`, `prompts.explain_images`).
- `pixels`: a vision-language chat endpoint. Each train image as an image part, its
  activation map overlaid (`vision.overlay`), after a text part with its activation
  (prompt `explain-images-pixels-v1`). Needs the run directory the images are in.
- `auto` (default): pixels when the model's capabilities say `image_input`, else
  captions. The route is resolved on the first call; the config hashes what was asked.

Contrast images: train images whose normalised value is at most 2 (a unit with few
strong images), plus the task's `contrast` excerpts when the explain stage provides
them (low-activating random excerpts that no held-out split uses; see the module
report). Answers are cleaned and refused exactly as the text explainer's
(`explanation_or_reason`), and an answer that copies one of the image few-shot
explanations is refused too; a sample without an explanation after `max_attempts`
rounds is a failure with its reason, never stored as an explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from neuroscribe.errors import ConfigError, DataError, OutputError
from neuroscribe.explainer.base import ExplainOutcome, ExplainTask
from neuroscribe.explainer.clean import explanation_or_reason
from neuroscribe.explainer.token_rows import ExplainerConfig
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import LLM, clip_raw
from neuroscribe.llm.messages import Message
from neuroscribe.prompts.explain_images import (
    CAPTIONS_VERSION,
    CONTRAST_MAX_VALUE,
    IMAGE_EXAMPLES,
    PIXELS_VERSION,
    PixelImage,
    build_captions_prompt,
    build_pixels_messages,
)
from neuroscribe.prompts.format import approx_token_count
from neuroscribe.scorer.maths import normalize_activations
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate

Route = Literal["auto", "captions", "pixels"]
ROUTES = ("auto", "captions", "pixels")

# Longest side of a picture sent as an image part: what VLMs tile at low cost, and
# emoji or thumbnails are never scaled up.
MAX_SIDE = 512
# Image tokens a dry run counts per picture (OpenAI charges 85 to ~765 by size and
# detail; a 512-pixel picture at "auto" is a few hundred). A planning figure only.
IMAGE_TOKENS_ESTIMATE = 255

_EXAMPLE_ANSWERS = {ex.explanation.lower() for ex in IMAGE_EXAMPLES}


# An answer quoting this many of the prompt's descriptions (in quotes, as the prompt
# writes them) lists images instead of naming a concept.
MAX_QUOTED_DESCRIPTIONS = 3


def image_explanation_or_reason(
    raw: str, descriptions: Sequence[str] = ()
) -> tuple[str | None, str | None]:
    """The text explainer's cleaning and refusals, plus copies of the image few-shots and
    answers that list `MAX_QUOTED_DESCRIPTIONS` or more of the shown descriptions."""
    text, reason = explanation_or_reason(raw)
    if text is None:
        return text, reason
    if text.lower().strip().rstrip(".") in _EXAMPLE_ANSWERS:
        return None, "copies a few-shot example's explanation"
    low = raw.lower()
    quoted = {d for d in descriptions if d.strip() and f'"{d.lower()}' in low}
    if len(quoted) >= MAX_QUOTED_DESCRIPTIONS:
        return None, f"lists {len(quoted)} of the images' descriptions instead of a concept"
    return text, reason


def description(x: Excerpt) -> str:
    """What a text-only prompt says about an image excerpt: its one token (the image's
    description when it was recorded)."""
    return x.record.tokens[0]


def ranked_images(
    train: Sequence[Excerpt], contrast: Sequence[Excerpt] = ()
) -> tuple[list[tuple[Excerpt, int]], list[tuple[Excerpt, int]]]:
    """(top, contrast) excerpts with their 0–10 values against the strongest train image.

    Train images at or below `CONTRAST_MAX_VALUE` join the contrast list (strongest
    first there too); contrast excerpts are normalised against the same maximum.
    """
    if not train:
        raise OutputError("no train images to explain")
    peak = max(x.record.max_activation for x in train)
    ordered = sorted(train, key=lambda x: -x.record.max_activation)
    values = normalize_activations(
        [[x.record.max_activation] for x in ordered], max_activation=peak
    )
    top = [(x, v[0]) for x, v in zip(ordered, values, strict=True)]
    strong = [(x, v) for x, v in top if v > CONTRAST_MAX_VALUE]
    weak = [(x, v) for x, v in top if v <= CONTRAST_MAX_VALUE]
    extra = sorted(contrast, key=lambda x: -x.record.max_activation)
    extra_values = normalize_activations(
        [[x.record.max_activation] for x in extra], max_activation=peak
    )
    weak += [(x, v[0]) for x, v in zip(extra, extra_values, strict=True)]
    return strong, weak


def _shrink(pil: Any, max_side: int) -> Any:
    if max(pil.size) <= max_side:
        return pil
    copy = pil.copy()
    copy.thumbnail((max_side, max_side))
    return copy


def pixel_image(
    run_dir: str | Path, x: Excerpt, value: int, scale_max: float, *, max_side: int = MAX_SIDE
) -> PixelImage:
    """One excerpt's picture as a data URL, its activation map overlaid where it has one."""
    from neuroscribe.rundir import RunDir
    from neuroscribe.vision.overlay import overlay
    from neuroscribe.vision.store import image_data_url

    ref = x.record.image
    if ref is None:
        raise DataError(f"excerpt {x.excerpt_id} is not an image excerpt (no image reference)")
    pil = RunDir(run_dir).images.open(ref)
    if ref.spatial is not None:
        pil = overlay(pil, ref.spatial, scale_max)
    return PixelImage(url=image_data_url(_shrink(pil, max_side)), value=value, description=None)


class ImageExplainer:
    """The `image` explainer (see the module docstring). `llm=None` plans only."""

    name = "image"
    # The explain stage passes `run_dir` to explainers that set this (the pixels route
    # opens the unit's pictures from the run directory).
    needs_run_dir = True
    image_routes = True  # the explain stage passes `route` (explain.image_route)

    def __init__(
        self,
        llm: LLM | None,
        config: ExplainerConfig | None = None,
        *,
        spec: str | None = None,
        run_dir: str | Path | None = None,
        route: str = "auto",
        max_side: int = MAX_SIDE,
    ) -> None:
        if route not in ROUTES:
            raise ConfigError(f"unknown image explainer route {route!r}; choose one of {ROUTES}")
        if max_side < 16:
            raise ConfigError(f"max_side must be at least 16 pixels, not {max_side}")
        self.llm = llm
        self.model = llm.spec if llm is not None else (spec or "")
        self.settings = config or ExplainerConfig()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.route: str = route
        self.max_side = max_side
        self._resolved: str | None = None if route == "auto" else route
        self._counter: Any = None

    @property
    def n_samples(self) -> int:
        return self.settings.n_samples

    @property
    def prompt_version(self) -> str:
        """The prompt actually used (auto: once resolved; before that, both)."""
        route = self._resolved or self.route
        if route == "captions":
            return CAPTIONS_VERSION
        if route == "pixels":
            return PIXELS_VERSION
        return f"{CAPTIONS_VERSION}|{PIXELS_VERSION}"

    def config(self) -> dict[str, Any]:
        # What was asked, not what auto resolved to: the key space is known before any
        # model is contacted (auto follows from the model, which is hashed).
        versions = {"captions": CAPTIONS_VERSION, "pixels": PIXELS_VERSION}
        return {
            "explainer": self.model,
            "method": self.name,
            # Not the text prompt style: the route names this explainer's prompt.
            "settings": self.settings.model_dump(exclude={"prompt"}),
            "route": self.route,
            "prompt_version": versions.get(self.route, f"{CAPTIONS_VERSION}|{PIXELS_VERSION}"),
            "max_side": self.max_side if self.route != "captions" else None,
        }

    async def resolve_route(self) -> str:
        if self._resolved is None:
            if self.llm is None:
                raise ConfigError("this explainer was built for planning only (no model)")
            caps = await self.llm.capabilities()
            self._resolved = "pixels" if caps.image_input else "captions"
        return self._resolved

    # -- prompts ---------------------------------------------------------------------

    def captions_prompt(self, task: ExplainTask) -> tuple[list[Message], str]:
        top, weak = ranked_images(task.train, _contrast(task))
        pairs = [(description(x), v) for x, v in top]
        contrast = [(description(x), v) for x, v in weak]
        n_ex = min(self.settings.n_examples, len(IMAGE_EXAMPLES))
        budget = self.settings.max_prompt_tokens
        while True:
            prompt = build_captions_prompt(pairs, contrast, n_examples=n_ex)
            if budget is None or approx_token_count(prompt.text) <= budget:
                return prompt.messages, prompt.text  # type: ignore[return-value]
            # Weakest first: contrast images, then top images (one stays), then examples.
            if contrast:
                contrast.pop()
            elif len(pairs) > 1:
                pairs.pop()
            elif n_ex > 0:
                n_ex -= 1
            else:
                from neuroscribe.prompts.explain import PromptTooLong

                raise PromptTooLong(
                    f"the {CAPTIONS_VERSION} prompt needs {approx_token_count(prompt.text)} "
                    f"tokens with one image and no examples, over the budget of {budget}"
                )

    def pixels_messages(self, task: ExplainTask) -> list[Message]:
        if self.run_dir is None:
            raise ConfigError(
                "the pixels route opens the unit's images: give the explainer the run "
                "directory (run_dir)"
            )
        top, weak = ranked_images(task.train, _contrast(task))
        peak = max(x.record.max_activation for x in task.train)
        top_images = [pixel_image(self.run_dir, x, v, peak, max_side=self.max_side) for x, v in top]
        weak_images = [
            pixel_image(self.run_dir, x, v, peak, max_side=self.max_side) for x, v in weak
        ]
        return build_pixels_messages(top_images, weak_images)

    # -- the Explainer interface -----------------------------------------------------

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        if self.llm is None:
            raise OutputError("this explainer was built for planning only (no model)")
        route = await self.resolve_route()
        if route == "pixels":
            messages, text = self.pixels_messages(task), None
            version = PIXELS_VERSION
        else:
            messages, text = self.captions_prompt(task)
            version = CAPTIONS_VERSION
        shown = [description(x) for x in [*task.train, *_contrast(task)]]
        return await sample_explanations(
            self.llm, messages, text, self.settings, task.samples, version, shown
        )

    @property
    def counter(self) -> Any:
        from neuroscribe.estimate import token_counter

        if self._counter is None:
            self._counter = token_counter(self.model)
        return self._counter

    def estimate(self, task: ExplainTask) -> Estimate:
        completion = len(task.samples) * self.settings.max_tokens
        route = self._resolved or self._planned_route()
        if route == "pixels":
            top, weak = ranked_images(task.train, _contrast(task))
            # Text parts counted by the tokenizer; pictures at a flat planning figure.
            placeholder = [PixelImage(url="data:image/png;base64,", value=v) for _, v in top]
            rest = [PixelImage(url="data:image/png;base64,", value=v) for _, v in weak]
            prompt = self.counter.chat(build_pixels_messages(placeholder, rest))
            return Estimate(1, prompt + IMAGE_TOKENS_ESTIMATE * (len(top) + len(weak)), completion)
        messages, _ = self.captions_prompt(task)
        return Estimate(1, self.counter.chat(messages), completion)

    def _planned_route(self) -> str:
        """What auto resolves to, from what is known offline (else captions, the route
        every model can take)."""
        if self.route != "auto":
            return self.route
        from neuroscribe.llm.registry import backend_info

        try:
            caps = backend_info(self.model).offline_capabilities(self.model)
        except Exception:  # an unknown backend: plan the route every model can take
            caps = None
        return "pixels" if caps is not None and caps.image_input else "captions"


def _contrast(task: ExplainTask) -> list[Excerpt]:
    # Low-activating excerpts the explain stage may hand over beside train (a field the
    # stage adds for image units); none until it does.
    return list(getattr(task, "contrast", None) or [])


async def sample_explanations(
    llm: LLM,
    messages: list[Message],
    text: str | None,
    config: ExplainerConfig,
    samples: Sequence[int],
    prompt_version: str,
    descriptions: Sequence[str] = (),
) -> ExplainOutcome:
    """`samples` explanations of one prompt; non-explanations are asked again, then failed.

    The text explainer's loop (`explainer.token_rows.explain_excerpts`) on a prompt given
    as messages (and, for completion endpoints, as `text`, which a pixels prompt has not).
    """
    outcome = ExplainOutcome(prompt_version=prompt_version, attempts=config.max_attempts)
    missing = list(samples)
    last_raw: dict[int, str] = {}
    last_reason: dict[int, str] = {}
    for _ in range(config.max_attempts):
        if not missing:
            break
        if config.endpoint == "completions" and text is not None:
            resp = await llm.complete(
                text,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                stop=["\n"],
            )
        else:
            resp = await llm.chat(
                messages,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )
        outcome.usage = outcome.usage.add(resp.usage)
        answers = [c.text for c in resp.choices]
        still: list[int] = []
        for i, sample in enumerate(missing):
            answer = answers[i] if i < len(answers) else ""
            explanation, reason = image_explanation_or_reason(answer, descriptions)
            if explanation is None:
                last_raw[sample] = clip_raw(answer) or ""
                last_reason[sample] = reason or "not an explanation"
                still.append(sample)
            else:
                outcome.texts.append((sample, explanation, clip_raw(answer) or ""))
        if still:
            discard_cached(llm, resp)  # else the retry gets the cached non-answer again
        missing = still
    outcome.failed = [(s, last_raw.get(s, "")) for s in missing]
    outcome.reasons = {s: last_reason[s] for s in missing if s in last_reason}
    outcome.texts.sort()
    return outcome


__all__ = [
    "ROUTES",
    "ImageExplainer",
    "image_explanation_or_reason",
    "pixel_image",
    "ranked_images",
    "sample_explanations",
]
