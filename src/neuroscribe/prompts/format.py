"""How tokens and values are written into prompts."""

from __future__ import annotations

_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})


def format_token(token: str) -> str:
    """Write a subject-model token on one prompt row.

    Newlines and tabs would break the token<TAB>value row format, so they are spelled
    as escapes; an empty token gets a visible placeholder so its row is not blank.
    """
    if token == "":
        return "<empty>"
    return token.translate(_ESCAPES)


def rescale(value: int, from_max: int, to_max: int) -> int:
    """Rescale a 0..from_max example value to 0..to_max (for tokenizers without a "10")."""
    if from_max == to_max:
        return value
    return round(value * to_max / from_max)


def approx_token_count(text: str) -> int:
    """A tokenizer-free estimate (~3.5 characters a token) for context budgeting."""
    return len(text) * 2 // 7 + 1
