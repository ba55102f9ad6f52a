"""Schema building blocks shared by the config sections: the error type, value ranges, and fields that
carry their one-line meaning and valid values (what ``vit-ablate train --help`` prints).

It sits below both ``vit_ablate.config`` and ``vit_ablate.model`` (which owns the ``model`` section), so
neither has to import the other's module to describe a key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ConfigError", "Range", "POSITIVE", "NON_NEGATIVE", "FRACTION", "SEED", "setting", "section"]


class ConfigError(ValueError):
    """A configuration that cannot run. The CLI prints the message and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# Per-key metadata: meaning and valid values
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """The interval a numeric key (or each element of a list key) must lie in."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    multiple_of: Optional[int] = None

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below and (self.multiple_of is None or value % self.multiple_of == 0)

    def describe(self) -> str:
        if math.isinf(self.high):
            text = "positive" if (self.low, self.low_open) == (0, True) else f"{'>' if self.low_open else '>='} {_number(self.low)}"
        else:
            text = f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"
        return text + (f" and a multiple of {self.multiple_of}" if self.multiple_of else "")

    def nearest(self, value: float, default: Any) -> Any:
        """The valid value nearest ``value`` where a closed bound is nearest, else the key's default."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return default  # not a number at all (a key typed Any): nothing is "nearest"
        if not self.low_open and value < self.low and math.isfinite(self.low):
            nearest = self.low
        elif not self.high_open and value > self.high and math.isfinite(self.high):
            nearest = self.high
        else:
            return default
        if self.multiple_of:
            nearest = math.ceil(nearest / self.multiple_of) * self.multiple_of
        return int(nearest) if float(nearest).is_integer() and isinstance(value, int) else nearest


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # probabilities, decays, betas: 1 would never forget or always drop
SEED = Range(0, 2**32 - 1)  # Lightning's seed_everything picks a random seed outside this range


def setting(default: Any = None, help: str = "", *, valid: Any = None, factory: Any = None):
    """A schema field with its one-line meaning and its valid values: a ``Range``, a tuple of names,
    or text for names that a registry owns (checked there; the text is what ``--help`` prints)."""
    metadata = {"help": help, "valid": valid}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: str):
    return field(default_factory=cls, metadata={"help": help, "valid": None})
