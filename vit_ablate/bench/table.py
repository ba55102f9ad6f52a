"""The benchmark's result rows and their plain-text table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional

__all__ = ["Row", "format_table"]


@dataclass
class Row:
    """One line of the table: ``ratio`` = achieved / reference (img/s ratio, MFU, ...), compared with
    ``target`` (met when ``ratio >= target``). ``low``/``high``: the spread of the paired ratios
    (quartiles of the per-step ratios, or the per-round range); a miss whose spread reaches the target
    is labelled as within noise."""

    section: str
    what: str
    img_s: Optional[float] = None
    ref_img_s: Optional[float] = None
    ratio: Optional[float] = None
    target: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    error: Optional[str] = None
    skipped: Optional[str] = None

    @property
    def met(self) -> Optional[bool]:
        if self.target is None or self.ratio is None or not math.isfinite(self.ratio):
            return None
        return self.ratio >= self.target

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.skipped:
            return "skipped"
        met = self.met
        if met is None:
            return "—" if self.target is None else "n/a"
        if met:
            return "yes"
        if self.high is not None and self.high >= self.target:
            return "MISS (within noise)"
        return "MISS"

    def as_dict(self):
        out = asdict(self)
        out["met"] = self.met
        out["verdict"] = self.verdict
        return out


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _spread(row: Row) -> str:
    if row.low is None or row.high is None or not (math.isfinite(row.low) and math.isfinite(row.high)):
        return ""
    return f"{row.low:.2f}–{row.high:.2f}"


def format_table(rows: Iterable[Row], notes: Iterable[str] = ()) -> str:
    rows = list(rows)
    header = ["section", "what", "img/s", "ref img/s", "ratio", "spread", "target", "met?"]
    lines: List[List[str]] = []
    for row in rows:
        if row.error or row.skipped:
            lines.append([row.section, row.what, "", "", "", "", _target(row), row.verdict])
            continue
        lines.append(
            [row.section, row.what, _num(row.img_s), _num(row.ref_img_s), _ratio(row.ratio), _spread(row), _target(row), row.verdict]
        )
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(len(header))]
    right = {2, 3, 4}

    def fmt(cells: List[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    extra = []
    for row in rows:
        if row.error:
            extra.append(f"ERROR in {row.section} / {row.what}: {row.error}")
        elif row.skipped:
            extra.append(f"skipped {row.section} / {row.what}: {row.skipped}")
    notes = list(notes) + extra
    if notes:
        out.append("")
        out += [f"* {note}" for note in notes]
    return "\n".join(out)


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    return f"≥ {row.target:.2f}" if row.target < 10 else f"≥ {row.target:g}"
