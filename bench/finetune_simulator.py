"""Study: can fine-tuning make the embedded 135M model a simulator that discriminates?

    .venv/bin/python bench/finetune_simulator.py --lora 16 --minutes 20 --out /tmp/ns-ft
    .venv/bin/neuroscribe check simulator --split dev \
        --simulator 'hf:embedded?adapter=/tmp/ns-ft/adapter.safetensors'

Prompting SmolLM2-135M leaves it at chance on the ground-truth suite (bench/README.md):
the explanation barely moves its predictions. This script trains the model on the task
itself: (explanation, excerpt) → per-token activation, with the targets computed by known
rules applied to windows of the built-in corpus, in exactly the prompt the exact
simulator builds (`--prompt`: `simulate-tuned-inline-v1` by default, recorded in the
adapter's metadata so a simulator reads it with the prompt it learnt), the loss on each
slot's value distribution (the simulator's readout).

Leakage: the ground-truth suite's *test* half must stay unseen. Training rules are the dev
half's rules (true and false) plus generated families (`--recipe`: the word X, the words
X, Y and Z, the word right after / before X, words ending in -S, words starting with L,
the character C, and the shapes and concepts of recipes v2–v4), and every rule whose
explanation names a concept of a test unit (its true or its false explanations: the
keyword list below) is dropped. A stage is chosen on the dev half; only then is the test
half read.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

# The prompt the model learns to read by default: the excerpt inline after the
# explanation, each token's value read at the token (`simulate-tuned-inline-v1`, the
# bundled adapter's since 2026-12-06). `--prompt simulate-tuned-v1` trains on compact
# rows instead (simulate-v1's instructions, no few-shot units; the earlier adapters).
PROMPT = "simulate-tuned-inline-v1"

# Concepts of the test half (true and false explanations): a training rule whose
# explanation contains one of these is dropped, so test units stay unseen concepts.
TEST_KEYWORDS = (
    "digit",
    "number",
    "arithmetic",
    "bracket",
    "parenthes",
    "punctuation",
    "'the'",
    "'a'",
    "modal",
    "negation",
    "'must'",
    "conjunction",
    "'or'",
    "comma",
    "constant",
    "none",
    "true",
    "false",
    "capital",
    "keyword",
    "full stop",
    "period",
    "sentence",
    "underscore",
    "dunder",
    "__",
    "dot",
    "-ing",
    "-ed",
    "string",
    "long word",
    "longer",
    "short word",
    "import",
    "module",
    "lowercase code",
    "file",
    "directory",
    "path",
    "content word",
    "every token",
    "every word",
    "start of the text",
    "last token",
    "begins a new word",
    "continue a word",
    "function name",
    "arguments",
    "print",
    "attribute",
    "method",
    "name before",
    "name right before",
    "is, can",
)
BANNED_WORDS = {
    "the", "a", "an", "or", "and", "but", "must", "can", "may", "should", "will", "not",
    "none", "true", "false", "file", "import", "from", "string", "print", "len", "def",
    "return", "class", "is", "are", "be", "to", "of",
}  # fmt: skip


def allowed(text: str) -> bool:
    low = text.lower()
    return not any(k in low for k in TEST_KEYWORDS)


def training_rules(
    windows: list[list[str]], seed: int, recipe: str = "v2"
) -> tuple[list, list[list[str]]]:
    """The training rules, and groups of related rules (explanation texts) to contrast
    on the same windows: a dev unit's true and false rules, the word X against the word
    right after / before X and the words X, Y and Z."""
    from neuroscribe.groundtruth import rules as R
    from neuroscribe.groundtruth.build import assign_splits

    rng = random.Random(seed)
    splits = assign_splits(R.unit_specs())
    out: dict[str, R.Rule] = {}
    groups: list[list[str]] = []
    for spec in R.unit_specs():
        if splits[spec.id] != "dev":
            continue
        kept = [r for r in (spec.true, *(r for _, r in spec.false)) if allowed(r.explanation)]
        for rule in kept:
            out[rule.explanation] = rule
        if len(kept) > 1:
            groups.append([r.explanation for r in kept])
    n_dev_groups = len(groups)

    counts = Counter(R.word(t) for w in windows for t in w if R.is_word(t))
    frequent = [
        w for w, c in counts.most_common(600) if c >= 8 and len(w) > 1 and w not in BANNED_WORDS
    ]
    for w in frequent[:160]:
        out[f"the word {w}"] = R.Rule(f"the word {w}", R.words(w))
    for _ in range(80):
        ws = rng.sample(frequent[:300], 3)
        text = f"the words {ws[0]}, {ws[1]} and {ws[2]}"
        out[text] = R.Rule(text, R.words(*ws))
        if f"the word {ws[0]}" in out:
            groups.append([text, f"the word {ws[0]}"])
    for w in frequent[:60]:

        def is_w(t: str, w: str = w) -> bool:
            return R.word(t) == w

        out[f"the word right after '{w}'"] = R.Rule(f"the word right after '{w}'", R.after(is_w))
        out[f"the word right before '{w}'"] = R.Rule(f"the word right before '{w}'", R.before(is_w))
        groups.append(
            [f"the word right after '{w}'", f"the word right before '{w}'", f"the word {w}"]
        )
    for suffix in ("s", "ly", "tion", "er", "al", "es", "ment", "ion", "le", "ty"):
        text = f"words ending in -{suffix}"
        out[text] = R.Rule(
            text, R.by_token(lambda t, s=suffix: R.is_word(t) and R.word(t).endswith(s))
        )
    for letter in "bcdfghlmprstw":
        text = f"words starting with the letter {letter}"
        out[text] = R.Rule(
            text, R.by_token(lambda t, c=letter: R.is_word(t) and R.word(t).startswith(c))
        )
    names = {":": "colons", ";": "semicolons", "=": "equals signs", '"': "double quote marks",
             "'": "single quote marks", "#": "hash signs", "/": "slashes", "\n": "line breaks",
             ">": "greater-than signs", "@": "at signs"}  # fmt: skip
    for ch, name in names.items():
        out[name] = R.Rule(name, R.by_token(lambda t, c=ch: c in t and not R.is_word(t)))
    if recipe in ("v2", "v3", "v4", "v5"):
        _more_families(out, groups, frequent, windows)
    if recipe in ("v3", "v4", "v5"):
        _graded_families(out, groups, frequent)
    if recipe in ("v4", "v5"):
        _concept_families(out, groups, counts)
    if recipe == "v5":
        _delimited_families(out, groups)
        _member_contrasts(out, groups, windows)
        # The dev units' own groups twice: every later stage so far lost dev units
        # (list position, nesting depth) to the new rules.
        groups.extend(groups[:n_dev_groups])
    rules = {text: r for text, r in out.items() if allowed(text)}
    groups = [[t for t in g if t in rules] for g in groups]
    return list(rules.values()), [g for g in groups if len(g) > 1]


HIGH = 10.0  # the rules module's top activation

# Characters the v2 families put words next to (none names a test concept).
CHAR_NAMES = {":": ("a colon", "colons"), ";": ("a semicolon", "semicolons"),
              "=": ("an equals sign", "equals signs"), "#": ("a hash sign", "hash signs"),
              "/": ("a slash", "slashes"), "\n": ("a line break", "line breaks"),
              '"': ("a double quote mark", "double quote marks"),
              "'": ("a single quote mark", "single quote marks"),
              ">": ("a greater-than sign", "greater-than signs")}  # fmt: skip


def _more_families(out: dict, groups: list[list[str]], frequent: list[str], windows) -> None:
    """Recipe v2: rule *shapes* the test half uses, on concepts it does not — a word right
    after / before a character, the first / last word of a line, a word only in code or
    only in prose, words containing a letter, text after a character to the end of its
    line — each contrasted with its neighbours on the same windows."""
    from neuroscribe.groundtruth import rules as R

    def add(text: str, fn) -> None:
        out[text] = R.Rule(text, fn)

    for ch, (one, many) in CHAR_NAMES.items():

        def is_ch(t: str, c: str = ch) -> bool:
            return c in t and not R.is_word(t)

        add(f"the word right after {one}", R.after(is_ch))
        add(f"the word right before {one}", R.before(is_ch))
        add(many, R.by_token(is_ch))
        groups.append([f"the word right after {one}", f"the word right before {one}", many])
        if ch != "\n":
            add(f"text after {one} up to the end of its line", _after_to_eol(ch))
            groups.append([f"text after {one} up to the end of its line", many])

    add("the first word of each line", _line_edge(first=True))
    add("the last word of each line", _line_edge(first=False))
    groups.append(["the first word of each line", "the last word of each line", "line breaks"])

    code = Counter()
    prose = Counter()
    for w in windows:
        flags = R.code_lines(w)
        for t, c in zip(w, flags, strict=True):
            if R.is_word(t):
                (code if c else prose)[R.word(t)] += 1
    both = [w for w in frequent if code[w] >= 4 and prose[w] >= 4][:40]
    for w in both:
        add(f"the word {w} only in code", R.in_code(R.words(w)))
        add(f"the word {w} only in prose, not in code", R.in_prose(R.words(w)))
        groups.append(
            [f"the word {w} only in code", f"the word {w} only in prose, not in code",
             f"the word {w}"]
        )  # fmt: skip
    for letter in "xzkvyjq":
        add(
            f"words containing the letter {letter}",
            R.by_token(lambda t, c=letter: R.is_word(t) and c in R.word(t)),
        )
    add(
        "words with a double letter, such as ll, ss or ee",
        R.by_token(lambda t: R.is_word(t) and re.search(r"(.)\1", R.word(t)) is not None),
    )


def _graded_families(out: dict, groups: list[list[str]], frequent: list[str]) -> None:
    """Recipe v3: graded shapes on concepts the test half does not use — a word stronger
    each time it comes again, and the words after a character stronger for each later one
    on the line — each contrasted with its flat version."""
    from neuroscribe.groundtruth import rules as R

    for w in frequent[:30]:
        text = f"the word {w}, stronger each time it comes again"
        out[text] = R.Rule(text, _stronger_on_repeat(w))
        groups.append([text, f"the word {w}"])
    for ch, (one, _many) in CHAR_NAMES.items():
        if ch == "\n":
            continue
        text = f"the words after {one}, stronger for each later word on its line"
        out[text] = R.Rule(text, _rising_after(ch))
        groups.append([text, f"text after {one} up to the end of its line"])


# Recipe v4: word concepts of the corpus (Python's documentation) that no test unit names,
# as (concept, its words; the first three are the ones the explanation cites).
CONCEPTS = (
    ("quantifiers", ("all", "some", "any", "each", "both", "most", "multiple", "many")),
    ("words about order in time", ("before", "after", "then", "until", "during", "once", "since")),
    ("question words", ("what", "which", "where", "when", "how", "whether", "whose", "why")),
    ("built-in type names", ("int", "dict", "tuple", "float", "bytes", "bool", "set", "str")),
    ("verbs that change a collection", ("add", "remove", "insert", "append", "pop", "delete",
                                        "update", "clear", "extend")),
    ("words about scope", ("global", "local", "namespace", "scope", "nonlocal", "binding")),
    ("comparison words", ("equal", "less", "same", "different", "equivalent", "similar",
                          "equality", "compare", "comparison")),
    ("words for collections", ("sequence", "mapping", "container", "sequences", "elements",
                               "items", "collections")),
    ("words about running code", ("execute", "executed", "execution", "evaluate", "evaluated",
                                  "evaluation", "interpreter", "runtime", "run")),
    ("words about iterating", ("iterator", "iteration", "loop", "yield", "generator", "iter")),
    ("adjectives such as empty and new", ("empty", "new", "special", "simple", "valid", "common",
                                          "normal", "custom", "arbitrary", "single")),
    ("words about text characters", ("character", "characters", "unicode", "ascii", "text",
                                     "char", "encoding")),
    ("words about documentation", ("note", "see", "example", "details", "described",
                                   "documentation", "examples", "notes")),
    ("verbs ending a process, such as stop, exit and break", ("stop", "exit", "break", "end",
                                                              "finally", "close", "abort")),
)  # fmt: skip


def _concept_families(out: dict, groups: list[list[str]], counts: Counter) -> None:
    """Recipe v4: word concepts, each with the hard false explanations the suite uses on
    its own units — over-specific (one of its words), right words in the wrong context
    (only in code), a neighbouring concept — contrasted on the same windows, and the
    concept in two phrasings (cited examples or not), so the wording of an explanation
    matters less than what it names."""
    from neuroscribe.groundtruth import rules as R

    names = []
    for concept, ws in CONCEPTS:
        present = [w for w in ws if counts[w] >= 3]
        if len(present) < 3:
            continue
        cited = f"{concept}, such as {present[0]}, {present[1]} and {present[2]}"
        if "such as" in concept:
            cited = concept
        plain = f"{concept} ({', '.join(present)})"
        out[cited] = R.Rule(cited, R.words(*present))
        out[plain] = R.Rule(plain, R.words(*present))
        one = f"the word {present[0]}"
        out.setdefault(one, R.Rule(one, R.words(present[0])))
        code = f"{cited}, only in code"
        out[code] = R.Rule(code, R.in_code(R.words(*present)))
        prose = f"{concept} in prose, not in code"
        out[prose] = R.Rule(prose, R.in_prose(R.words(*present)))
        names.append(cited)
        groups.append([cited, one, code, prose])
    for a, b in zip(names, names[1:] + names[:1], strict=True):
        groups.append([a, b])


# Recipe v5: delimiters of the corpus other than the test half's (brackets, parentheses),
# as (the text between them, the marks, opening, closing, the word before the opening one).
DELIMITERS = (
    ("text inside curly braces { }", "curly braces { and }", "{", "}",
     "the word right before an opening curly brace"),
    ("text inside double quotes", "double quote marks", '"', '"', None),
)  # fmt: skip
# As measured: in v5 the double quotes' rule is `_between`'s token-level toggle, which
# replaces the suite's character-level `inside_double_quotes` for this text in training.
# (Asterisks and vertical bars were tried: in reST they also underline headings and draw
# tables, so "the text between them" labels noise.)


def _between(open_: str, close: str):
    """Content tokens inside a pair of marks (a mark that both opens and closes toggles)."""
    from neuroscribe.groundtruth import rules as R

    if open_ != close:
        return R.depth_rule(open_, close)

    def fn(tokens):
        out, inside = [], False
        for t in tokens:
            marks = t.count(open_)
            content = bool(t.strip()) and not marks
            out.append(R.HIGH if inside and content else 0.0)
            if marks % 2:
                inside = not inside
        return out

    return fn


def _delimited_families(out: dict, groups: list[list[str]]) -> None:
    """Recipe v5: text between marks, against the marks themselves, the word right before
    the opening mark, and the text between the other marks (the same windows), so the
    kind of mark an explanation names decides the prediction."""
    from neuroscribe.groundtruth import rules as R

    inside_all = []
    for inside, marks, open_, close, before in DELIMITERS:
        out[inside] = R.Rule(inside, _between(open_, close))
        is_mark = R.by_token(lambda t, a=open_, b=close: a in t or b in t)
        out.setdefault(marks, R.Rule(marks, is_mark))
        group = [inside, marks]
        if before is not None:
            out[before] = R.Rule(before, R.before(lambda t, a=open_: a in t))
            group.append(before)
        groups.append(group)
        inside_all.append(inside)
    groups.append(inside_all)


def _member_contrasts(out: dict, groups: list[list[str]], windows) -> None:
    """Recipe v5: every class or context rule against its own two most frequent words
    (over-specific, as the suite's false explanations are), contrasted on the same
    windows: a general explanation must beat a list of its commonest members."""
    from neuroscribe.groundtruth import rules as R

    for text, rule in list(out.items()):
        if text.startswith(("the word ", "the words ")) and "right" not in text:
            continue
        if not allowed(text):
            continue
        freq = Counter()
        for w in windows[::3]:
            for t, a in zip(w, rule(w), strict=True):
                # Whole words only: a piece such as "ary" is not a word to cite.
                if a > 0 and t.startswith(" ") and R.is_word(t) and len(R.word(t)) > 1:
                    freq[R.word(t)] += 1
        top = [w for w, _ in freq.most_common(2) if w not in BANNED_WORDS]
        if len(top) < 2 or sum(freq.values()) < 20:
            continue
        member = f"the words {top[0]} and {top[1]}"
        out.setdefault(member, R.Rule(member, R.words(*top)))
        groups.append([text, member])


def _stronger_on_repeat(w: str):
    from neuroscribe.groundtruth import rules as R

    def fn(tokens):
        out, seen = [], 0
        for t in tokens:
            if R.is_word(t) and R.word(t) == w:
                seen += 1
                out.append(min(HIGH, HIGH * seen / 3))
            else:
                out.append(0.0)
        return out

    return fn


def _rising_after(ch: str):
    """The k-th word after `ch` on its line gets 2k (up to 10)."""
    from neuroscribe.groundtruth import rules as R

    def fn(tokens):
        out, k = [], 0
        for t in tokens:
            if "\n" in t:
                k = 0
            if k and R.is_word(t):
                out.append(min(HIGH, 2.0 * k))
                k += 1
            else:
                out.append(0.0)
            if ch in t:
                k = 1
        return out

    return fn


def _after_to_eol(ch: str):
    """Every non-blank token after `ch` until the end of that line."""

    def fn(tokens):
        out, on = [], False
        for t in tokens:
            if "\n" in t:
                on = False
            out.append(HIGH if on and t.strip() and ch not in t else 0.0)
            if ch in t and ch != "\n":
                on = True
        return out

    return fn


def _line_edge(first: bool):
    """The first (or last) word-like token of each complete line in the window."""
    from neuroscribe.groundtruth import rules as R

    def fn(tokens):
        out = [0.0] * len(tokens)
        lines = R._lines(tokens)
        idx: dict[int, list[int]] = {}
        for i, t in enumerate(tokens):
            if R.is_word(t):
                idx.setdefault(lines[i], []).append(i)
        last_line = lines[-1] if lines else 0
        for line, ids in idx.items():
            # A window cuts its first and last lines: only whole edges count.
            if first and line > 0:
                out[ids[0]] = R.HIGH
            if not first and line < last_line:
                out[ids[-1]] = R.HIGH
        return out

    return fn


def examples_for(
    rules: list, groups: list[list[str]], windows: list[list[str]], per_rule: int, seed: int
) -> list:
    """(explanation, tokens, activations) triples: half where the rule fires, half random,
    and for every group, each rule's firing windows labelled by every other rule of the
    group too (the same text, different explanations, different targets)."""
    rng = random.Random(seed)
    out = []
    by_text = {r.explanation: r for r in rules}
    for group in groups:
        for anchor in group:
            acts = [(i, by_text[anchor](w)) for i, w in enumerate(windows)]
            firing = [i for i, a in acts if max(a) > 0]
            for i in rng.sample(firing, min(2, len(firing))):
                for other in group:
                    if other != anchor:
                        out.append((other, windows[i], by_text[other](windows[i])))
    for rule in rules:
        acts = [(i, rule(w)) for i, w in enumerate(windows)]
        firing = [(i, a) for i, a in acts if max(a) > 0]
        if len(firing) < 3:
            continue
        rng.shuffle(firing)
        chosen = firing[: per_rule // 2]
        chosen += [acts[i] for i in rng.sample(range(len(windows)), per_rule - len(chosen))]
        for i, a in chosen:
            out.append((rule.explanation, windows[i], a))
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ns-ft"))
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--per-rule", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--recipe",
        choices=("v1", "v2", "v3", "v4", "v5"),
        default="v2",
        help="training rules: v1 (the first bundled adapter's), v2 (more rule shapes), v3 (v2 "
        "and graded shapes; the bundled adapter's last stage) or v4 (v3 and word concepts "
        "with their hard false explanations) or v5 (v4, text between other delimiters, and every "
        "class or context rule against its two most frequent words)",
    )
    ap.add_argument(
        "--prompt",
        choices=("simulate-tuned-inline-v1", "simulate-tuned-v1"),
        default=PROMPT,
        help="the simulation prompt the model learns to read (recorded in the adapter)",
    )
    ap.add_argument(
        "--lora", type=int, default=0, help="train a rank-R adapter instead of every weight"
    )
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from this adapter file (with --lora of its rank), e.g. on new windows",
    )
    ap.add_argument(
        "--checkpoint-minutes",
        type=int,
        default=0,
        help="also save the adapter every N minutes (OUT/ckpt-MM.safetensors), so a stage can "
        "be stopped early: chosen on the dev half's held-out units, not on its last step",
    )
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuroscribe.datasets.corpus import open_corpus
    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.groundtruth.build import windows_from_texts
    from neuroscribe.simulator.exact import build_simulation_ids

    torch.manual_seed(args.seed)
    path = str(embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    adapters = None
    if args.lora:
        from neuroscribe.llm import lora

        adapters = lora.attach(model, rank=args.lora, alpha=2.0 * args.lora)
        if args.init is not None:
            from safetensors.torch import load_file

            saved = load_file(str(args.init))
            with torch.no_grad():
                for name, a in adapters.items():
                    a.A.copy_(saved[f"{name}.lora_A"].float())
                    a.B.copy_(saved[f"{name}.lora_B"].float())
        trainable = lora.parameters(adapters)
    else:
        trainable = list(model.parameters())
    # The built-in corpus holds ~5,600 windows, all of which the suite may draw its
    # excerpts from: the text is shared, the rules (the labels) are not.
    windows = windows_from_texts(open_corpus("builtin").texts(), tok, window=20, max_windows=20000)
    rules, groups = training_rules(windows, args.seed, args.recipe)
    data = examples_for(rules, groups, windows, args.per_rule, args.seed)
    print(f"{len(rules)} training rules, {len(data)} examples, {len(windows)} windows", flush=True)

    def encode(expl: str, tokens: list[str], acts: list[float]):
        sim = build_simulation_ids(tok, expl, [tokens], n_examples=0, prompt_version=args.prompt)
        ids = sim.prefix + sim.excerpts[0].ids
        slots = [len(sim.prefix) + s for s in sim.excerpts[0].slots]
        top = sim.scale_max
        targets = [min(top, max(0, round(a / 10 * top))) for a in acts]
        return ids, slots, targets, sim.value_ids

    value_ids = encode("x", ["a"], [0.0])[3]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    step, seen, losses = 0, 0, []
    next_ckpt = args.checkpoint_minutes * 60 if args.checkpoint_minutes > 0 else float("inf")
    meta = {"rank": str(args.lora), "prompt": args.prompt, "base": "SmolLM2-135M"}
    while time.perf_counter() - start < args.minutes * 60 and seen < len(data):
        batch = [encode(*ex) for ex in data[seen : seen + args.batch]]
        seen += len(batch)
        width = max(len(b[0]) for b in batch)
        ids = torch.full((len(batch), width), tok.eos_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, b in enumerate(batch):
            ids[k, : len(b[0])] = torch.tensor(b[0])
            mask[k, : len(b[0])] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        head_w = model.get_output_embeddings().weight[value_ids]
        rows = torch.cat([hidden[k, b[1]] for k, b in enumerate(batch)]).float()
        target = torch.tensor([t for b in batch for t in b[2]])
        logits = rows @ head_w.T
        # Positive rows are rare; weight them so "always 0" is not the easy optimum.
        weight = torch.where(target > 0, 4.0, 1.0)
        loss = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * weight).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 20 == 0:
            recent = sum(losses[-20:]) / 20
            el = time.perf_counter() - start
            print(f"step {step} examples {seen} loss {recent:.3f} {el:.0f} s", flush=True)
        if adapters is not None and time.perf_counter() - start >= next_ckpt:
            mark = next_ckpt // 60
            lora.save(adapters, args.out / f"ckpt-{mark:02d}.safetensors",
                      {**meta, "examples": str(seen)})  # fmt: skip
            print(f"checkpoint {mark} min: {seen} examples", flush=True)
            next_ckpt += args.checkpoint_minutes * 60
    model.eval()
    out = args.out / "model"
    out.mkdir(parents=True, exist_ok=True)
    if adapters is not None:
        lora.save(adapters, args.out / "adapter.safetensors", meta)
        # A merged copy too, so the check can load it as a plain hf:<folder> model.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        lora.merge(model, args.out / "adapter.safetensors")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (args.out / "train.json").write_text(
        json.dumps({"steps": step, "examples": seen, "rules": len(rules), "lr": args.lr, "prompt": args.prompt,
                    "minutes": (time.perf_counter() - start) / 60, "loss_last": losses[-20:]})
    )  # fmt: skip
    print(f"saved {out} after {step} steps, {seen} examples", flush=True)


if __name__ == "__main__":
    main()
