"""Cleaning explainer answers, and refusing non-answers (never stored as explanations).

`explanation_or_reason(raw)` is what explainers call: the cleaned phrase, or None and
a short reason (kept in failures.jsonl). A *non-explanation* is an answer that echoes
the prompt (`<start>`, `token<TAB>value` rows, "Neuron 4", "Activations:", the
instructions, a few-shot example, talk about "neuron behavior"), a refusal or
non-answer ("There is no straightforward answer", "I cannot", "N/A"), a chat reply
("Sure, ..."), filler with no content word ("this neuron", "something"), or text that
is mostly digits and markup. `why_not_explanation` is the check on its own.
"""

from __future__ import annotations

import re

from neuroscribe.prompts.examples import EXAMPLES
from neuroscribe.prompts.explain import ANSWER_PREFIX, SYSTEM
from neuroscribe.prompts.explain_styles import HIGHLIGHT_SYSTEM, SUMMARY_SYSTEM

# An explanation is a phrase; anything longer after cleaning is a rambling or runaway
# answer (a server that ignored max_tokens), not an explanation.
MAX_EXPLANATION_CHARS = 500

_PREFIX_RE = re.compile(
    r"^\s*(?:(?:explanation|explaining|explain)(?:\s+of)?\s+neuron\s+\d+(?:'s)?\s+behaviou?r\s*:?)?\s*"
    r"(?:the\s+main\s+thing\s+this\s+neuron\s+does\s+is\s+(?:to\s+)?find(?:s|ing)?\s*:?)?\s*",
    re.IGNORECASE,
)


_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’"}


def _unquote(text: str) -> str:
    """Drop quotes around the whole answer, and stray ones at its ends, but not a quoted
    token's ("the token ')'")."""
    close, inner = _QUOTE_PAIRS.get(text[:1]), text[1:-1]
    if len(text) >= 2 and close == text[-1] and text[0] not in inner and close not in inner:
        return inner.strip()
    if text[:1] in _QUOTE_PAIRS and text.count(text[0]) % 2:
        text = text[1:].strip()
    if text[-1:] in "\"'`”’" and text and text.count(text[-1]) % 2:
        text = text[:-1].strip()
    return text


def _clean(line: str) -> str:
    text = _PREFIX_RE.sub("", line, count=1)
    text = re.sub(r"\s+", " ", _unquote(text.strip()))
    # An explanation is one phrase: keep the first sentence of a rambling answer.
    text = re.split(r"(?<=[a-z0-9)\]])[.!?]\s+(?=[A-Z])", text, maxsplit=1)[0]
    return text.rstrip(".").strip()


def explanation_or_reason(raw: str) -> tuple[str | None, str | None]:
    """The cleaned explanation and None, or None and why the answer is not one.

    Keeps the first sentence of the first non-empty line, drops an echoed answer prefix,
    surrounding quotes and a trailing period, and collapses whitespace; then refuses
    what `why_not_explanation` refuses. More than `MAX_EXPLANATION_CHARS` characters
    left is not usable either.
    """
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    if not lines:
        return None, "empty answer"
    # Rows are only visible before whitespace is collapsed ("cat\t5" → "cat 5").
    if _TOKEN_ROW.search(lines[0]):
        return None, _ECHO_ROWS
    text = _clean(lines[0])
    if not text:
        return None, why_not_explanation(lines[0]) or "nothing left after cleaning"
    if len(text) > MAX_EXPLANATION_CHARS:
        return None, f"too long ({len(text)} characters after cleaning)"
    reason = why_not_explanation(text)
    return (None, reason) if reason else (text, None)


def clean_explanation(raw: str) -> str | None:
    """Normalise an explainer answer; None when nothing usable is left (see
    `explanation_or_reason`, which also says why)."""
    return explanation_or_reason(raw)[0]


_EXAMPLE_TEXTS = {ex.explanation.lower() for ex in EXAMPLES}


def is_copied_example(text: str) -> bool:
    """Weak explainers parrot the prompt's few-shot answers; those explain nothing here."""
    return text.lower().strip().rstrip(".") in _EXAMPLE_TEXTS


# ------------------------------------------------------------------ non-explanations

_ECHO_ROWS = "echoes the prompt format (token<TAB>value rows)"

# A `token<TAB>value` row of the prompt, anywhere in a line.
_TOKEN_ROW = re.compile(r"\t\s*-?\d+(?:\.\d+)?\s*(?:$|\t|\n)")
_MARKERS = re.compile(r"<\s*/?\s*(?:start|end)\s*>", re.IGNORECASE)
_NEURON_N = re.compile(r"\bneuron\s*#?\s*\d+\b", re.IGNORECASE)
_ACTIVATIONS_LABEL = re.compile(r"\bactivations\s*:", re.IGNORECASE)
# Talk about the task instead of the unit: "the behavior of neurons", "neuron 4 behavior".
_META = re.compile(
    r"\bneurons?(?:'s|’s|s')?\s+(?:\d+\s+)?behaviou?rs?\b"
    r"|\bbehaviou?rs?\s+of\s+(?:the\s+|this\s+|a\s+|these\s+)?neurons?\b"
    r"|\b(?:definition|description|explanation|listing|example)s?\s+of\s+(?:the\s+|this\s+)?"
    r"(?:\w+\s+)?neurons?\b",
    re.IGNORECASE,
)
# A chat reply instead of an explanation: "Sure, ...", "I'm going to ...", "Question: ...".
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|hello|hi|thanks|thank you|let me|let's|here is|"
    r"here's|here are|following is|below is)\b"
    r"|^i(?:'m| am| will| would| think| believe| can| have| see| found| guess| hope)\b"
    r"|^(?:you|your)\s+(?:are|have|can|should|will|text|answer|question|prompt|request|task)\b"
    r"|^(?:question|solution|script|answer|response|output|input|summary|note|task|prompt)\s*:"
    r"|:$"
)

# A quoted token or word ('the', "not", `)`), with a quote that is not an apostrophe
# inside a word (don't, isn't).
_QUOTED = re.compile(
    r"(?<![\w])'([^'\n]+)'(?![\w])|\"([^\"\n]+)\"|“([^”\n]+)”|‘([^’\n]+)’|`([^`\n]+)`"
)
_QUOTE_MARK = " qquotedq "  # what a quoted part becomes for the refusal and filler checks

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+")


def _norm(text: str) -> str:
    """Lower case words separated by single spaces (for phrase containment)."""
    return " " + " ".join(re.findall(r"[^\W_]+", text.lower())) + " "


# The prompt's own sentences: an answer made of them (3+ words) repeats the prompt.
_PROMPT_PHRASES = [
    *re.split(r"(?<=[.:])\s+", SYSTEM),
    ANSWER_PREFIX,
    "Answer in the same form, completing",
    "Same activations, non-zero tokens only",
    "Explanation of neuron behavior",
    # The other prompt styles' sentences and labels (prompts.explain_styles).
    *re.split(r"(?<=[.:])\s+", HIGHLIGHT_SYSTEM),
    *re.split(r"(?<=[.:])\s+", SUMMARY_SYSTEM),
    "Most active tokens (times at a high activation, largest)",
    "Contexts, strongest first",
]
_PROMPT_TEXTS = [_norm(x) for x in _PROMPT_PHRASES]
_PROMPT_SENTENCES = [p for p in _PROMPT_TEXTS if len(p.split()) >= 4]
# The few-shot excerpts' text: an answer quoting 4+ of its words copies an example.
_EXAMPLE_EXCERPTS = [_norm("".join(e.tokens)) for ex in EXAMPLES for e in ex.excerpts]

_REFUSALS = [
    re.compile(p)
    for p in (
        r"^there (?:is|are|'s|seems to be|appears to be) no\b",
        r"\bno (?:(?:clear|obvious|discernible|consistent|apparent|single|simple|specific|"
        r"straightforward|definitive|particular|common|real|meaningful)\s+)*"
        r"(?:pattern|answer|explanation|theme|commonality|relationship|connection|"
        r"common (?:pattern|theme|feature|thread|factor))s?\b",
        r"\b(?:i|we) (?:cannot|can't|can not|could not|couldn't|won't|will not)\b",
        r"\b(?:i|we)(?: am|'m| are|'re) (?:unable|not able|not sure|unsure|uncertain|sorry|"
        r"afraid)\b",
        r"\b(?:i|we) (?:do not|don't|did not|didn't) (?:know|see|understand)\b",
        r"^(?:sorry|apologies|unfortunately|hard to (?:say|tell)|difficult to (?:say|tell|"
        r"determine)|impossible to (?:say|tell|determine)|cannot be determined|"
        r"can't be determined|not applicable)\b",
        # "unclear pronoun references" is an explanation; "unclear." or "unclear what" is not
        r"^(?:no idea|not sure|unsure|unknown|unclear|uncertain|not clear)"
        r"(?:$|\s*[,.;:!?(-]|\s+(?:what|whether|how|if|why|which)\b)",
        r"\bi apologi[sz]e\b",
        r"\bas an ai\b",
        r"\bas a (?:large |helpful |ai )?(?:language model|assistant)\b",
        r"\b(?:it|this|(?:the|its) (?:pattern|meaning|function|behaviou?r|answer|purpose|"
        r"role))(?: [\w']+){0,2} (?:is|are|remains|seems|appears)(?: to be)? (?:unclear|not clear|"
        r"uncertain|not obvious|unknown|impossible to (?:say|tell|determine))\b",
        r"\b(?:it|this)(?: is|'s) (?:not possible|impossible|hard|difficult) to\b",
        r"\b(?:not enough|insufficient) (?:information|data|context|examples)\b",
        r"\bcannot be (?:determined|explained|identified)\b",
    )
]
_NON_ANSWERS = {
    "none", "nothing", "n/a", "na", "null", "nan", "nil", "unknown", "no", "yes", "idk",
    "unsure", "nope", "none of the above", "no answer", "not applicable", "random",
    "random tokens", "random words", "random text", "noise",
    "?", "-", "...", "tbd", "todo",
}  # fmt: skip

# Words that carry no content by themselves: an answer made only of them ("this
# neuron", "the tokens", "something") explains nothing.
_FILLER = {
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "it's", "they", "them",
    "their", "there", "here", "is", "are", "was", "were", "be", "been", "being", "am", "do",
    "does", "did", "has", "have", "had", "will", "would", "can", "could", "and", "or", "but",
    "nor", "so", "yet", "of", "in", "on", "at", "to", "for", "from", "by", "with", "about",
    "as", "into", "onto", "over", "under", "than", "then", "also", "just", "only", "very",
    "quite", "rather", "some", "any", "many", "much", "more", "most", "several", "all", "each",
    "every", "both", "either", "neither", "one", "ones", "other", "others", "such", "what",
    "which", "who", "whom", "whose", "when", "where", "why", "how", "not", "no", "neuron",
    "neurons", "token", "tokens", "word", "words", "thing", "things", "something", "anything",
    "everything", "stuff", "text", "texts", "pattern", "patterns", "activation", "activations",
    "activate", "activates", "activated", "fires", "fire", "firing", "example", "examples",
    "excerpt", "excerpts", "various", "certain", "specific", "particular", "different", "same",
    "kind", "kinds", "type", "types", "sort", "sorts", "find", "finds", "main", "high", "low",
    "strong", "strongly", "response", "responds", "value", "values", "explanation",
    "explanations", "explain", "explains", "behavior", "behaviour", "answer", "answers",
}  # fmt: skip
# A word right after one of these names what is meant ("the word the", "such as it").
_NAMING = {"word", "words", "token", "tokens", "letter", "letters", "like", "as", "character"}


def _has_content(unquoted: str, quoted: list[str]) -> bool:
    if any(q.strip() for q in quoted):
        return True  # a quoted token is the content ("the word 'the'", "')'")
    words = [w for w in _WORD.findall(unquoted) if w != _QUOTE_MARK.strip()]
    return any(w not in _FILLER or (i > 0 and words[i - 1] in _NAMING) for i, w in enumerate(words))


def why_not_explanation(text: str) -> str | None:
    """Why `text` is not an explanation (a short reason), or None when it is one.

    Pure, and meant for a cleaned answer (`explanation_or_reason` cleans first), though
    it refuses the prompt's format in a raw one too. Refused: echoes of the prompt
    (`<start>`/`<end>`, `token<TAB>value` rows, "Neuron N", "Activations:", its
    instruction sentences, a few-shot example's explanation or text, talk about "the
    behavior of neurons" instead of the unit's), refusals and non-answers ("There is
    no straightforward answer", "I cannot", "unclear", "N/A", "none"), chat replies
    ("Sure, ...", "Question:"), filler made only of stop-words ("the", "this neuron",
    "something"), and text that is mostly digits, tabs or markup. A quoted token is
    content, so "the word 'the'" and "none of the above words but 'not'" are
    explanations.
    """
    stripped = text.strip()
    if not stripped:
        return "empty answer"
    # -- echoes of the prompt's format
    if _MARKERS.search(stripped):
        return "echoes the prompt format (<start>/<end> markers)"
    if _TOKEN_ROW.search(stripped) or stripped.count("\t") >= 2:
        return _ECHO_ROWS
    if _ACTIVATIONS_LABEL.search(stripped):
        return "echoes the prompt format (Activations:)"
    chars = [c for c in stripped if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters == 0:
        return "no words (only digits or punctuation)"
    if len(stripped) < 2:
        return "too short"
    if letters < 0.5 * len(chars):
        return "mostly digits, tabs or markup"

    quoted = ["".join(g for g in m.groups() if g) for m in _QUOTED.finditer(stripped)]
    unquoted = _QUOTED.sub(_QUOTE_MARK, stripped).lower().replace("’", "'")
    unquoted = re.sub(r"\s+", " ", unquoted).strip()
    if _NEURON_N.search(unquoted) and not _has_content(_NEURON_N.sub(" ", unquoted), quoted):
        return "echoes the prompt format (Neuron N)"
    if _META.search(unquoted):
        return "describes the task, not the unit"
    # -- copies of the prompt's text
    if is_copied_example(stripped):
        return "copies a few-shot example's explanation"
    norm = _norm(stripped)
    if len(norm.split()) >= 3 and any(norm in p for p in _PROMPT_TEXTS):
        return "repeats the prompt's instructions"
    if any(s in norm for s in _PROMPT_SENTENCES):
        return "repeats the prompt's instructions"
    if len(norm.split()) >= 4 and any(norm in ex for ex in _EXAMPLE_EXCERPTS):
        return "copies a few-shot example's text"
    # -- refusals and non-answers (quoted words are not the explainer speaking)
    bare = unquoted.strip(" .!?,;:")
    if bare in _NON_ANSWERS or any(p.search(unquoted) for p in _REFUSALS):
        return "a refusal or non-answer"
    if _CHATTER.search(unquoted):
        return "a chat reply, not an explanation"
    if not _has_content(unquoted, quoted):
        return "no content words (filler)"
    return None


__all__ = [
    "MAX_EXPLANATION_CHARS",
    "clean_explanation",
    "explanation_or_reason",
    "is_copied_example",
    "why_not_explanation",
]
