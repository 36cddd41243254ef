"""A scripted JSON simulator for fast tests: it fires on the word an explanation names.

An explanation "the word w3" makes it predict 9 on rows whose token is " w3" and 0 elsewhere,
so the explanation that names a unit's real word scores near 1 and any other near 0.
"""

from __future__ import annotations

import json
import re


def text_of(messages) -> str:
    return "\n".join(m["content"] for m in messages if isinstance(m["content"], str))


def word_simulator(text: str, params: dict) -> str:
    """The simulation answer for a JSON-mode request whose prompt text is `text`."""
    fmt = params["response_format"]
    schema = fmt.get("schema") or fmt["json_schema"]["schema"]
    rows = text.rsplit("<start>\n", 1)[-1].split("\n<end>")[0].split("\n")
    assert len(rows) == schema["properties"]["activations"]["minItems"]
    named = re.findall(r"the word (\w+)", text)
    hit = named[-1] if named else None
    return json.dumps({"activations": [9 if r.strip() == hit else 0 for r in rows]})
