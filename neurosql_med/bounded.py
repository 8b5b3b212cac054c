"""The one way nsql-med reads a JSON or YAML file: with limits, so a hostile file costs little.

Every JSON or YAML file the tool reads (a config, a model folder's records, a sample's
provenance, a dataset's sidecars) can be edited by anyone. Parsed without limits, a
few hundred bytes of YAML aliases expand to gigabytes, and a deeply nested JSON array
exhausts the interpreter's stack. Here the size is capped before parsing, YAML aliases
are refused, the nesting depth is capped, and a refusal is one `UserError` naming the
file. Callers that fall back on a damaged file catch it as a ValueError.
"""
from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from neurosql_med.errors import UserError

MAX_BYTES = 64 * 2**20  # the largest JSON file read (a conditional model's conditions.json is the largest written)
MAX_YAML_BYTES = 2**20  # a config is a few hundred bytes
MAX_DEPTH = 32  # nesting levels; the deepest file nsql-med writes (utility.json) has 7
MAX_NODES = 10_000  # YAML nodes in one document; a config holds under a hundred


class DocumentError(UserError, ValueError):
    """A JSON or YAML file that is too large, too deep, or not parsable: a user error, and a ValueError for fallbacks."""


def _preview_repr() -> reprlib.Repr:
    """reprlib's bounded repr: a few items of a few levels, long strings and numbers cut short."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlong = 2, 40, 40, 40
    shown.maxlist = shown.maxdict = shown.maxtuple = shown.maxset = 4
    return shown


_PREVIEW = _preview_repr()


def preview(value: object) -> str:
    """A value for an error message: its type and a short repr, however large or deep the value is."""
    return f"{type(value).__name__} {_PREVIEW.repr(value)}"


def read_bytes(path: str | Path, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes once they are known to be at most ``limit``; at most ``limit + 1`` are ever read."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DocumentError(f"{path}: larger than {_size(limit)}; refusing to read it")
    return data


def _size(limit: int) -> str:
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit:,} bytes"


def parse_json(text: str | bytes, where: str | Path, limit: int = MAX_BYTES) -> Any:
    """``text`` parsed as JSON, refused when larger than ``limit`` or nested deeper than MAX_DEPTH."""
    if len(text) > limit:
        raise DocumentError(f"{where}: larger than {_size(limit)}; refusing to read it")
    try:
        value = json.loads(text)
    except RecursionError:
        raise DocumentError(f"{where}: nested deeper than {MAX_DEPTH} levels; refusing to read it") from None
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:
        raise DocumentError(f"{where}: not JSON ({_first_line(exc)})") from None
    _check_depth(value, where)
    return value


def read_json(path: str | Path, limit: int = MAX_BYTES) -> Any:
    """The JSON value in ``path`` (see `parse_json`); OSError when it cannot be read at all."""
    return parse_json(read_bytes(path, limit), path, limit)


def read_json_lines(path: str | Path, limit: int = MAX_BYTES) -> list[Any]:
    """One JSON value per non-blank line (history.jsonl)."""
    lines = read_bytes(path, limit).splitlines()
    return [parse_json(line, f"{path} line {i}", limit) for i, line in enumerate(lines, 1) if line.strip()]


def _first_line(exc: Exception, limit: int = 120) -> str:
    """An exception's message, on one line and cut short: parsers quote the input they stopped at."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _check_depth(value: Any, where: str | Path) -> None:
    """Walk the parsed value without recursion; json.loads itself stops at the interpreter's recursion limit."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentError(f"{where}: nested deeper than {MAX_DEPTH} levels; refusing to read it")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with at most MAX_DEPTH levels and MAX_NODES nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "uses a YAML alias (*name); write the value out instead",
                                              self.peek_event().start_mark)
        self._nodes += 1
        too_much = (f"nests deeper than {MAX_DEPTH} levels" if self._depth >= MAX_DEPTH
                    else f"holds more than {MAX_NODES:,} values" if self._nodes > MAX_NODES else None)
        if too_much:
            raise yaml.composer.ComposerError(None, None, too_much, self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str, where: str | Path, limit: int = MAX_YAML_BYTES) -> Any:
    """``text`` parsed as YAML by the safe loader, within the limits above."""
    if len(text) > limit:
        raise DocumentError(f"{where}: larger than {_size(limit)}; refusing to read it")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise DocumentError(f"{where} is not valid YAML: {_yaml_reason(exc)}") from None
    except ValueError as exc:  # a value PyYAML cannot build: a 5000-digit integer, the 13th month
        raise DocumentError(f"{where} is not valid YAML: {_first_line(exc)}") from None
    finally:
        loader.dispose()


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """The problem and where it is, on one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem}{where}"
    return _first_line(exc)


def read_yaml(path: str | Path, limit: int = MAX_YAML_BYTES) -> Any:
    """The YAML document in ``path``, which must be UTF-8 text (see `parse_yaml`)."""
    data = read_bytes(path, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_yaml(text, path, limit)
