"""One tiny registry type, used by every ablation axis and by the data sources.

A config value such as ``model.pos_embed: 2d`` is looked up here and nowhere else: the rest of the
code never compares against the names, so adding a variant is one class plus one ``@register`` line.
"""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the names allowed for one config key (e.g. ``model.pos_embed``) to classes."""

    def __init__(self, key: str):
        self.key = key
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]  # lets a component report its own name
            except (AttributeError, TypeError):
                pass
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self.invalid_message(name)) from None

    def invalid_message(self, name: object) -> str:
        valid = ", ".join(self.names())
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{self.key}={name!r} is not valid; choose one of {valid}{hint}"

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self.names())})"
