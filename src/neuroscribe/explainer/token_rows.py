"""The single-sample explainer: one prompt (by default the reference's `token<TAB>value`
rows between `<start>`/`<end>`, three few-shot neurons; `ExplainerConfig.prompt` picks
another style from `prompts.explain_styles`), sampled n times, answers cleaned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, field_validator

from neuroscribe.errors import OutputError
from neuroscribe.explainer.base import ExplainOutcome, ExplainTask
from neuroscribe.explainer.clean import explanation_or_reason
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import LLM, clip_raw
from neuroscribe.prompts import ANSWER_PREFIX, EXPLAIN_PROMPT_VERSION, ExplainPrompt
from neuroscribe.prompts.explain_styles import build_styled_prompt, resolve_style
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate


class ExplainerConfig(BaseModel):
    n_samples: int = 1
    temperature: float = 1.0
    max_tokens: int = 60
    # Rounds in all: a sample whose answer is not an explanation is asked again up to
    # max_attempts - 1 times, then recorded as a failure with the reason.
    max_attempts: int = 3
    endpoint: Literal["chat", "completions"] = "chat"
    max_prompt_tokens: int | None = None
    n_examples: int = 3
    # The prompt style's version (or short name: rows, highlight, summary); see
    # prompts.explain_styles. Hashed through the explainer's prompt_version.
    prompt: str = EXPLAIN_PROMPT_VERSION

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, v: str) -> str:
        return resolve_style(v)

    def hashed(self) -> dict[str, Any]:
        """The settings in the explain key space. The prompt is hashed as the explainer's
        prompt_version, so runs made before styles existed keep their keys."""
        return self.model_dump(exclude={"prompt"})


def explain_prompt(train: list[Excerpt], config: ExplainerConfig) -> ExplainPrompt:
    """The configured style's prompt for these train excerpts (strongest first)."""
    return build_styled_prompt(
        config.prompt,
        [(e.record.tokens, e.record.activations) for e in train],
        max_prompt_tokens=config.max_prompt_tokens,
        n_examples=config.n_examples,
    )


async def explain_excerpts(
    llm: LLM,
    train: list[Excerpt],
    config: ExplainerConfig,
    samples: list[int] | None = None,
) -> ExplainOutcome:
    """Sample `n_samples` explanations; non-explanations are asked again, then reported.

    A sample whose answer is not an explanation (`explanation_or_reason`: empty, too
    long, an echo of the prompt or of a few-shot example, a refusal, filler) is asked
    again, up to `max_attempts` rounds in all; still none, it is returned in `failed`
    with its last raw text (cut to `MAX_RAW_CHARS`) and in `reasons` with why — never
    as an explanation.
    """
    if not train:
        raise OutputError("no train excerpts to explain")
    prompt = explain_prompt(train, config)
    outcome = ExplainOutcome(prompt_version=prompt.prompt_version, attempts=config.max_attempts)
    missing = list(range(config.n_samples)) if samples is None else list(samples)
    last_raw: dict[int, str] = {}
    last_reason: dict[int, str] = {}
    for _ in range(config.max_attempts):
        if not missing:
            break
        if config.endpoint == "chat":
            resp = await llm.chat(
                prompt.messages,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )
        else:
            resp = await llm.complete(
                prompt.text,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                stop=["\n"],
            )
        outcome.usage = outcome.usage.add(resp.usage)
        still: list[int] = []
        answers = [c.text for c in resp.choices]
        for i, sample in enumerate(missing):
            # The raw text is kept with the result: never megabytes of it.
            raw = clip_raw(answers[i] if i < len(answers) else "") or ""
            text, reason = explanation_or_reason(answers[i] if i < len(answers) else "")
            if text is None:
                last_raw[sample] = raw
                last_reason[sample] = reason or "not an explanation"
                still.append(sample)
            else:
                outcome.texts.append((sample, text, raw))
        if still:
            # Else the retry is answered from the response cache with the same answer.
            discard_cached(llm, resp)
        missing = still
    outcome.failed = [(s, last_raw.get(s, "")) for s in missing]
    outcome.reasons = {s: last_reason[s] for s in missing if s in last_reason}
    outcome.texts.sort()
    return outcome


class TokenRowExplainer:
    """Today's explainer behind the `Explainer` interface."""

    name = "token-rows"

    def __init__(
        self, llm: LLM | None, config: ExplainerConfig | None = None, *, spec: str | None = None
    ) -> None:
        # llm=None (with spec) builds an explainer for planning only: dry runs need its
        # config and estimates, never a model.
        self.llm = llm
        self.model = llm.spec if llm is not None else (spec or "")
        self.settings = config or ExplainerConfig()
        self._counter: Any = None

    @property
    def n_samples(self) -> int:
        return self.settings.n_samples

    @property
    def prompt_version(self) -> str:
        return self.settings.prompt

    def config(self) -> dict[str, Any]:
        return {
            "explainer": self.model,
            "method": self.name,
            "settings": self.settings.hashed(),
            "prompt_version": self.prompt_version,
        }

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        if self.llm is None:
            raise OutputError("this explainer was built for planning only (no model)")
        return await explain_excerpts(self.llm, task.train, self.settings, task.samples)

    @property
    def counter(self) -> Any:
        """How this explainer's prompts are counted in a dry run (`estimate.TokenCounter`)."""
        from neuroscribe.estimate import token_counter

        if self._counter is None:
            self._counter = token_counter(self.model)
        return self._counter

    def estimate(self, task: ExplainTask) -> Estimate:
        prompt = explain_prompt(task.train, self.settings)
        # One request asks for all missing samples at once (n=...); the completion is
        # bounded by max_tokens per sample.
        return Estimate(
            1,
            self.counter.chat(prompt.messages),
            len(task.samples) * self.settings.max_tokens,
        )


__all__ = [
    "ANSWER_PREFIX",
    "ExplainerConfig",
    "TokenRowExplainer",
    "explain_excerpts",
    "explain_prompt",
]
