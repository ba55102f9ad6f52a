"""Building blocks of the config schema, below both ``vit_ablate.config`` and ``vit_ablate.model`` (which
owns the ``model`` section): the error type, value ranges, registries of names, fields that carry their
meaning and valid values (what ``vit-ablate train --help`` prints), the one check of a value against its
field, and the one "did you mean" hint that every lookup of a name gives.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, TypeVar

__all__ = ["ConfigError", "did_you_mean", "Range", "Registry", "POSITIVE", "NON_NEGATIVE", "FRACTION", "SEED",
           "setting", "section", "check_value", "format_value"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot run. The CLI prints the message and exits with status 2."""


def did_you_mean(word: object, candidates: Iterable[object], prefix: str = "", cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the candidate nearest ``word`` (``prefix`` put before it), or ""
    when none is within difflib's ``cutoff`` (0: always the nearest)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def format_value(value: Any) -> str:
    """A value as it is written on the command line: null, true, [1, 2]."""
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(format_value, value)) + "]"
    return str(value)


def _not_valid(key: str, value: Any, names: List[str]) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(names)}{did_you_mean(value, names)}")


class Registry(Generic[T]):
    """The names one config key (e.g. ``model.pos_embed``) accepts, each mapped to what it builds.

    The schema field names its registry as its valid values, so a name is listed (``--help``) and checked
    from the registrations alone. ``home`` is the module whose import registers the built-in names: it is
    imported at the first lookup, so that the schema itself imports without torch.
    """

    def __init__(self, key: str, home: Optional[str] = None):
        self.key, self.home = key, home
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = obj
            with contextlib.suppress(AttributeError, TypeError):
                obj.registry_name = name  # type: ignore[attr-defined]  # lets a component report its own name
            return obj

        return add

    def names(self) -> List[str]:
        if self.home:
            importlib.import_module(self.home)
        return sorted(self._entries)

    def get(self, name: Any) -> T:
        if not isinstance(name, str) or name not in self.names():
            raise _not_valid(self.key, name, self.names())
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names()


@dataclass(frozen=True)
class Range:
    """The interval a numeric key (or each element of a list key) must lie in; never inf or nan."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    multiple_of: Optional[int] = None

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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

    def nearest(self, value: Any) -> Any:
        """The valid value nearest ``value`` where a closed finite bound is nearest, else None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not self.low_open and value < self.low:
            nearest = self.low
        elif not self.high_open and value > self.high and math.isfinite(self.high):
            nearest = self.high
        else:
            return None
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
    """A schema field with its one-line meaning and its valid values: a ``Range``, a tuple of values, a
    ``Registry``, or text for names that another library owns (checked by the caller)."""
    metadata = {"help": help, "valid": valid}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: str):
    return field(default_factory=cls, metadata={"help": help, "valid": None})


def check_value(key: str, f: Any, value: Any) -> None:
    """``value`` of the dataclass field ``f`` (dotted ``key``) against the field's valid values; every
    number must be finite. Raises ConfigError naming the key, the value and a valid one."""
    valid = f.metadata.get("valid")
    if value is None:
        return
    if isinstance(valid, Registry):
        valid.get(value)
        return
    if isinstance(valid, tuple):
        if format_value(value) not in map(format_value, valid):
            raise _not_valid(key, value, [format_value(v) for v in valid])
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    finite = all(math.isfinite(item) for item in items if isinstance(item, float))
    if finite and (not isinstance(valid, Range) or all(item in valid for item in items)):
        return
    nearest = valid.nearest(next(item for item in items if item not in valid)) if finite else None
    if nearest is None and isinstance(f.default, (int, float)) and (not isinstance(valid, Range) or f.default in valid):
        nearest = f.default
    hint = f"; e.g. {key}={format_value(nearest)}" if nearest is not None and not isinstance(value, list) else ""
    what = "each element" if isinstance(value, (list, tuple)) else "it"
    must = valid.describe() if isinstance(valid, Range) else "a finite number"
    raise ConfigError(f"{key}={format_value(value)} is {'out of range' if finite else 'not a finite number'}: {what} must be {must}{hint}")
