"""Paper reference values and the declared baseline, read from a sweep file's header comments.

W&B rejects unknown top-level keys in a sweep file, so the numbers a sweep is compared against live in
comment lines that both the W&B agent and YAML ignore::

    # reference: model.pos_embed=none value=0.61382 metric=imagenet_5shot source="paper Table 8"
    # baseline: model.pos_embed=1d

Every ``key=value`` token of a reference line other than the reserved ``value``, ``metric``, ``source``
and ``note`` is a run parameter; a group of runs matches the reference when its configuration holds
every one of them. The sweep engine calls :func:`parse_reference_comments` to fill the manifest's
``reference`` list; the report calls it itself when a manifest lacks that list but names its file.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Dict, List, Mapping, Optional

from vit_ablate.report.values import canon

__all__ = ["parse_reference_comments", "parse_baseline_comment", "match_reference", "parse_assignments"]

# Keys of a reference line that describe the number rather than select runs.
_RESERVED = ("value", "metric", "source", "note")

# "# reference: ..." with any spacing or case; "#reference:" as well.
_REFERENCE_RE = re.compile(r"^\s*#\s*reference\s*:(?P<body>.*)$", re.IGNORECASE)
_BASELINE_RE = re.compile(r"^\s*#\s*baseline\s*:(?P<body>.*)$", re.IGNORECASE)


def header_tokens(text: str, where: str = "") -> List[str]:
    """A sweep-file header line's words, split on spaces and commas outside quotes (shell quoting), so
    a source="Table 1 (ViT-S/16, GAP)" keeps its own comma; an unbalanced quote is a ValueError."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace += ","
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:
        raise ValueError(f"{where}cannot parse {text.strip()!r}: {exc}") from None


def parse_assignments(text: str, where: str = "") -> Dict[str, str]:
    """``'a.b=1 c="x y"'`` (or comma-separated) → ``{"a.b": "1", "c": "x y"}``; quotes as in a shell."""
    tokens = header_tokens(text, where)
    out: Dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}{token!r} is not of the form key=value (in {text.strip()!r})")
        out[key.strip()] = value.strip()
    return out


def parse_reference_comments(text: str) -> List[Dict[str, Any]]:
    """Every ``# reference:`` line of a sweep file → ``[{"params", "value", "metric", "source"}]``.

    ``value`` becomes a float; ``metric`` and ``source`` are ``None`` when absent; the remaining tokens
    are the params, kept as the strings written (the report compares them canonically, so ``8e-4``
    matches a config's ``0.0008``). A reference line without a numeric value, or with no params, is an
    error naming its line: a silently dropped reference would make a report claim "no paper value".
    """
    references = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _REFERENCE_RE.match(line)
        if not match:
            continue
        where = f"line {lineno}: reference: "
        fields = parse_assignments(match.group("body"), where)
        if "value" not in fields:
            raise ValueError(f"{where}no value=NUMBER in {line.strip()!r}")
        try:
            value = float(fields["value"])
        except ValueError:
            raise ValueError(f"{where}value={fields['value']!r} is not a number") from None
        params = {k: v for k, v in fields.items() if k not in _RESERVED}
        if not params:
            raise ValueError(f"{where}names no run parameter (e.g. model.pos_embed=none) in {line.strip()!r}")
        entry: Dict[str, Any] = {
            "params": params,
            "value": value,
            "metric": fields.get("metric"),
            "source": fields.get("source"),
        }
        if "note" in fields:
            entry["note"] = fields["note"]
        references.append(entry)
    return references


def parse_baseline_comment(text: str) -> Optional[Dict[str, str]]:
    """The first ``# baseline: key=value ...`` line of a sweep file, or ``None``."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _BASELINE_RE.match(line)
        if match:
            return parse_assignments(match.group("body"), f"line {lineno}: baseline: ")
    return None


def match_reference(
    references: List[Mapping[str, Any]], common_params: Mapping[str, str]
) -> Optional[Mapping[str, Any]]:
    """The reference whose params all hold in ``common_params`` (canonical strings); most specific wins.

    ``common_params`` are the parameters every run of a group shares, so a reference may name a key the
    sweep holds fixed (``model.pos_embed_at=input``) as well as the swept one.
    """
    best = None
    for ref in references:
        params = ref.get("params") or {}
        if params and all(k in common_params and common_params[k] == canon(v) for k, v in params.items()):
            if best is None or len(params) > len(best.get("params") or {}):
                best = ref
    return best
