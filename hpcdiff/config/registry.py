"""Named registries: every degradation, schedule, sampler and metric is looked up by name.

Stdlib only, so that spec validation can name the valid choices without importing torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def nearest(word: str, choices) -> str | None:
    """The closest valid spelling of ``word`` among ``choices``, or None if nothing is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def unknown_message(
    what: str,
    word: str,
    choices,
    *,
    of: str = "",
    listing: str | None = "valid",
    match: str | None = None,
    prefix: str = "",
) -> str:
    """The one "did you mean" message: ``unknown <what> '<word>'[ of <of>] (did you mean
    '<guess>'?); <listing>: <choices>``.

    ``choices`` are listed in the order given ("(none)" when empty; no list when ``listing``
    is None). ``match`` is the part of ``word`` compared with the choices (default: all of
    it); ``prefix`` is put before the guess and every listed choice (``word`` 'train.lrr'
    matched as 'lrr' against the keys of section 'train.')."""
    choices = [str(c) for c in choices]
    msg = f"unknown {what} {word!r}" + (f" of {of}" if of else "")
    guess = nearest(str(word if match is None else match), choices)
    if guess is not None:
        msg += f" (did you mean {prefix + guess!r}?)"
    if listing is None:
        return msg
    return msg + f"; {listing}: {', '.join(prefix + c for c in choices) or '(none)'}"


def unknown_name_message(kind: str, name: str, choices) -> str:
    """An unknown registered name, with the valid ones sorted."""
    return unknown_message(kind, name, sorted(choices))


class UndeclaredName(ValueError):
    """A registry and hpcdiff.config.catalog disagree about the names that exist."""


class Registry(Generic[T]):
    """Objects by name. ``declared``: the names config.catalog lists for this kind; then only
    those may be registered, and ``seal()`` (called where the registering module ends) fails
    for a declared name nothing registered. None: an open registry."""

    def __init__(self, kind: str, declared=None):
        self.kind = kind
        self.declared = tuple(declared) if declared is not None else None
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if self.declared is not None and name not in self.declared:
            raise UndeclaredName(
                unknown_message(
                    f"{self.kind} name", name, self.declared, listing="declared in hpcdiff/config/catalog.py"
                )
                + f"; add {name!r} there first"
            )

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def seal(self) -> Registry[T]:
        missing = [n for n in (self.declared or ()) if n not in self._items]
        if missing:
            raise UndeclaredName(
                f"hpcdiff/config/catalog.py declares {self.kind} name(s) "
                f"{', '.join(map(repr, missing))} that nothing registers"
            )
        return self

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
