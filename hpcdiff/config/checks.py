"""SpecError and the checks every section of a run config uses: typed coercion of TOML
values to the annotated field types, text checks, and the "did you mean" messages.

Stdlib only, like the rest of config/.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from hpcdiff.config.registry import unknown_message


class SpecError(ValueError):
    """Invalid configuration. ``str(err)`` names the source file and the key path."""

    def __init__(self, message: str, *, path: str = "", source: str | None = None):
        self.message = message
        self.path = path
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.path:
            where.append(f"key '{self.path}'")
        return ": ".join([", ".join(where), self.message]) if where else self.message

    def with_source(self, source: str) -> SpecError:
        return SpecError(self.message, path=self.path, source=source)


# Integers pass through torch, numpy and JSON as int64.
INT64_MAX = 2**63 - 1
# Any string setting (a path, a name): longer than PATH_MAX is never a real value.
MAX_STRING = 4096


def check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise SpecError(message, path=path)


def check_text(value: str, path: str, *, max_len: int = MAX_STRING) -> None:
    """Strings end up in paths, file names, TOML and log lines: no control characters (a NUL
    ends a C path, a newline splits a log or config line) and no runaway length."""
    if len(value) > max_len:
        raise SpecError(f"must be at most {max_len} characters, got {len(value)}", path=path)
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise SpecError(f"must hold printable characters only, got {bad!r} in {value[:60]!r}", path=path)


def choice_msg(value: str, choices) -> str:
    return unknown_message("value", value, choices)


def unknown_key_msg(key: str, valid) -> str:
    return unknown_message("key", key, sorted(valid), listing="valid keys")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp``; the only conversions are lossless ones
    (int -> float, list -> tuple). Anything else is an error naming the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, path)
            except SpecError as e:
                errors.append(e.message)
        raise SpecError(f"invalid value {value!r}: {'; '.join(errors)}", path=path)
    if tp is type(None):
        if value is None:
            return None
        raise SpecError(f"expected nothing, got {value!r}", path=path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"expected a list, got {value!r}", path=path)
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"expected a table, got {value!r}", path=path)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"expected true or false, got {value!r}", path=path)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:
                digits = str(value)
                shown = digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits)} digits)"
                raise SpecError(f"must fit in a 64-bit integer, got {shown}", path=path)
            return value
        raise SpecError(f"expected an integer, got {value!r}", path=path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # inf and nan pass every range check written as a comparison (nan fails them all,
            # inf passes the open-ended ones): they are turned away here, for every setting.
            if not math.isfinite(value):
                raise SpecError(f"must be a finite number, got {value}", path=path)
            return float(value)
        raise SpecError(f"expected a number, got {value!r}", path=path)
    if tp is str:
        if isinstance(value, str):
            check_text(value, path)
            return value
        raise SpecError(f"expected a string, got {value!r}", path=path)
    raise SpecError(f"unsupported type {_type_name(tp)}", path=path)
