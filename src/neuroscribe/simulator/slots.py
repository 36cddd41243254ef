"""Find the value slots of a prompt in a backend's token stream.

The simulator's tokenizer knows nothing of the subject model's tokens: a multi-byte
character may come back as several pieces, whitespace may merge, `<|endoftext|>` may be
one special token or many. So slots are found by their text, not by counting tokens:
each slot is a token that starts with the slot text right after a tab. Subject tokens are
written with tabs escaped (`format_token`), so "<TAB>unknown" occurs exactly once per row.
"""

from __future__ import annotations

from collections.abc import Sequence

from neuroscribe.errors import OutputError
from neuroscribe.prompts import UNKNOWN


def find_echo_slots(tokens: Sequence[str], n_rows: int, slot_text: str = UNKNOWN) -> list[int]:
    """Indices of the prompt tokens that open each `unknown` value slot, in row order."""
    slots: list[int] = []
    tail = ""
    for i, tok in enumerate(tokens):
        if tail.endswith("\t") and tok and (slot_text.startswith(tok) or tok.startswith(slot_text)):
            slots.append(i)
        elif (
            tok.startswith("\t")
            and len(tok) > 1
            and (slot_text.startswith(tok[1:]) or tok[1:].startswith(slot_text))
        ):
            # The tokenizer merged the tab into the slot token: no position holds the
            # value's own distribution, so this prompt cannot be read.
            raise OutputError(
                f"the simulator's tokenizer merges the tab with the value slot at prompt "
                f"token {i} ({tok!r}); use another strategy for this model"
            )
        tail = (tail + tok)[-8:]
    if len(slots) != n_rows:
        raise OutputError(f"found {len(slots)} value slots in the echoed prompt, expected {n_rows}")
    return slots


def find_generated_values(tokens: Sequence[str]) -> list[int]:
    """Indices of generated tokens that write each row's value (`token<TAB>value` lines).

    A value token is the first token after a tab on its line that starts with a digit.
    """
    positions: list[int] = []
    line = ""
    waiting = False
    for i, tok in enumerate(tokens):
        if waiting and tok.strip():
            if tok.lstrip()[:1].isdigit():
                positions.append(i)
            waiting = False
        for ch in tok:
            if ch == "\n":
                line = ""
                waiting = False
            else:
                line += ch
                if ch == "\t":
                    waiting = True
        # A token such as "\t3" holds both the tab and the digit.
        if "\t" in tok and tok.rsplit("\t", 1)[1][:1].isdigit():
            positions.append(i)
            waiting = False
    return positions
