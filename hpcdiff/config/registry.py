"""Named registries: every degradation, schedule, sampler and metric is looked up by name.

Stdlib only, so that spec validation can name the valid choices without importing torch.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def nearest(word: str, choices) -> str | None:
    """The closest valid spelling of ``word`` among ``choices``, or None if nothing is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def unknown_name_message(kind: str, name: str, choices) -> str:
    choices = sorted(choices)
    msg = f"unknown {kind} {name!r}"
    guess = nearest(name, choices)
    if guess is not None:
        msg += f" (did you mean {guess!r}?)"
    return msg + f"; valid: {', '.join(choices)}"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, self._items)) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
