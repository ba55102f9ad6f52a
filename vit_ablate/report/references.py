"""Canonical config values, and the paper's reference values and the declared baseline from a sweep
file's header comments (W&B rejects unknown top-level keys, so they live in lines both the W&B agent and
YAML ignore)::

    # reference: model.pos_embed=none value=0.61382 metric=imagenet_5shot source="paper Table 8"
    # baseline: model.pos_embed=1d

Every ``key=value`` of a reference line but ``value``, ``metric``, ``source`` and ``note`` selects runs:
a group matches when its runs share every one of them.

The same setting reaches a report in several spellings (``0.0008`` in a resolved config.yaml, ``8e-4``
in a sweep file, ``True`` from the W&B agent): grouping and matching compare :func:`canon` strings.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any, Dict, List, Mapping, Optional, Tuple

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


_RESERVED = ("value", "metric", "source", "note")  # describe the number rather than select runs
_REFERENCE_RE = re.compile(r"^\s*#\s*reference\s*:(?P<body>.*)$", re.IGNORECASE)
_BASELINE_RE = re.compile(r"^\s*#\s*baseline\s*:(?P<body>.*)$", re.IGNORECASE)


def header_tokens(text: str, where: str = "") -> List[str]:
    """A header line's words, split on spaces and commas outside quotes (shell quoting), so a
    source="Table 1 (ViT-S/16, GAP)" keeps its own comma; an unbalanced quote is a ValueError."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace += ","
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        return list(lexer)
    except ValueError as exc:
        raise ValueError(f"{where}cannot parse {text.strip()!r}: {exc}") from None


def parse_assignments(text: str, where: str = "") -> Dict[str, str]:
    """``'a.b=1 c="x y"'`` (or comma-separated) → ``{"a.b": "1", "c": "x y"}``."""
    out: Dict[str, str] = {}
    for token in header_tokens(text, where):
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}{token!r} is not of the form key=value (in {text.strip()!r})")
        out[key.strip()] = value.strip()
    return out


def parse_reference_comments(text: str) -> List[Dict[str, Any]]:
    """Every ``# reference:`` line → ``{"params", "value" (a float), "metric", "source"[, "note"]}``.
    A line without a numeric value or without params is an error naming it: a silently dropped
    reference would make a report claim "no paper value"."""
    references = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _REFERENCE_RE.match(line)
        if not match:
            continue
        where = f"line {lineno}: reference: "
        fields = parse_assignments(match["body"], where)
        if "value" not in fields:
            raise ValueError(f"{where}no value=NUMBER in {line.strip()!r}")
        try:
            value = float(fields["value"])
        except ValueError:
            raise ValueError(f"{where}value={fields['value']!r} is not a number") from None
        params = {k: v for k, v in fields.items() if k not in _RESERVED}
        if not params:
            raise ValueError(f"{where}names no run parameter (e.g. model.pos_embed=none) in {line.strip()!r}")
        references.append({"params": params, "value": value, "metric": fields.get("metric"),
                           "source": fields.get("source"), **({"note": fields["note"]} if "note" in fields else {})})
    return references


def parse_baseline_comment(text: str) -> Optional[Dict[str, str]]:
    """The first ``# baseline: key=value ...`` line of a sweep file, or ``None``."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _BASELINE_RE.match(line)
        if match:
            return parse_assignments(match["body"], f"line {lineno}: baseline: ")
    return None


def match_reference(references: List[Mapping[str, Any]], common: Mapping[str, str]) -> Optional[Mapping[str, Any]]:
    """The reference whose params all hold in ``common`` (the canonical params every run of a group
    shares, fixed keys included); the most specific wins."""
    hits = [r for r in references if r.get("params") and all(common.get(k) == canon(v) for k, v in r["params"].items())]
    return max(hits, key=lambda r: len(r["params"]), default=None)
