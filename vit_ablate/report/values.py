"""Canonical forms of configuration values, so that runs from different sources group together.

The same setting reaches the report in several spellings: ``0.0008`` in a resolved ``config.yaml``,
``8e-4`` in a sweep file or a ``# reference:`` comment (PyYAML reads that one as a string), ``8e-4``
again as a JSON float in the manifest, ``True`` from the W&B agent. Grouping and matching compare the
canonical string of a value, never the raw value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Tuple

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(x: float) -> str:
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))  # 1.0 and 1 are one setting (dropout 0 vs 0.0)
    return repr(x)  # the shortest round-tripping form: 0.0008, 3e-05; nan, inf


def canon(value: Any) -> str:
    """A canonical string for a config value: numbers by value, booleans and null in YAML spelling."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10**15:
        return str(value)  # exact digits: float() of a 400-digit integer overflows
    if isinstance(value, (int, float)):
        return _number(float(value))
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER_RE.match(text):
            return _number(float(text))
        # Python's str() spellings, as the W&B agent passes them (config._wandb_literal maps the same).
        # Only the exact capitalised forms: "none" is a legitimate value (model.pos_embed=none).
        return {"True": "true", "False": "false", "None": "null"}.get(text, text)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(canon(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps({str(k): canon(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def sort_key(text: str) -> Tuple[int, float, str]:
    """Numbers in numeric order before words in alphabetical order (so 3e-4 sorts before 8e-4)."""
    return (0, float(text), text) if _NUMBER_RE.match(text) else (1, 0.0, text)
