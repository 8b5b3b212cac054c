"""Typer commands made from options objects (neurosql_med/options.py).

A command's arguments and options are the fields of its options dataclass: the flag's
spelling, default, help and choices come from the field, so they cannot drift from the
library. A list field (``tuple[int, ...]``) is typed as comma-separated text. Parameters
the command function declares itself (``--json``, ``--threads``) are added after the fields:
they steer this process or its printing, not the library call.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Optional

import typer

from neurosql_med.errors import UserError
from neurosql_med.options import flag_fields, flag_of, name_of

KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _list_item(hint: Any) -> type | None:
    """The item type of a ``tuple[X, ...]`` field (optional or not); None for any other field."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None


def _cli_type(hint: Any) -> Any:
    """What the shell parses for a field: comma-separated text for a list, the field's own type otherwise."""
    if _list_item(hint) is None:
        return hint
    return str if typing.get_origin(hint) is tuple else Optional[str]


def _cli_default(f: dataclasses.Field, hint: Any) -> Any:
    if f.default is dataclasses.MISSING:
        return ...
    if _list_item(hint) is not None and f.default is not None:
        return ",".join(str(v) for v in f.default)
    return f.default


def _parameter(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The typer parameter of one field: its spellings, default and help as the field declares them."""
    spec, default = flag_of(f), _cli_default(f, hint)
    if spec.argument:
        info = typer.Argument(default, help=spec.text(), show_default=default is not ...)
    else:
        names = spec.names or (name_of(f),)
        if spec.negatable:
            names = (f"{names[0]}/--no-{names[0].removeprefix('--')}", *names[1:])
        info = typer.Option(default, *names, help=spec.text())
    return inspect.Parameter(f.name, KEYWORD, default=info, annotation=_cli_type(hint))


def parse_list(text: str, kind: type, flag: str) -> tuple:
    """A comma-separated option value as a tuple of ``kind``; empty parts are skipped."""
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(kind, "values")
        raise UserError(f"{flag} must be comma-separated {what}, got {text!r}") from None


def build(cls: type, values: dict[str, Any]) -> Any:
    """The options object from parsed command-line values (lists split at commas)."""
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        kind = _list_item(hints[f.name])
        if kind is not None and isinstance(values.get(f.name), str):
            values[f.name] = parse_list(values[f.name], kind, name_of(f))
    return cls(**values)


def command(app: typer.Typer, options: type, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register ``run(options, **own)`` as a command parsing ``options``' fields and then ``run``'s own parameters."""
    hints = typing.get_type_hints(options)
    names = [f.name for f in flag_fields(options)]

    def register(run: Callable) -> Callable:
        run_hints = typing.get_type_hints(run)
        own = [p.replace(kind=KEYWORD, annotation=run_hints[p.name])
               for p in inspect.signature(run).parameters.values() if p.name != "options"]
        parameters = [_parameter(f, hints[f.name]) for f in flag_fields(options)] + own

        def callback(**values: Any) -> None:
            chosen = {key: values.pop(key) for key in names}
            run(build(options, chosen), **values)

        callback.__signature__ = inspect.Signature(parameters)
        callback.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        callback.__name__, callback.__doc__ = run.__name__, run.__doc__
        callback.options = options  # what tests and the reference read the flags from
        app.command(name)(callback)
        return run

    return register
