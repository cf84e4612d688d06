"""Click options made from config dataclass fields: each option's help, type and default are the field's.

Fields declare their flags with cachenode/flags.py (the metadata keys are described there); a
`nested` field offers its own dataclass's options in its place.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import click

from .units import parse_rate, parse_size, size_text

F = TypeVar("F", bound=Callable[..., Any])


class _Parsed(click.ParamType):
    """A click type that is a parse function raising ValueError with a message naming the bad text."""

    parse: Callable[[Any], Any]

    def convert(self, value, param, ctx):
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Size(_Parsed):
    """A click type for human sizes ("4GiB"), in bytes."""

    name = "size"
    parse = staticmethod(parse_size)


class Rate(_Parsed):
    """A click type for link rates ("10Gbit", "1GB/s"), in bytes per second."""

    name = "rate"
    parse = staticmethod(parse_rate)


def config_options(cls: type, *, after: Mapping[str, Iterable[Callable[[F], F]]] | None = None) -> Callable[[F], F]:
    """A decorator adding one click option per option field of `cls`, in field order; `after`
    slots other click decorators in right after the field it names (e.g. a flag that is not config)."""
    decorators: list[Callable[[F], F]] = []
    for f, hint in _option_fields(cls, nested=True):
        decorators.append(_option(f, hint))
        decorators.extend((after or {}).get(f.name, ()))

    def apply(fn: F) -> F:
        for decorate in reversed(decorators):  # click lists the last one applied first
            fn = decorate(fn)
        return fn

    return apply


def config_values(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """The click parameters that are `cls`'s own option fields, by field name (nested configs not included)."""
    return {f.name: params[f.name] for f, _ in _option_fields(cls, nested=False) if f.name in params}


def _option_fields(cls: type, *, nested: bool) -> Iterator[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            if nested:
                yield from _option_fields(hints[f.name], nested=True)
        elif "option" in f.metadata:
            yield f, hints[f.name]


def _option(f: dataclasses.Field, hint: Any) -> Callable[[F], F]:
    meta = f.metadata
    if hint is bool:
        return click.option(meta["option"], f.name, is_flag=True, help=_help(f))
    multiple = typing.get_origin(hint) is tuple
    kw: dict[str, Any] = {"help": _help(f), "type": _type(meta, _scalar(hint)), "multiple": multiple,
                          "metavar": meta.get("metavar"), "required": meta.get("required", False)}
    if not multiple and "env" not in meta and _has_default(f):
        kw["default"] = size_text(f.default) if meta.get("kind") == "size" else f.default
        kw["show_default"] = True
    return click.option(meta["option"], f.name, **kw)


def _scalar(hint: Any) -> type:
    """int for `int`, str for `str | None` or `tuple[str, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def _type(meta: Mapping[str, Any], scalar: type) -> Any:
    kind = meta.get("kind")
    if kind == "size":
        return Size()
    if kind == "rate":
        return Rate()
    if kind == "dir":
        return click.Path(file_okay=False)
    if kind == "file":
        return click.Path(dir_okay=False)
    if "range" in meta:
        return (click.IntRange if scalar is int else click.FloatRange)(*meta["range"])
    return scalar


def _help(f: dataclasses.Field) -> str:
    """The field's help sentence, with where a missing flag's value comes from in brackets."""
    meta, notes = f.metadata, []
    if "env" in meta:
        notes.append(f"env {meta['env']}")
    if "default_text" in meta:
        notes.append(f"default: {meta['default_text']}")
    elif "env" in meta and _has_default(f):
        notes.append(f"default: {_home_short(str(f.default))}")
    text = meta["help"]
    return f"{text.removesuffix('.')} [{'; '.join(notes)}]." if notes else text


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING and f.default is not None and f.default != ()


def _home_short(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path.startswith(home.rstrip("/") + "/") else path
