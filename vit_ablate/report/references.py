"""A sweep file's header comments (lines W&B and YAML ignore) and canonical values::

    # reference: model.pos_embed=none value=0.61382 metric=imagenet_5shot source="paper Table 8"
    # baseline: model.pos_embed=1d

A setting is spelt ``0.0008`` (config.yaml), ``8e-4`` (sweep file) or ``True`` (W&B agent): grouping and
matching compare :func:`canon` strings.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any, Dict, List, Mapping, Optional, Tuple

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_RESERVED = ("value", "metric", "source", "note")  # describe the number rather than select runs


def _number(x: float) -> str:
    # 1.0 and 1 are one setting (dropout 0 vs 0.0); else the shortest round-tripping form: 0.0008, 3e-05, nan
    return str(int(x)) if math.isfinite(x) and x.is_integer() and abs(x) < 1e15 else repr(x)


def canon(value: Any) -> str:
    """A canonical string for a config value: numbers by value, booleans and null in YAML spelling."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):  # a large integer in exact digits: float() of 400 digits overflows
        return str(value) if isinstance(value, int) and abs(value) >= 10**15 else _number(float(value))
    if isinstance(value, str):
        text = value.strip()
        # The W&B agent passes Python's spellings; only these exact forms, as "none" is a value (pos_embed=none).
        return _number(float(text)) if _NUMBER_RE.match(text) else {"True": "true", "False": "false", "None": "null"}.get(text, text)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(canon(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps({str(k): canon(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def sort_key(text: str) -> Tuple[int, float, str]:
    """Numbers in numeric order before words in alphabetical order (so 3e-4 sorts before 8e-4)."""
    return (0, float(text), text) if _NUMBER_RE.match(text) else (1, 0.0, text)


def header_lines(text: str, *roles: str) -> List[Tuple[int, str, str]]:
    """The ``# ROLE: body`` lines of a sweep file as (line number, role in lower case, body)."""
    pattern = re.compile(rf"^\s*#\s*({'|'.join(roles)})\s*:(.*)$", re.IGNORECASE)
    matches = ((n, pattern.match(line)) for n, line in enumerate(text.splitlines(), start=1))
    return [(n, m[1].lower(), m[2]) for n, m in matches if m]


def header_tokens(text: str, where: str = "") -> List[str]:
    """A header line's words, split on spaces and commas outside shell quotes (so a quoted source keeps its commas)."""
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


def number(fields: Mapping[str, str], key: str, where: str, kind: type = float) -> Optional[float]:
    """``fields[key]`` as a number, None when absent; a ValueError naming the line when it is none."""
    try:
        return kind(fields[key]) if key in fields else None
    except ValueError:
        raise ValueError(f"{where}{key}={fields[key]!r} is not a{'n integer' if kind is int else ' number'}") from None


def parse_reference_comments(text: str) -> List[Dict[str, Any]]:
    """Every ``# reference:`` line → ``{"params", "value", "metric", "source"[, "note"]}``; each needs a value and params."""
    references = []
    for lineno, _, body in header_lines(text, "reference"):
        where = f"line {lineno}: reference: "
        fields = parse_assignments(body, where)
        params = {k: v for k, v in fields.items() if k not in _RESERVED}
        if "value" not in fields or not params:
            raise ValueError(f"{where}{'no value=NUMBER' if 'value' not in fields else 'names no run parameter'} "
                             f"(e.g. model.pos_embed=none value=0.61) in {body.strip()!r}")
        references.append({"params": params, "value": number(fields, "value", where), "metric": fields.get("metric"),
                           "source": fields.get("source"), **({"note": fields["note"]} if "note" in fields else {})})
    return references


def parse_baseline_comment(text: str) -> Optional[Dict[str, str]]:
    """The first ``# baseline: key=value ...`` line of a sweep file, or ``None``."""
    lines = header_lines(text, "baseline")
    return parse_assignments(lines[0][2], f"line {lines[0][0]}: baseline: ") if lines else None


def match_reference(references: List[Mapping[str, Any]], common: Mapping[str, str]) -> Optional[Mapping[str, Any]]:
    """The most specific reference whose params all hold in ``common`` (the params every run of a group shares)."""
    hits = [r for r in references if r.get("params") and all(common.get(k) == canon(v) for k, v in r["params"].items())]
    return max(hits, key=lambda r: len(r["params"]), default=None)
