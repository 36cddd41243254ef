"""A validation suite of held-out rules, for choosing simulator training stages.

The built-in suite's dev half cannot choose between trained simulators: the training
recipes (`bench/finetune_simulator.py`) train on most of its rules, and only 8 of its 20
units are kept out of training (their texts name a test concept). Stages were rejected on
those 8 alone, where the bundled adapter wins three by less than 0.005 (bench/README.md).

This script writes a third set of units for that choice: rules on the same built-in text
whose true explanations are *not* training rules of any recipe (v1–v5, seeds 0–6) and
whose texts — true and false — name no concept of the test half (the training script's
own keyword filter). Every unit is marked `dev` (tuning data; never a report). It checks
both conditions before writing, so a later edit that breaks them fails here.

    .venv/bin/python bench/heldout_suite.py --out bench/data/heldout-val.jsonl
    .venv/bin/neuroscribe check simulator --suite bench/data/heldout-val.jsonl --split dev \
        --simulator 'hf:embedded?adapter=/tmp/ns-v5/adapter.safetensors'
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

# Appended, not prepended: the sibling training script is importable, and bench/'s other
# scripts (record.py, models.py, ...) never shadow an installed module of the same name.
sys.path.append(str(Path(__file__).parent))

from finetune_simulator import _after_to_eol, allowed, training_rules

from neuroscribe.groundtruth import rules as R
from neuroscribe.groundtruth.rules import (
    HIGH,
    NEIGHBOUR,
    OVER_GENERAL,
    OVER_SPECIFIC,
    WRONG_CONTEXT,
    _u,
    after,
    by_token,
    in_code,
    in_prose,
    is_word,
    word,
    words,
)

OBJECT_WORDS = ("object", "objects", "instance", "instances", "reference", "references")
VALUE_WORDS = ("value", "values", "result", "results", "output", "input")
ORDINALS = ("first", "second", "third", "last", "next", "previous", "final")
FREQUENCY = ("always", "often", "usually", "sometimes")
CONNECTIVES = ("also", "however", "therefore", "thus", "instead", "otherwise")
IO_VERBS = ("read", "write", "reading", "writing", "open", "opened", "written")
CREATE_VERBS = ("create", "created", "creates", "make", "build", "generate", "generated")
VERSION_WORDS = ("version", "versions", "release", "changed", "added")
VOWELS = "aeiou"


def _symbol(ch: str):
    return by_token(lambda t: ch in t and not is_word(t))


def inside_single_quotes(tokens):
    """Content inside '...': a quote between two letters is an apostrophe (don't)."""
    text = "".join(tokens)
    inside, state = [], False
    for i, c in enumerate(text):
        if c == "'":
            apostrophe = 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
            if not apostrophe:
                state = not state
                inside.append(None)
                continue
        inside.append(state)
    out, pos = [], 0
    for t in tokens:
        flags = [f for c, f in zip(t, inside[pos : pos + len(t)], strict=True) if not c.isspace()]
        pos += len(t)
        out.append(HIGH if flags and all(f is True for f in flags) else 0.0)
    return out


def nth_word_of_line(n: int):
    """The n-th word (1-based) of each line that starts inside the excerpt."""

    def fn(tokens):
        out = [0.0] * len(tokens)
        lines = R._lines(tokens)
        seen: dict[int, int] = {}
        for i, t in enumerate(tokens):
            if lines[i] == 0 or not is_word(t):
                continue  # the excerpt cuts its first line: its word count is unknown
            seen[lines[i]] = seen.get(lines[i], 0) + 1
            if seen[lines[i]] == n:
                out[i] = HIGH
        return out

    return fn


def before_first_break(tokens):
    out, on = [], True
    for t in tokens:
        out.append(HIGH if on and is_word(t) else 0.0)
        if "\n" in t:
            on = False
    return out


def after_last_break(tokens):
    last = max((i for i, t in enumerate(tokens) if "\n" in t), default=len(tokens))
    return [HIGH if i > last and is_word(t) else 0.0 for i, t in enumerate(tokens)]


def line_ramp(right: bool):
    """Words graded by their place on the line: 2 per word, from the left or the right."""

    def fn(tokens):
        lines = R._lines(tokens)
        by_line: dict[int, list[int]] = {}
        for i, t in enumerate(tokens):
            if is_word(t):
                by_line.setdefault(lines[i], []).append(i)
        out = [0.0] * len(tokens)
        for ids in by_line.values():
            for k, i in enumerate(ids if right else ids[::-1]):
                out[i] = min(HIGH, 2.0 * (k + 1))
        return out

    return fn


def on_repeat(ws: tuple[str, ...], *, stronger: bool):
    """Each occurrence of the words graded by how many came before it in the excerpt:
    4 more per repeat (stronger, up to 10) or 4 less (weaker, from 10 down to 2)."""

    def fn(tokens):
        out, seen = [], 0
        for t in tokens:
            if is_word(t) and word(t) in ws:
                seen += 1
                out.append(min(HIGH, 4.0 * seen) if stronger else max(2.0, HIGH - 4.0 * (seen - 1)))
            else:
                out.append(0.0)
        return out

    return fn


def if_condition(tokens):
    """Tokens after `if` up to the colon that ends its line's condition."""
    out, on = [], False
    for t in tokens:
        if on and (":" in t or "\n" in t):
            on = False
            out.append(0.0)
            continue
        out.append(HIGH if on and t.strip() else 0.0)
        if word(t) == "if":
            on = True
    return out


def line_number_ramp(tokens):
    lines = R._lines(tokens)
    return [
        min(HIGH, 2.0 * (line + 1)) if is_word(t) else 0.0
        for t, line in zip(tokens, lines, strict=True)
    ]


def condition_ramp(tokens):
    out, k = [], 0
    for v in if_condition(tokens):
        k = k + 1 if v else 0
        out.append(min(HIGH, 2.0 * k))
    return out


def hyphenated(tokens):
    """Word pieces joined to another word by a hyphen (built-in: built and in)."""
    out = [0.0] * len(tokens)
    for i, t in enumerate(tokens):
        if t != "-" or i == 0 or i + 1 >= len(tokens):
            continue
        left, right = tokens[i - 1], tokens[i + 1]
        if is_word(left) and is_word(right) and not right.startswith(" "):
            out[i - 1] = out[i + 1] = HIGH
    return out


def _letterless(t: str) -> bool:
    return not any(c.isalpha() for c in t)


UNITS = (
    # ---- word classes ----
    _u(
        "v-object-words",
        "token",
        (
            "words about objects and instances, such as object, instance and reference",
            words(*OBJECT_WORDS),
        ),
        (OVER_SPECIFIC, "the word object", words("object", "objects")),
        (
            NEIGHBOUR,
            "words for values and results, such as value, result and output",
            words(*VALUE_WORDS),
        ),
        (
            WRONG_CONTEXT,
            "words about objects and instances, only in code examples",
            in_code(words(*OBJECT_WORDS)),
        ),
    ),
    _u(
        "v-value-words",
        "token",
        ("words for values and results: value, result, output and input", words(*VALUE_WORDS)),
        (OVER_SPECIFIC, "the word value", words("value", "values")),
        (NEIGHBOUR, "words about objects, such as object and instance", words(*OBJECT_WORDS)),
        (
            OVER_GENERAL,
            "common technical nouns such as value, object, list and argument",
            words(*VALUE_WORDS, *OBJECT_WORDS, "list", "lists", "argument", "arguments"),
        ),
    ),
    _u(
        "v-ordinals",
        "token",
        ("ordinal words such as first, second, last and next", words(*ORDINALS)),
        (OVER_SPECIFIC, "the word first", words("first")),
        (NEIGHBOUR, "adverbs of frequency such as always, often and usually", words(*FREQUENCY)),
        (
            WRONG_CONTEXT,
            "the word right after first, last or next",
            after(lambda t: word(t) in ORDINALS),
        ),
    ),
    _u(
        "v-frequency",
        "sparse",
        ("adverbs of frequency: always, often, usually and sometimes", words(*FREQUENCY)),
        (OVER_SPECIFIC, "the words usually and sometimes", words("usually", "sometimes")),
        (NEIGHBOUR, "ordinal words such as first, last and next", words(*ORDINALS)),
        (
            WRONG_CONTEXT,
            "the word right after always or often",
            after(lambda t: word(t) in ("always", "often")),
        ),
    ),
    _u(
        "v-connectives",
        "token",
        ("linking adverbs such as also, however, instead and otherwise", words(*CONNECTIVES)),
        (OVER_SPECIFIC, "the word also", words("also")),
        (NEIGHBOUR, "adverbs of frequency such as always and often", words(*FREQUENCY)),
        (
            WRONG_CONTEXT,
            "the word right after also or however",
            after(lambda t: word(t) in ("also", "however")),
        ),
    ),
    _u(
        "v-io-verbs",
        "sparse",
        ("verbs of reading and writing: read, write, open and written", words(*IO_VERBS)),
        (OVER_SPECIFIC, "the word read", words("read")),
        (NEIGHBOUR, "verbs of making things, such as create, make and build", words(*CREATE_VERBS)),
        (
            OVER_GENERAL,
            "verbs such as read, write, create and open",
            words(*IO_VERBS, *CREATE_VERBS),
        ),
    ),
    _u(
        "v-version-words",
        "token",
        (
            "words about versions and changes: version, release, changed and added",
            words(*VERSION_WORDS),
        ),
        (OVER_SPECIFIC, "the word version", words("version", "versions")),
        (NEIGHBOUR, "the word new", words("new")),
        (WRONG_CONTEXT, "the word right after version", after(lambda t: word(t) == "version")),
    ),
    # ---- symbols ----
    _u(
        "v-vowel-start",
        "dense",
        ("words starting with a vowel", by_token(lambda t: is_word(t) and word(t)[0] in VOWELS)),
        (
            OVER_SPECIFIC,
            "words starting with the letter e",
            by_token(lambda t: is_word(t) and word(t)[0] == "e"),
        ),
        (
            NEIGHBOUR,
            "words ending with a vowel",
            by_token(lambda t: is_word(t) and word(t)[-1] in VOWELS),
        ),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
    ),
    _u(
        "v-backslashes",
        "sparse",
        ("backslashes \\", _symbol("\\")),
        (NEIGHBOUR, "forward slashes /", _symbol("/")),
        (WRONG_CONTEXT, "the word right after a backslash", after(lambda t: "\\" in t)),
        (
            OVER_GENERAL,
            "symbols such as \\, /, | and #",
            by_token(lambda t: any(c in t for c in "\\/|#") and not is_word(t)),
        ),
    ),
    _u(
        "v-letterless",
        "dense",
        (
            "tokens with no letters at all: spaces, symbols and marks",
            by_token(_letterless),
        ),
        (OVER_SPECIFIC, "equals signs and colons", by_token(lambda t: "=" in t or ":" in t)),
        (NEIGHBOUR, "all words alike", by_token(is_word)),
        (WRONG_CONTEXT, "symbols only in code examples", in_code(by_token(_letterless))),
    ),
    # ---- context ----
    _u(
        "v-single-quotes",
        "context",
        ("text inside single quotes, as in 'abc'", inside_single_quotes),
        (
            NEIGHBOUR,
            "the single quote marks themselves",
            by_token(lambda t: "'" in t and not is_word(t)),
        ),
        (WRONG_CONTEXT, "text inside double quotes", R.inside_double_quotes),
        (
            OVER_SPECIFIC,
            "the letter or word right after an opening single quote",
            after(lambda t: "'" in t, target=lambda t: bool(t.strip())),
        ),
    ),
    _u(
        "v-second-word",
        "context",
        ("the second word of each line", nth_word_of_line(2)),
        (NEIGHBOUR, "the opening word of each line", nth_word_of_line(1)),
        (OVER_SPECIFIC, "the third word of each line", nth_word_of_line(3)),
        (
            OVER_GENERAL,
            "the first few words of each line",
            lambda ts: [
                max(vs) for vs in zip(*(nth_word_of_line(k)(ts) for k in (1, 2, 3)), strict=True)
            ],
        ),
    ),
    _u(
        "v-before-first-break",
        "context",
        ("words before the first line break of the text", before_first_break),
        (NEIGHBOUR, "words after the last line break of the text", after_last_break),
        (OVER_SPECIFIC, "the opening word of each line", nth_word_of_line(1)),
        (OVER_GENERAL, "words of prose, not code", in_prose(by_token(is_word))),
    ),
    _u(
        "v-if-condition",
        "context",
        ("the condition of an if statement, between if and its colon", if_condition),
        (OVER_SPECIFIC, "the word if", words("if")),
        (NEIGHBOUR, "the word right after else", after(lambda t: word(t) == "else")),
        (WRONG_CONTEXT, "words after a colon up to the end of the line", _after_to_eol(":")),
    ),
    _u(
        "v-after-ordinal",
        "context",
        (
            "the word right after an ordinal such as first, second or last",
            after(lambda t: word(t) in ORDINALS),
        ),
        (OVER_SPECIFIC, "ordinal words such as first and last", words(*ORDINALS)),
        (NEIGHBOUR, "the word right before first or last", R.before(lambda t: word(t) in ORDINALS)),
        (OVER_GENERAL, "words about order and position", words(*ORDINALS, "before", "after")),
    ),
    _u(
        "v-prose-words",
        "dense",
        ("words of plain prose, not of code examples", in_prose(by_token(is_word))),
        (NEIGHBOUR, "words of code examples, not prose", in_code(by_token(is_word))),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
        (
            OVER_SPECIFIC,
            "words of prose starting with a vowel",
            in_prose(by_token(lambda t: is_word(t) and word(t)[0] in VOWELS)),
        ),
    ),
    # ---- graded ----
    _u(
        "v-line-ramp",
        "graded",
        ("words, stronger the further right they are on their line", line_ramp(right=True)),
        (
            NEIGHBOUR,
            "words, stronger the further left they are on their line",
            line_ramp(right=False),
        ),
        (OVER_SPECIFIC, "the opening word of each line", nth_word_of_line(1)),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
    ),
    _u(
        "v-object-weaker",
        "graded",
        (
            "the word object, weaker each time it comes again",
            on_repeat(("object",), stronger=False),
        ),
        (
            NEIGHBOUR,
            "the word object, stronger each time it comes again",
            on_repeat(("object",), stronger=True),
        ),
        (OVER_GENERAL, "words about objects and instances", words(*OBJECT_WORDS)),
        (WRONG_CONTEXT, "the word right after object", after(lambda t: word(t) == "object")),
    ),
    _u(
        "v-line-number",
        "graded",
        ("words, stronger on each later line of the text", line_number_ramp),
        (NEIGHBOUR, "words before the first line break of the text", before_first_break),
        (OVER_SPECIFIC, "words after the last line break of the text", after_last_break),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
    ),
    _u(
        "v-condition-ramp",
        "graded",
        (
            "the condition of an if statement, stronger for each later token before its colon",
            condition_ramp,
        ),
        (
            NEIGHBOUR,
            "the condition of an if statement, weaker for each later token",
            lambda ts: [max(0.0, HIGH + 2.0 - v) if v else 0.0 for v in condition_ramp(ts)],
        ),
        (OVER_SPECIFIC, "the word right after if", after(lambda t: word(t) == "if")),
        (WRONG_CONTEXT, "words after a colon up to the end of the line", _after_to_eol(":")),
    ),
    _u(
        "v-after-to",
        "context",
        ("the verb right after to, as in to use or to read", after(lambda t: word(t) == "to")),
        (OVER_SPECIFIC, "the word to", words("to")),
        (NEIGHBOUR, "the word right before to", R.before(lambda t: word(t) == "to")),
        (WRONG_CONTEXT, "the word right after of", after(lambda t: word(t) == "of")),
    ),
    _u(
        "v-hyphenated",
        "context",
        ("the parts of hyphenated words, as in built-in or read-only", hyphenated),
        (NEIGHBOUR, "hyphens and minus signs themselves", _symbol("-")),
        (OVER_SPECIFIC, "the word built", words("built")),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
    ),
    _u(
        "v-first-half-alphabet",
        "dense",
        (
            "words starting with a letter from a to m",
            by_token(lambda t: is_word(t) and "a" <= word(t)[0] <= "m"),
        ),
        (
            NEIGHBOUR,
            "words starting with a letter from n to z",
            by_token(lambda t: is_word(t) and "n" <= word(t)[0] <= "z"),
        ),
        (
            OVER_SPECIFIC,
            "words starting with a vowel",
            by_token(lambda t: is_word(t) and word(t)[0] in VOWELS),
        ),
        (OVER_GENERAL, "all words alike", by_token(is_word)),
    ),
    _u(
        "v-ive-words",
        "token",
        (
            "words ending in -ive, such as positive and recursive",
            by_token(lambda t: is_word(t) and word(t).endswith("ive")),
        ),
        (OVER_SPECIFIC, "the word positive", words("positive")),
        (
            NEIGHBOUR,
            "words ending in -ous or -ful",
            by_token(lambda t: is_word(t) and word(t).endswith(("ous", "ful"))),
        ),
        (
            OVER_GENERAL,
            "adjectives such as positive, empty and valid",
            words("positive", "negative", "empty", "valid", "new", "special", "recursive"),
        ),
    ),
    # ---- sparse single words ----
    _u(
        "v-word-stack",
        "sparse",
        ("the word stack", words("stack")),
        (NEIGHBOUR, "the words memory and garbage", words("memory", "garbage")),
        (WRONG_CONTEXT, "the word right after stack", after(lambda t: word(t) == "stack")),
        (
            OVER_GENERAL,
            "words about memory: stack, memory, cache and garbage",
            words("stack", "memory", "cache", "garbage"),
        ),
    ),
    _u(
        "v-word-decimal",
        "sparse",
        ("the word decimal", words("decimal")),
        (NEIGHBOUR, "the words float and complex", words("float", "complex")),
        (
            OVER_GENERAL,
            "names of numeric types such as int, float and decimal",
            words("int", "float", "complex", "decimal"),
        ),
        (WRONG_CONTEXT, "the word decimal only in code", in_code(words("decimal"))),
    ),
)


def _training_texts(windows) -> set[str]:
    """Every rule text any training recipe (v1–v5) draws with the seeds used so far."""
    texts: set[str] = set()
    for recipe in ("v1", "v2", "v3", "v4", "v5"):
        for seed in range(7):
            rules, _ = training_rules(windows, seed, recipe)
            texts |= {r.explanation for r in rules}
    return texts


def _normal(text: str) -> str:
    return re.sub(r"[^a-z]+", " ", text.lower()).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/data/heldout-val.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from transformers import AutoTokenizer

    from neuroscribe.datasets.corpus import open_corpus
    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.groundtruth.build import BuildOptions, build_unit, windows_from_texts
    from neuroscribe.groundtruth.suite import write_suite

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    all_windows = windows_from_texts(
        open_corpus("builtin").texts(), tok, window=20, max_windows=20000
    )
    trained = {_normal(t) for t in _training_texts(all_windows)}
    known = trained | {_normal(s.true.explanation) for s in R.unit_specs()}
    for spec in UNITS:
        texts = [spec.true.explanation, *(r.explanation for _, r in spec.false)]
        named = [t for t in texts if not allowed(t)]
        if named:
            raise SystemExit(f"{spec.id}: names a test-half concept: {named}")
        if _normal(spec.true.explanation) in known:
            raise SystemExit(f"{spec.id}: its true explanation is a training or suite rule")

    options = BuildOptions()
    windows = all_windows[: options.max_windows]  # the built-in suite's windows
    source = {"corpus": "builtin", "tokenizer": "hf:embedded", "rules": "bench/heldout_suite.py"}
    units = []
    for spec in UNITS:
        unit = build_unit(spec, windows, "dev", options, source)
        if unit is None:
            print(f"{spec.id}: the corpus does not support it (see the log)", file=sys.stderr)
            continue
        units.append(unit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_suite(args.out, units)
    print(f"{len(units)} of {len(UNITS)} units written to {args.out}")
    for u in units:
        print(f"  {u.category:8s} {u.id:22s} {len(u.false_explanations)} false  {u.explanation}")


if __name__ == "__main__":
    main()
