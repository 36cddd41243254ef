"""Shared machinery of the classifier scorers (detection, fuzzing, intruder).

What they share: which held-out excerpts count as activating and which as not
(`label_heldout`), a deterministic shuffle per unit and configuration (`unit_rng`),
robust parsing of "number yes/no" answers (`parse_yes_no`) with P("yes") read from the
answer's logprobs where the backend gives them (`yes_probabilities`), one retry loop for
unusable answers (`ask`), and `ClassifierScorer`, the plug-in base class: a subclass says
which items it shows (`items`), how a prompt is built (`messages`) and, for another
answer format, how an answer is parsed (`parse`).

Only held-out excerpts (`ScoreTask.heldout`: the splits' test and calibration folds)
are ever shown; the train excerpts the explainer saw reach a scorer only through the
explanation's text.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError, DataError, LLMError, OutputError
from neuroscribe.llm.base import LOCAL_PREFIX, Completion, TokenLogprob, clip_raw
from neuroscribe.llm.messages import Message
from neuroscribe.prompts.classify import ONE_SUFFIX, render_excerpt, yes_no_answer
from neuroscribe.schema import Usage
from neuroscribe.scorer.base import ScoreOutcome, ScorerParts, ScoreTask
from neuroscribe.scorer.maths import classification_metrics
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate

TOP_LOGPROBS = 10
FIRST_TOKEN_LOGPROBS = 20  # the first-token readout: where to look for yes and no
READOUTS = ("auto", "lines", "first-token")
YES, NO = "yes", "no"
# Negatives reported alone (the share answered "no"), by Item.kind: those sharing the
# unit's top tokens, and those that make another unit fire (scorer.other_units).
HARD_KINDS = {"hard": "hard_negative_accuracy", "other": "other_unit_accuracy"}

# ---------------------------------------------------------------- which excerpts


@dataclass
class Labelled:
    """A unit's held-out excerpts, labelled for a classifier.

    `positives`: held-out top excerpts (strongest first). `negatives`: held-out random
    excerpts whose largest activation is at most `negative_fraction` of the strongest
    held-out top excerpt's. `hard`: the negatives that contain one of the unit's top
    tokens (the token at the peak of a held-out top excerpt) and still do not activate.
    `ambiguous`: random excerpts that fire above the threshold: neither class, left out.
    """

    positives: list[Excerpt]
    negatives: list[Excerpt]
    hard: set[str] = field(default_factory=set)
    ambiguous: list[str] = field(default_factory=list)
    top_tokens: list[str] = field(default_factory=list)


def _norm(token: str) -> str:
    return token.strip().lower()


def peak_token(x: Excerpt) -> str:
    acts = x.record.activations
    return x.record.tokens[max(range(len(acts)), key=acts.__getitem__)]


def label_heldout(heldout: Sequence[Excerpt], negative_fraction: float) -> Labelled:
    """Split held-out excerpts into activating, non-activating and hard non-activating."""
    positives = sorted(
        (x for x in heldout if x.kind == "top" and x.record.max_activation > 0),
        key=lambda x: -x.record.max_activation,
    )
    ref = positives[0].record.max_activation if positives else 0.0
    negatives: list[Excerpt] = []
    ambiguous: list[str] = []
    for x in heldout:
        if x.kind != "random":
            continue
        if x.record.max_activation <= negative_fraction * ref:
            negatives.append(x)
        else:
            ambiguous.append(x.excerpt_id)
    top = sorted({_norm(peak_token(x)) for x in positives} - {""})
    hard = {x.excerpt_id for x in negatives if {_norm(t) for t in x.record.tokens} & set(top)}
    return Labelled(positives, negatives, hard, ambiguous, top)


def require_both(labelled: Labelled, unit_id: str, negative_fraction: float) -> None:
    if not labelled.positives:
        raise DataError(f"unit {unit_id}: no held-out top excerpt activates (nothing to detect)")
    if not labelled.negatives:
        raise DataError(
            f"unit {unit_id}: no held-out random excerpt stays below {negative_fraction:g} of "
            f"the top activation ({len(labelled.ambiguous)} fire above it), so there is no "
            "non-activating excerpt to show; raise --n-test-random or the scorer's "
            "negative_fraction"
        )


def crop(n: int, anchor: int, window: int | None) -> tuple[int, int]:
    """The `window` tokens of an `n`-token excerpt shown around position `anchor`: three
    quarters of the window before it (a causal model's unit reads what came before)."""
    if window is None or n <= window:
        return 0, n
    start = max(0, min(anchor - (3 * window) // 4, n - window))
    return start, start + window


def windows(
    labelled: Labelled, window: int | None, rng: random.Random
) -> dict[str, tuple[int, int]]:
    """Where each labelled excerpt is cropped: activating ones around their peak, hard
    negatives around their first top token (so the window still holds it), the other
    non-activating ones around a random position (equal lengths: the window's place in
    the excerpt says nothing about its label)."""
    out: dict[str, tuple[int, int]] = {}
    top = set(labelled.top_tokens)
    for x in labelled.positives:
        acts = x.record.activations
        out[x.excerpt_id] = crop(len(acts), max(range(len(acts)), key=acts.__getitem__), window)
    for x in labelled.negatives:
        toks = x.record.tokens
        hits = [i for i, t in enumerate(toks) if _norm(t) in top]
        anchor = hits[0] if x.excerpt_id in labelled.hard and hits else rng.randrange(len(toks))
        out[x.excerpt_id] = crop(len(toks), anchor, window)
    return out


def unit_rng(task: ScoreTask, salt: str) -> random.Random:
    """A shuffle that depends on the unit and the configuration only (not the explanation),
    so every explanation of a unit is judged on the same prompts."""
    seed = hashlib.sha256(f"{salt}|{task.record.unit_id}|{task.config_hash}".encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


# ---------------------------------------------------------------- items and answers


@dataclass(frozen=True)
class Item:
    """One line of a classifier prompt."""

    excerpt_id: str  # the held-out excerpt ("top:3"), "#wrong" for fuzzing's decoys
    label: bool  # the right answer: activating / correctly marked
    text: str  # the line as shown
    kind: str  # "top", "random", "hard", "correct", "wrong"
    n_tokens: int


def make_item(
    x: Excerpt,
    label: bool,
    kind: str,
    span: tuple[int, int],
    marked: set[int] | frozenset[int] = frozenset(),
    suffix: str = "",
) -> Item:
    """The prompt line of excerpt `x` cropped to `span`; `marked` positions are the crop's."""
    a, b = span
    text = render_excerpt(x.record.tokens[a:b], marked)
    return Item(x.excerpt_id + suffix, label, text, kind, b - a)


_NUMBERED = re.compile(r"^\W*(?:excerpt\s*)?(\d+)\W*?\s*(yes|no)\b", re.I | re.M)
_BARE = re.compile(r"\b(yes|no)\b", re.I)


@dataclass
class YesNo:
    answers: list[bool]  # per excerpt, in prompt order
    order: list[int]  # the excerpts in the order the answer names them


def parse_yes_no(text: str, n: int) -> YesNo:
    """Read one yes/no per excerpt: numbered lines ("2. yes"), or exactly `n` bare words.

    Anything else (a missing, repeated or out-of-range number, a different count) is an
    `OutputError`: an unusable answer is never read as "no".
    """
    raw = clip_raw(text)
    lines = [(int(m.group(1)), m.group(2).lower() == YES) for m in _NUMBERED.finditer(text)]
    if lines:
        numbers = [k for k, _ in lines]
        if sorted(numbers) != list(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - set(numbers))
            extra = sorted({k for k in numbers if not 1 <= k <= n or numbers.count(k) > 1})
            raise OutputError(
                f"the answer does not give one yes/no for each of {n} excerpts "
                f"(missing {missing}, repeated or out of range {extra})",
                raw=raw,
            )
        answers = [False] * n
        for k, a in lines:
            answers[k - 1] = a
        return YesNo(answers, [k - 1 for k, _ in lines])
    bare = [m.group(1).lower() == YES for m in _BARE.finditer(text)]
    if len(bare) != n:
        raise OutputError(f"the answer has {len(bare)} yes/no for {n} excerpts", raw=raw)
    return YesNo(bare, list(range(n)))


def parse_choice(text: str, n: int) -> list[bool]:
    """Read the excerpts picked in a multiple-choice answer ("2, 5, 9" or "none")."""
    raw = clip_raw(text)
    numbers = [int(d) for d in re.findall(r"\d+", text)]
    if not numbers:
        if re.search(r"\bnone\b", text, re.I):
            return [False] * n
        raise OutputError("the answer names no excerpt number (nor 'none')", raw=raw)
    bad = sorted({k for k in numbers if not 1 <= k <= n})
    if bad:
        raise OutputError(f"the answer names excerpts {bad}; there are {n}", raw=raw)
    return [k in numbers for k in range(1, n + 1)]


def p_yes(top: dict[str, float]) -> float | None:
    """P("yes") renormalised over yes and no, from one position's top logprobs."""
    import math

    yes = sum(math.exp(lp) for t, lp in top.items() if _norm(t) == YES)
    no = sum(math.exp(lp) for t, lp in top.items() if _norm(t) == NO)
    return yes / (yes + no) if yes + no > 0 else None


def first_token_p_yes(choice: Completion) -> float:
    """P("yes") at the answer's first token, renormalised over yes and no (any case or
    leading space). Neither among the likeliest tokens: an `OutputError`, never a "no"."""
    if not choice.tokens:
        raise OutputError(
            "the judge returned no token logprobs to read yes/no from", raw=clip_raw(choice.text)
        )
    p = p_yes(choice.tokens[0].top_logprobs)
    if p is None:
        raise OutputError(
            f"no yes/no among the {len(choice.tokens[0].top_logprobs)} likeliest first "
            "tokens of the answer",
            raw=clip_raw(choice.text),
        )
    return p


def yes_probabilities(tokens: Sequence[TokenLogprob] | None, parsed: YesNo) -> list[float | None]:
    """P("yes") per excerpt from the generated tokens that spell its yes/no.

    The k-th yes/no token is the k-th answer the text names; when the tokens do not line
    up with the parsed answer (no logprobs, a yes/no split over tokens, extra words) every
    excerpt gets None rather than a guess.
    """
    n = len(parsed.answers)
    if not tokens:
        return [None] * n
    spots = [t for t in tokens if _norm(t.token) in (YES, NO)]
    if len(spots) != len(parsed.order):
        return [None] * n
    out: list[float | None] = [None] * n
    for k, tok in zip(parsed.order, spots, strict=True):
        if (_norm(tok.token) == YES) != parsed.answers[k]:
            return [None] * n
        out[k] = p_yes(tok.top_logprobs)
    return out


async def ask(
    llm: Any,
    messages: list[Message],
    parse: Callable[[Completion], Any],
    *,
    max_tokens: int,
    top_logprobs: int | None,
    max_attempts: int,
) -> tuple[Any, Usage]:
    """One prompt, retried (at temperature 0.7, its cached answer dropped) while the answer
    cannot be parsed; after `max_attempts` an `OutputError` carrying what was spent."""
    from neuroscribe.llm import discard_cached

    usage = Usage()
    last: OutputError | None = None
    for attempt in range(max_attempts):
        resp = await llm.chat(
            messages,
            temperature=0.0 if attempt == 0 else 0.7,
            max_tokens=max_tokens,
            top_logprobs=top_logprobs,
        )
        usage = usage.add(resp.usage)
        try:
            if not resp.choices:
                raise OutputError("the endpoint returned no answer")
            return parse(resp.choices[0]), usage
        except OutputError as e:
            last = e
            discard_cached(llm, resp)
    assert last is not None
    raise OutputError(f"{last} after {max_attempts} attempts", raw=last.raw, usage=usage)


# ---------------------------------------------------------------- the plug-in base


@dataclass
class _Answered:
    predicted: list[bool]
    p_yes: list[float | None]


class ClassifierScorer(ScorerParts):
    """An LLM classifies held-out items (excerpts, marked excerpts); metrics over its answers.

    Subclasses set `name`, `stage`, `prompt_version`, `messages` and `items`.
    Options (constructor keywords; `build`/`planned` take the same): `batch_size`
    (items per prompt), `negative_fraction` (a random excerpt is non-activating when its
    peak is at most this share of the top held-out activation), `window` (tokens shown
    of each excerpt, 32 as delphi's examples; None: whole excerpts), `max_attempts`,
    `readout`:

    - "lines": `batch_size` items a prompt, answered in numbered lines ("2 yes");
    - "first-token" (scorers with `one_at_a_time`: detection, fuzzing): one item a
      prompt ("... Answer yes or no."), its answer read from the judge's next-token
      distribution: P("yes") renormalised over yes and no, answer = P ≥ ½. Needs
      logprobs. Small local models do not keep the numbered format (SmolLM2-135M and
      Qwen2.5-0.5B fail most prompts), but every next token has a P("yes");
    - "auto" (default): "first-token" for an in-process judge (exact logits: `hf:`
      models), "lines" otherwise (an API judge: fewer, cheaper prompts).

    The first-token readout has its own prompt version (`<version>-one`) and configuration
    hash; "lines" hashes as before the option existed.
    """

    name: ClassVar[str]
    stage: ClassVar[str]
    prompt_version: ClassVar[str]
    primary_metric: ClassVar[str] = "balanced_accuracy"
    reports_hard: ClassVar[bool] = False  # add `hard_negative_accuracy` to the metrics
    reads_p_yes: ClassVar[bool] = True  # answers carry a per-item P("yes") (→ `auc`)
    one_at_a_time: ClassVar[bool] = False  # has one-item prompts (the first-token readout)
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "batch_size", "negative_fraction", "max_attempts", "window", "readout",
    )  # fmt: skip

    def __init__(
        self,
        llm: Any | None,
        *,
        spec: str,
        batch_size: int = 5,
        negative_fraction: float = 0.2,
        max_attempts: int = 3,
        window: int | None = 32,
        logprobs: bool = False,
        readout: str = "auto",
        exact: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        if not 0 <= negative_fraction < 1:
            raise ConfigError(f"negative_fraction must be in [0, 1), not {negative_fraction}")
        self.llm = llm
        self.model = spec
        self.batch_size = batch_size
        self.negative_fraction = negative_fraction
        if window is not None and window < 1:
            raise ConfigError(f"window must be at least 1 token (or None: whole), not {window}")
        self.max_attempts = max_attempts
        self.window = window
        self.logprobs = logprobs
        self._counter: Any = None
        if readout not in READOUTS:
            raise ConfigError(f"readout must be one of {', '.join(READOUTS)}, not {readout!r}")
        if readout == "first-token" and not self.one_at_a_time:
            raise ConfigError(f"the {self.name} scorer has no first-token readout")
        # `exact`: the judge runs in process (its logits are exact): `auto` reads yes/no
        # from its next-token distribution, one item a prompt.
        self.one_by_one = self.one_at_a_time and (
            readout == "first-token" or (readout == "auto" and exact)
        )
        if self.one_by_one:
            self.batch_size = 1
            self.prompt_version = type(self).prompt_version + ONE_SUFFIX

    @classmethod
    async def build(cls, llm: Any, **options: Any) -> ClassifierScorer:
        """The scorer for a live model: asks for P("yes") where the backend declares
        generated-token logprobs (a local model: exact)."""
        caps = await llm.capabilities()
        scorer = cls(
            llm,
            spec=llm.spec,
            logprobs=bool(caps.chat_top_logprobs),
            exact=bool(caps.exact_logits),
            **cls._own(options),
        )
        if scorer.one_by_one and not scorer.logprobs:
            raise ConfigError(
                f"{cls.name}: the first-token readout reads P(yes) from the judge's "
                f"logprobs, and {llm.spec} gives none; use readout='lines'"
            )
        return scorer

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[ClassifierScorer, str]:
        """A scorer for dry runs: counts the same prompts, loads and contacts nothing
        (an `hf:` judge is in process: `auto` plans its first-token readout)."""
        exact = spec.startswith(LOCAL_PREFIX) or bool((probe or {}).get("exact_logits"))
        return cls(None, spec=spec, exact=exact, **cls._own(options)), ""

    def config(self) -> dict[str, Any]:
        # Not `logprobs`: it follows from the model (in the hash already), and a dry run
        # must plan in the same key space without probing the backend.
        return {
            "scorer": self.name,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "batch_size": self.batch_size,
            "negative_fraction": self.negative_fraction,
            "window": self.window,
            **({"readout": "first-token"} if self.one_by_one else {}),
        }

    def comparable(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model, "prompt_version": self.prompt_version}

    # -- what subclasses say -----------------------------------------------------------

    def items(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        """The items to classify and details about how they were chosen."""
        raise NotImplementedError

    def messages(self, explanation: str, texts: Sequence[str]) -> list[Message]:
        raise NotImplementedError

    def parse(self, choice: Completion, n: int) -> _Answered:
        if self.one_by_one:
            p = first_token_p_yes(choice)
            return _Answered([p >= 0.5], [p])
        parsed = parse_yes_no(choice.text, n)
        probs = yes_probabilities(choice.tokens, parsed) if self.logprobs else [None] * n
        return _Answered(parsed.answers, probs)

    def ideal_answer(self, batch: Sequence[Item]) -> str:
        if self.one_by_one:
            return YES if batch[0].label else NO
        return yes_no_answer([it.label for it in batch])

    def max_tokens(self, n: int) -> int:
        return 1 if self.one_by_one else 6 * n + 16

    # -- the plug-in interface ---------------------------------------------------------

    def batches(self, task: ScoreTask, items: list[Item]) -> list[list[Item]]:
        shuffled = list(items)
        unit_rng(task, self.name).shuffle(shuffled)
        k = self.batch_size
        return [shuffled[i : i + k] for i in range(0, len(shuffled), k)]

    async def _answer(self, explanation: str, batch: list[Item]) -> tuple[_Answered, Usage]:
        return await ask(
            self.llm,
            self.messages(explanation, [it.text for it in batch]),
            lambda choice: self.parse(choice, len(batch)),
            max_tokens=self.max_tokens(len(batch)),
            top_logprobs=(FIRST_TOKEN_LOGPROBS if self.one_by_one else TOP_LOGPROBS)
            if self.logprobs
            else None,
            max_attempts=self.max_attempts,
        )

    async def prepare(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        """`items`, for a scorer whose items need work first (e.g. running a model)."""
        return self.items(task)

    def planned_items(self, task: ScoreTask) -> list[Item]:
        """The items a dry run counts (no model opened): `items` unless overridden."""
        return self.items(task)[0]

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.llm is None:
            raise ConfigError(f"this {self.name} scorer was built for planning only")
        items, details = await self.prepare(task)
        batches = self.batches(task, items)
        results = await asyncio.gather(
            *(self._answer(task.explanation.text, b) for b in batches), return_exceptions=True
        )
        usage = Usage()
        errors: list[BaseException] = []
        for r in results:
            if isinstance(r, BaseException):
                errors.append(r)
                if isinstance(r, OutputError) and r.usage is not None:
                    usage = usage.add(r.usage)
            else:
                usage = usage.add(r[1])
        if errors:
            # One unusable prompt fails the unit (recorded, retried on resume), with what
            # every prompt of it cost.
            for e in errors:
                if isinstance(e, OutputError):
                    raise OutputError(str(e), raw=e.raw, usage=usage) from e
            for e in errors:
                if isinstance(e, LLMError):
                    raise e
            raise errors[0]
        return self._outcome(batches, [r[0] for r in results], usage, details)  # type: ignore[index]

    def _outcome(
        self,
        batches: list[list[Item]],
        answered: list[_Answered],
        usage: Usage,
        details: dict[str, Any],
    ) -> ScoreOutcome:
        flat = [
            (it, a.predicted[j], a.p_yes[j])
            for b, a in zip(batches, answered, strict=True)
            for j, it in enumerate(b)
        ]
        labels = [it.label for it, _, _ in flat]
        predicted = [p for _, p, _ in flat]
        probs = [q for _, _, q in flat]
        have_all = all(q is not None for q in probs)
        metrics = classification_metrics(labels, predicted, probs if have_all else None)  # type: ignore[arg-type]
        details = dict(details)
        flags: list[str] = list(details.pop("flags", []))  # what `prepare` had to say
        if not self.reads_p_yes:
            del metrics["auc"]
        elif not self.logprobs:
            flags.append("no_logprobs")
        elif not have_all:
            flags.append(f"missing_p_yes:{sum(q is None for q in probs)}")
        if self.reports_hard:
            for kind, metric in HARD_KINDS.items():
                hard = [p for it, p, _ in flat if it.kind == kind]
                if kind == "hard" or hard:
                    metrics[metric] = sum(not p for p in hard) / len(hard) if hard else None
        excerpts = {it.excerpt_id.split("#")[0]: it.n_tokens for it, _, _ in flat}
        return ScoreOutcome(
            metrics=metrics,
            primary_metric=self.primary_metric,
            n_excerpts=len(excerpts),
            n_tokens=sum(excerpts.values()),
            details={
                "prompt_version": self.prompt_version,
                "batch_size": self.batch_size,
                "n_prompts": len(batches),
                "n_items": len(flat),
                "n_positive": sum(labels),
                "n_negative": len(labels) - sum(labels),
                "logprobs": self.logprobs,
                **details,
                "answers": [
                    {
                        "excerpt_id": it.excerpt_id,
                        "kind": it.kind,
                        "label": it.label,
                        "answer": p,
                        "p_yes": None if q is None else round(q, 4),
                    }
                    for it, p, q in flat
                ],
            },
            flags=flags,
            usage=usage,
        )

    def estimate(self, task: ScoreTask) -> Estimate:
        """The prompts `score` would send, counted; completions as a well-formed answer."""
        items = self.planned_items(task)
        est = Estimate()
        for batch in self.batches(task, items):
            msgs = self.messages(task.explanation.text, [it.text for it in batch])
            est = est + Estimate(
                1, self.counter.chat(msgs), self.counter.text(self.ideal_answer(batch))
            )
        return est


__all__ = [
    "ClassifierScorer",
    "Item",
    "Labelled",
    "YesNo",
    "ask",
    "crop",
    "label_heldout",
    "make_item",
    "p_yes",
    "parse_choice",
    "parse_yes_no",
    "require_both",
    "unit_rng",
    "windows",
    "yes_probabilities",
]
