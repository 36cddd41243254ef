"""Known rules that turn an excerpt's tokens into activations (pure functions).

A synthetic unit's activations come from one rule applied to real text, so its true
explanation is known. Every false explanation of a unit is a rule too: that lets the
suite builder compute how a *perfect* simulator would score each false explanation (its
"oracle score", the correlation of its rule with the true rule on the unit's excerpts)
and keep only false explanations a perfect simulator ranks clearly below the true one.

Rules see one excerpt at a time, exactly as a simulator does: a context rule ("the
token after 'the'") is computed inside the excerpt, never from text the simulator
cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Tokens = Sequence[str]
RuleFn = Callable[[Tokens], list[float]]

HIGH = 10.0


@dataclass(frozen=True)
class Rule:
    """One explanation and the activations it describes."""

    explanation: str
    fn: RuleFn

    def __call__(self, tokens: Tokens) -> list[float]:
        values = self.fn(tokens)
        if len(values) != len(tokens):  # a rule bug, not a data problem
            raise AssertionError(f"rule {self.explanation!r} gave {len(values)} values")
        return values


@dataclass(frozen=True)
class UnitSpec:
    """A synthetic unit: its category, true rule and hard false ones (kind, rule)."""

    id: str
    category: str  # token | context | graded | sparse | dense
    true: Rule
    false: tuple[tuple[str, Rule], ...]


# -- token predicates --------------------------------------------------------------------


def word(token: str) -> str:
    return token.strip().lower()


def is_word(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z]+", token.strip()))


def by_token(pred: Callable[[str], bool], value: float = HIGH) -> RuleFn:
    return lambda tokens: [value if pred(t) else 0.0 for t in tokens]


def words(*ws: str) -> RuleFn:
    wanted = {w.lower() for w in ws}
    return by_token(lambda t: word(t) in wanted)


def exact_words(*ws: str) -> RuleFn:
    """Case-sensitive word match (`None` the constant, not `none` the word)."""
    wanted = set(ws)
    return by_token(lambda t: t.strip() in wanted)


def union(*fns: RuleFn) -> RuleFn:
    return lambda tokens: [max(vs) for vs in zip(*(f(tokens) for f in fns), strict=True)]


def minus(fn: RuleFn, other: RuleFn) -> RuleFn:
    return lambda tokens: [
        a if b == 0 else 0.0 for a, b in zip(fn(tokens), other(tokens), strict=True)
    ]


def chars_in(chars: str) -> Callable[[str], bool]:
    return lambda t: bool(t.strip()) and any(c in chars for c in t)


PUNCT = set(".,;:!?()[]{}'\"-")


def is_punct(t: str) -> bool:
    s = t.strip()
    return bool(s) and all(c in PUNCT for c in s)


def is_digits(t: str) -> bool:
    return t.strip().isdigit()


# -- context helpers ---------------------------------------------------------------------


def after(pred: Callable[[str], bool], target: Callable[[str], bool] = is_word) -> RuleFn:
    """The first matching token after each token that matches `pred`."""

    def fn(tokens: Tokens) -> list[float]:
        out = [0.0] * len(tokens)
        waiting = False
        for i, t in enumerate(tokens):
            if waiting and target(t):
                out[i] = HIGH
                waiting = False
            elif waiting and t.strip():
                waiting = False
            if pred(t):
                waiting = True
        return out

    return fn


def before(pred: Callable[[str], bool], target: Callable[[str], bool] = is_word) -> RuleFn:
    """Tokens matching `target` directly followed by a token matching `pred`."""

    def fn(tokens: Tokens) -> list[float]:
        return [
            HIGH if target(t) and i + 1 < len(tokens) and pred(tokens[i + 1]) else 0.0
            for i, t in enumerate(tokens)
        ]

    return fn


def _char_states(tokens: Tokens, step: Callable[[str, int], int]) -> list[list[int]]:
    """Per token, the state after each of its characters (state machine over the text)."""
    state = 0
    out = []
    for t in tokens:
        per = []
        for c in t:
            state = step(c, state)
            per.append(state)
        out.append(per)
    return out


def depth_rule(open_: str, close: str, graded: bool = False) -> RuleFn:
    """Content tokens inside brackets (not the brackets); graded: stronger when deeper."""

    def fn(tokens: Tokens) -> list[float]:
        out, depth = [], 0
        for t in tokens:
            start = depth
            for c in t:
                if c in open_:
                    depth += 1
                elif c in close:
                    depth = max(0, depth - 1)
            d = min(start, depth)
            content = bool(t.strip()) and not any(c in open_ + close for c in t)
            if d > 0 and content:
                out.append(min(HIGH, 4.0 * d) if graded else HIGH)
            else:
                out.append(0.0)
        return out

    return fn


def inside_double_quotes(tokens: Tokens) -> list[float]:
    def step(c: str, s: int) -> int:
        return 1 - s if c == '"' else s

    states = _char_states(tokens, step)
    out = []
    for t, st in zip(tokens, states, strict=True):
        inside = [s for c, s in zip(t, st, strict=True) if c != '"' and not c.isspace()]
        out.append(HIGH if inside and all(inside) else 0.0)
    return out


def _lines(tokens: Tokens) -> list[int]:
    """Line number of each token (a token holding a newline ends its line)."""
    line, out = 0, []
    for t in tokens:
        out.append(line)
        line += t.count("\n")
    return out


def code_lines(tokens: Tokens) -> list[bool]:
    """Whether each token is on a code line: starting with `>>>`/`...` or indented 4+."""
    ids = _lines(tokens)
    text_by_line: dict[int, str] = {}
    for t, i in zip(tokens, ids, strict=True):
        text_by_line[i] = text_by_line.get(i, "") + t.split("\n")[0]
    code = {
        i: bool(re.match(r"(>>>|\.\.\.|    )", s)) or s.startswith("\t")
        for i, s in text_by_line.items()
    }
    # The first line of an excerpt is cut mid-way: only its own marker counts.
    return [code[i] and bool(t.strip()) for t, i in zip(tokens, ids, strict=True)]


def in_code(fn: RuleFn) -> RuleFn:
    return lambda tokens: [
        v if c else 0.0 for v, c in zip(fn(tokens), code_lines(tokens), strict=True)
    ]


def in_prose(fn: RuleFn) -> RuleFn:
    return lambda tokens: [
        0.0 if c else v for v, c in zip(fn(tokens), code_lines(tokens), strict=True)
    ]


def repeated(first: bool = False) -> RuleFn:
    """Words seen earlier in the excerpt (or, with first=True, their first occurrence)."""

    def fn(tokens: Tokens) -> list[float]:
        seen: set[str] = set()
        out = []
        for t in tokens:
            w = word(t)
            ok = is_word(t) and len(w) > 2
            out.append(HIGH if ok and ((w in seen) != first) else 0.0)
            if ok:
                seen.add(w)
        return out

    return fn


def sentence_start(tokens: Tokens) -> list[float]:
    out, start = [], False
    for t in tokens:
        if start and is_word(t):
            out.append(HIGH if t.strip()[0].isupper() else 0.0)
            start = False
        else:
            out.append(0.0)
        if t.strip() in (".", "!", "?") or t.endswith(". "):
            start = True
    return out


def sentence_end(tokens: Tokens) -> list[float]:
    return [
        HIGH
        if is_word(t) and i + 1 < len(tokens) and tokens[i + 1].strip() in (".", "!", "?")
        else 0.0
        for i, t in enumerate(tokens)
    ]


def list_position(tokens: Tokens) -> list[float]:
    """First word after each comma, rising with how many commas the sentence has had."""
    out, commas, waiting = [], 0, False
    for t in tokens:
        s = t.strip()
        if waiting and is_word(t):
            out.append(min(HIGH, 2.5 * commas))
            waiting = False
        else:
            out.append(0.0)
        if s == ",":
            commas += 1
            waiting = True
        elif s in (".", "!", "?", ":") or "\n" in t:
            commas, waiting = 0, False
    return out


def first_list_item(tokens: Tokens) -> list[float]:
    """The word after the first comma of a sentence only (the reverse of list_position)."""
    return [HIGH if v == 2.5 else 0.0 for v in list_position(tokens)]


def every_word_after_comma(tokens: Tokens) -> list[float]:
    return [HIGH if v > 0 else 0.0 for v in list_position(tokens)]


def ramp(up: bool) -> RuleFn:
    def fn(tokens: Tokens) -> list[float]:
        n = max(1, len(tokens) - 1)
        return [round(HIGH * (i / n if up else 1 - i / n), 2) for i in range(len(tokens))]

    return fn


def last_token(tokens: Tokens) -> list[float]:
    return [HIGH if i == len(tokens) - 1 else 0.0 for i in range(len(tokens))]


def length_graded(long: bool) -> RuleFn:
    def fn(tokens: Tokens) -> list[float]:
        out = []
        for t in tokens:
            n = len(t.strip()) if is_word(t) else 0
            if long:
                out.append(min(HIGH, max(0.0, (n - 3) * 2.0)))
            else:
                out.append(HIGH if 0 < n <= 3 else 0.0)
        return out

    return fn


def constant_on_words(tokens: Tokens) -> list[float]:
    return [HIGH if is_word(t) else 0.0 for t in tokens]


# -- word lists --------------------------------------------------------------------------

KEYWORDS = [
    "def",
    "return",
    "import",
    "class",
    "lambda",
    "yield",
    "elif",
    "except",
    "raise",
    "pass",
    "assert",
    "del",
    "await",
    "nonlocal",
    "global",
    "try",
    "finally",
    "while",
]
BUILTINS = [
    "print",
    "len",
    "range",
    "str",
    "int",
    "list",
    "dict",
    "open",
    "type",
    "isinstance",
    "sorted",
    "set",
    "tuple",
]
NEGATIONS = ["not", "no", "never", "cannot", "nothing", "none", "neither", "nor"]
MODALS = ["can", "may", "must", "should", "will", "would", "could", "might", "shall"]
BE_FORMS = ["is", "are", "was", "were", "be", "been", "being", "am"]
PRONOUNS = ["it", "they", "you", "we", "he", "she", "i", "them", "us", "him", "her"]
POSSESSIVES = ["its", "their", "your", "our", "his", "my"]
PREPOSITIONS = [
    "of",
    "in",
    "on",
    "at",
    "to",
    "with",
    "from",
    "by",
    "for",
    "into",
    "about",
    "over",
    "under",
]
CONJUNCTIONS = ["and", "or", "but", "nor", "so", "yet"]
DETERMINERS = ["the", "a", "an", "this", "that", "these", "those"]
ERROR_WORDS = ("error", "exception", "raise", "raised", "raises", "traceback")
WARNING_WORDS = ("warning", "warnings", "deprecated", "deprecation", "warn")
LANGUAGES = ["python", "c", "java", "perl", "unix", "windows", "linux"]
OPERATORS_CMP = ("==", "!=", "<", ">", "<=", ">=")
OPERATORS_ARITH = ("+", "-", "*", "/", "%", "**", "//")


def contains_any(*subs: str) -> Callable[[str], bool]:
    return lambda t: is_word(t) and any(s in word(t) for s in subs)


def strip_is(*options: str) -> Callable[[str], bool]:
    return lambda t: t.strip() in options


def is_capitalised(t: str) -> bool:
    return is_word(t) and t.strip()[0].isupper()


def is_all_caps(t: str) -> bool:
    return is_word(t) and len(t.strip()) > 1 and t.strip().isupper()


def is_content_word(t: str) -> bool:
    return is_word(t) and len(t.strip()) > 3 and word(t) not in set(PREPOSITIONS + DETERMINERS)


def is_identifier_part(t: str) -> bool:
    s = t.strip()
    return bool(s) and bool(re.fullmatch(r"[A-Za-z0-9_]+", s)) and ("_" in s or s.islower())


def starts_word(t: str) -> bool:
    return t.startswith(" ") and len(t) > 1 and t[1].isalpha()


def continues_word(t: str) -> bool:
    return bool(t) and t[0].isalpha()


# -- the units ---------------------------------------------------------------------------


def _u(id_: str, category: str, true: tuple[str, RuleFn], *false: tuple[str, str, RuleFn]):
    return UnitSpec(
        id=id_,
        category=category,
        true=Rule(true[0], true[1]),
        false=tuple((kind, Rule(text, fn)) for kind, text, fn in false),
    )


OVER_GENERAL = "over-general"
OVER_SPECIFIC = "over-specific"
NEIGHBOUR = "neighbouring-concept"
WRONG_CONTEXT = "wrong-context"

UNITS: tuple[UnitSpec, ...] = (
    # ---- single tokens ----
    _u(
        "digits",
        "token",
        ("numbers written with digits", by_token(is_digits)),
        (
            OVER_GENERAL,
            "numbers, digits and punctuation marks",
            by_token(lambda t: is_digits(t) or is_punct(t)),
        ),
        (OVER_SPECIFIC, "the digit 0", words("0")),
        (NEIGHBOUR, "arithmetic operators such as + and *", by_token(strip_is(*OPERATORS_ARITH))),
        (
            WRONG_CONTEXT,
            "digits inside parentheses",
            lambda ts: [
                a if b else 0.0
                for a, b in zip(by_token(is_digits)(ts), depth_rule("(", ")")(ts), strict=True)
            ],
        ),
    ),
    _u(
        "closing-brackets",
        "token",
        ("closing brackets and parentheses", by_token(chars_in(")]}"))),
        (NEIGHBOUR, "opening brackets and parentheses", by_token(chars_in("([{"))),
        (OVER_GENERAL, "punctuation marks", by_token(is_punct)),
        (OVER_SPECIFIC, "a closing square bracket ]", by_token(chars_in("]"))),
        (WRONG_CONTEXT, "text inside parentheses", depth_rule("(", ")")),
    ),
    _u(
        "word-the",
        "token",
        ("the word 'the'", words("the")),
        (
            OVER_GENERAL,
            "articles and determiners such as the, a, this and that",
            words(*DETERMINERS),
        ),
        (NEIGHBOUR, "the words 'a' and 'an'", words("a", "an")),
        (WRONG_CONTEXT, "the word right after 'the'", after(lambda t: word(t) == "the")),
    ),
    _u(
        "python-keywords",
        "token",
        ("Python keywords such as def, return, import and class", words(*KEYWORDS)),
        (NEIGHBOUR, "names of built-in functions such as print, len and range", words(*BUILTINS)),
        (OVER_SPECIFIC, "the keyword 'return'", words("return")),
        (OVER_GENERAL, "short lowercase words", length_graded(long=False)),
    ),
    _u(
        "negation",
        "token",
        ("negation words: not, no, never, cannot", words(*NEGATIONS)),
        (OVER_SPECIFIC, "the word 'not'", words("not")),
        (NEIGHBOUR, "modal verbs such as can, may and must", words(*MODALS)),
        (
            OVER_GENERAL,
            "short function words such as of, to, is and not",
            words(*(PREPOSITIONS + BE_FORMS + NEGATIONS)),
        ),
    ),
    _u(
        "modal-verbs",
        "token",
        ("modal verbs such as can, may, must, should and will", words(*MODALS)),
        (NEIGHBOUR, "negations such as not and never", words(*NEGATIONS)),
        (OVER_SPECIFIC, "the word 'must'", words("must")),
        (OVER_GENERAL, "verbs such as is, can, are and be", words(*(MODALS + BE_FORMS))),
    ),
    _u(
        "pronouns",
        "token",
        ("personal pronouns such as it, they, you and we", words(*PRONOUNS)),
        (OVER_SPECIFIC, "the word 'it'", words("it")),
        (NEIGHBOUR, "possessive words such as its, their and your", words(*POSSESSIVES)),
        (OVER_GENERAL, "articles and pronouns", words(*(PRONOUNS + DETERMINERS))),
    ),
    _u(
        "be-forms",
        "token",
        ("forms of the verb 'to be': is, are, was, be", words(*BE_FORMS)),
        (OVER_SPECIFIC, "the word 'is'", words("is")),
        (NEIGHBOUR, "modal verbs such as can and may", words(*MODALS)),
        (WRONG_CONTEXT, "the word after 'is' or 'are'", after(lambda t: word(t) in BE_FORMS)),
    ),
    _u(
        "prepositions",
        "token",
        ("prepositions such as of, in, on, to and with", words(*PREPOSITIONS)),
        (OVER_SPECIFIC, "the word 'of'", words("of")),
        (NEIGHBOUR, "conjunctions such as and, or and but", words(*CONJUNCTIONS)),
        (OVER_GENERAL, "short words of three letters or fewer", length_graded(long=False)),
    ),
    _u(
        "conjunctions",
        "token",
        ("the conjunctions and, or and but", words(*CONJUNCTIONS)),
        (OVER_SPECIFIC, "the word 'or'", words("or")),
        (NEIGHBOUR, "commas", by_token(strip_is(","))),
        (
            OVER_GENERAL,
            "short words such as and, of, the and to",
            words(*(CONJUNCTIONS + PREPOSITIONS + DETERMINERS)),
        ),
    ),
    _u(
        "constants",
        "token",
        ("the Python constants None, True and False", exact_words("None", "True", "False")),
        (OVER_SPECIFIC, "the constant None", exact_words("None")),
        (OVER_GENERAL, "words starting with a capital letter", by_token(is_capitalised)),
        (NEIGHBOUR, "Python keywords such as def and return", words(*KEYWORDS)),
    ),
    _u(
        "error-words",
        "token",
        (
            "words about errors and exceptions, such as Error, raise and exception",
            by_token(contains_any(*ERROR_WORDS)),
        ),
        (NEIGHBOUR, "words about warnings and deprecation", by_token(contains_any(*WARNING_WORDS))),
        (OVER_SPECIFIC, "the word 'raise'", words("raise")),
        (OVER_GENERAL, "words starting with a capital letter", by_token(is_capitalised)),
    ),
    _u(
        "commas",
        "token",
        ("commas", by_token(strip_is(","))),
        (NEIGHBOUR, "full stops at the end of sentences", by_token(strip_is("."))),
        (OVER_GENERAL, "punctuation marks", by_token(is_punct)),
        (WRONG_CONTEXT, "the word after a comma", after(strip_is(","))),
    ),
    _u(
        "periods",
        "token",
        ("full stops (periods)", by_token(lambda t: t.strip() in (".", ".\n") or t == ".")),
        (NEIGHBOUR, "commas", by_token(strip_is(","))),
        (OVER_GENERAL, "punctuation marks", by_token(is_punct)),
        (WRONG_CONTEXT, "the last word of a sentence, before the full stop", sentence_end),
    ),
    _u(
        "colons",
        "token",
        ("colons", by_token(lambda t: ":" in t and not t.strip(":").strip())),
        (NEIGHBOUR, "commas and semicolons", by_token(strip_is(",", ";"))),
        (OVER_GENERAL, "punctuation marks", by_token(is_punct)),
        (WRONG_CONTEXT, "the word before a colon", before(lambda t: t.strip().startswith(":"))),
    ),
    _u(
        "dunder",
        "token",
        ("double underscores, as in __init__ and __name__", by_token(lambda t: "__" in t)),
        (OVER_GENERAL, "any underscore or dot inside code names", by_token(chars_in("_."))),
        (NEIGHBOUR, "dots between names, as in os.path", by_token(strip_is("."))),
        (OVER_SPECIFIC, "the name __init__", by_token(lambda t: "init" in t)),
    ),
    _u(
        "word-self",
        "token",
        ("the word self", words("self")),
        (NEIGHBOUR, "the word cls or the word class", words("cls", "class")),
        (OVER_GENERAL, "lowercase code names", by_token(is_identifier_part)),
        (
            WRONG_CONTEXT,
            "the word after self.",
            after(lambda t: word(t) == "self", lambda t: is_word(t)),
        ),
    ),
    _u(
        "ing-words",
        "token",
        ("words ending in -ing", by_token(lambda t: is_word(t) and word(t).endswith("ing"))),
        (
            NEIGHBOUR,
            "words ending in -ed",
            by_token(lambda t: is_word(t) and word(t).endswith("ed")),
        ),
        (OVER_SPECIFIC, "the word 'string'", words("string", "strings")),
        (OVER_GENERAL, "long words", length_graded(long=True)),
    ),
    # ---- context ----
    _u(
        "after-the",
        "context",
        ("the word right after 'the'", after(lambda t: word(t) == "the")),
        (NEIGHBOUR, "the word 'the'", words("the")),
        (NEIGHBOUR, "the word right after 'a' or 'an'", after(lambda t: word(t) in ("a", "an"))),
        (OVER_GENERAL, "nouns and other content words", by_token(is_content_word)),
    ),
    _u(
        "in-quotes",
        "context",
        ("text inside double quotes", inside_double_quotes),
        (NEIGHBOUR, "double quote marks", by_token(chars_in('"'))),
        (NEIGHBOUR, "text inside parentheses", depth_rule("(", ")")),
        (OVER_GENERAL, "lowercase code names", by_token(is_identifier_part)),
    ),
    _u(
        "in-parens",
        "context",
        ("text inside parentheses", depth_rule("(", ")")),
        (NEIGHBOUR, "parentheses themselves", by_token(chars_in("()"))),
        (NEIGHBOUR, "text inside square brackets", depth_rule("[", "]")),
        (
            WRONG_CONTEXT,
            "the name right before an opening parenthesis",
            before(lambda t: t.strip().startswith("("), is_identifier_part),
        ),
    ),
    _u(
        "code-lines",
        "context",
        (
            "code in interactive examples (lines starting with >>>)",
            lambda ts: [HIGH if c else 0.0 for c in code_lines(ts)],
        ),
        (NEIGHBOUR, "the >>> prompt marker", by_token(lambda t: ">>" in t)),
        (WRONG_CONTEXT, "prose sentences explaining the code", in_prose(constant_on_words)),
        (OVER_SPECIFIC, "the word print", words("print")),
    ),
    _u(
        "in-code-only",
        "context",
        ("the word 'in' inside code examples, as in 'for x in y'", in_code(words("in"))),
        (OVER_GENERAL, "the word 'in' anywhere", words("in")),
        (WRONG_CONTEXT, "the word 'in' in prose", in_prose(words("in"))),
        (NEIGHBOUR, "the word 'for' inside code", in_code(words("for"))),
    ),
    _u(
        "sentence-start",
        "context",
        ("the first word of a sentence", sentence_start),
        (OVER_GENERAL, "words starting with a capital letter", by_token(is_capitalised)),
        (WRONG_CONTEXT, "the last word of a sentence", sentence_end),
        (NEIGHBOUR, "full stops", by_token(strip_is("."))),
    ),
    _u(
        "defined-name",
        "context",
        (
            "the name of a function or class being defined, right after def or class",
            after(lambda t: word(t) in ("def", "class"), is_identifier_part),
        ),
        (NEIGHBOUR, "the keywords def and class", words("def", "class")),
        (
            WRONG_CONTEXT,
            "a function name being called, before its parenthesis",
            before(lambda t: t.strip().startswith("("), is_identifier_part),
        ),
        (OVER_GENERAL, "lowercase code names", by_token(is_identifier_part)),
    ),
    _u(
        "after-import",
        "context",
        ("module names after import or from", after(lambda t: word(t) in ("import", "from"))),
        (NEIGHBOUR, "the words import and from", words("import", "from")),
        (WRONG_CONTEXT, "names after a dot, as in os.path", after(strip_is("."))),
        (OVER_GENERAL, "lowercase code names", by_token(is_identifier_part)),
    ),
    _u(
        "repeated-word",
        "context",
        ("a word that already appeared earlier in the text", repeated()),
        (NEIGHBOUR, "the first time a word appears", repeated(first=True)),
        (OVER_GENERAL, "every word", constant_on_words),
        (
            OVER_SPECIFIC,
            "the word 'the' when it repeats",
            lambda ts: [
                a if b else 0.0 for a, b in zip(repeated()(ts), words("the")(ts), strict=True)
            ],
        ),
    ),
    _u(
        "call-name",
        "context",
        (
            "a function name right before an opening parenthesis, as in len(",
            before(lambda t: t.strip().startswith("("), is_identifier_part),
        ),
        (NEIGHBOUR, "opening parentheses", by_token(chars_in("("))),
        (WRONG_CONTEXT, "the arguments inside parentheses", depth_rule("(", ")")),
        (OVER_SPECIFIC, "the names print and len", words("print", "len")),
    ),
    _u(
        "attribute",
        "context",
        (
            "attribute or method names right after a dot, as in os.path",
            after(strip_is("."), is_identifier_part),
        ),
        (NEIGHBOUR, "the dot between names", by_token(strip_is("."))),
        (WRONG_CONTEXT, "the module name before a dot", before(strip_is("."), is_identifier_part)),
        (OVER_GENERAL, "lowercase code names", by_token(is_identifier_part)),
    ),
    # ---- graded ----
    _u(
        "list-position",
        "graded",
        ("items of a comma-separated list, stronger for each later item", list_position),
        (NEIGHBOUR, "commas", by_token(strip_is(","))),
        (WRONG_CONTEXT, "only the first item after a comma", first_list_item),
        (OVER_GENERAL, "every word after a comma, all equally", every_word_after_comma),
    ),
    _u(
        "nesting-depth",
        "graded",
        (
            "text inside brackets, stronger the deeper it is nested",
            depth_rule("([{", ")]}", graded=True),
        ),
        (NEIGHBOUR, "the brackets themselves", by_token(chars_in("()[]{}"))),
        (
            WRONG_CONTEXT,
            "text outside any brackets",
            lambda ts: [
                0.0 if a else (HIGH if is_word(t) else 0.0)
                for a, t in zip(depth_rule("([{", ")]}")(ts), ts, strict=True)
            ],
        ),
        (OVER_SPECIFIC, "text inside square brackets", depth_rule("[", "]")),
    ),
    _u(
        "position-ramp",
        "graded",
        ("every token, rising steadily from the start of the text to its end", ramp(up=True)),
        (NEIGHBOUR, "every token, strongest at the start of the text and falling", ramp(up=False)),
        (OVER_SPECIFIC, "the last token of the text", last_token),
        (OVER_GENERAL, "every word equally", constant_on_words),
    ),
    _u(
        "word-length",
        "graded",
        ("long words: the longer the word, the stronger", length_graded(long=True)),
        (NEIGHBOUR, "short words of three letters or fewer", length_graded(long=False)),
        (OVER_GENERAL, "every word equally", constant_on_words),
        (OVER_SPECIFIC, "words starting with a capital letter", by_token(is_capitalised)),
    ),
    # ---- sparse ----
    _u(
        "word-python",
        "sparse",
        ("the word Python", words("python")),
        (NEIGHBOUR, "the word module", words("module", "modules")),
        (
            OVER_GENERAL,
            "names of programming languages and systems such as Python, C and Unix",
            words(*LANGUAGES),
        ),
        (OVER_GENERAL, "words starting with a capital letter", by_token(is_capitalised)),
    ),
    _u(
        "word-file",
        "sparse",
        ("the word file", words("file", "files")),
        (NEIGHBOUR, "the word directory or path", words("directory", "path", "paths")),
        (OVER_GENERAL, "nouns and other content words", by_token(is_content_word)),
        (
            OVER_SPECIFIC,
            "the word file after 'the'",
            lambda ts: [
                a if b else 0.0
                for a, b in zip(
                    words("file", "files")(ts), after(lambda t: word(t) == "the")(ts), strict=True
                )
            ],
        ),
    ),
    _u(
        "all-caps",
        "sparse",
        ("words written in capital letters, such as NULL or UTF", by_token(is_all_caps)),
        (OVER_GENERAL, "words starting with a capital letter", by_token(is_capitalised)),
        (NEIGHBOUR, "numbers written with digits", by_token(is_digits)),
        (
            NEIGHBOUR,
            "the Python constants None, True and False",
            exact_words("None", "True", "False"),
        ),
    ),
    # ---- dense ----
    _u(
        "word-starts",
        "dense",
        ("every token that begins a new word (starts with a space)", by_token(starts_word)),
        (
            NEIGHBOUR,
            "pieces that continue a word without a space",
            by_token(lambda t: continues_word(t)),
        ),
        (NEIGHBOUR, "punctuation marks", by_token(is_punct)),
        (OVER_SPECIFIC, "words starting with a capital letter", by_token(is_capitalised)),
    ),
    _u(
        "capitalised",
        "dense",
        ("words starting with a capital letter", by_token(is_capitalised)),
        (OVER_SPECIFIC, "the first word of a sentence", sentence_start),
        (NEIGHBOUR, "lowercase code names", by_token(is_identifier_part)),
        (OVER_GENERAL, "every word", constant_on_words),
    ),
    _u(
        "newlines",
        "dense",
        ("line breaks", by_token(lambda t: "\n" in t)),
        (NEIGHBOUR, "full stops at the end of sentences", by_token(strip_is("."))),
        (NEIGHBOUR, "colons", by_token(lambda t: t.strip() == ":")),
        (
            OVER_GENERAL,
            "punctuation marks and line breaks",
            by_token(lambda t: is_punct(t) or "\n" in t),
        ),
    ),
)


def unit_specs(ids: Iterable[str] | None = None) -> list[UnitSpec]:
    if ids is None:
        return list(UNITS)
    wanted = set(ids)
    return [u for u in UNITS if u.id in wanted]
