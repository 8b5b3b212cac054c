"""The docs site's generated reference pages: the CLI from the Typer app, the config schema from config.py.

`mkdocs build` runs this file through the mkdocs-gen-files plugin, so the pages are made
from the code at every build and cannot drift from it. tests/test_docs.py calls the same
functions and fails when a command, argument or option has no help text or a config key
no description, so every new flag arrives documented.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import typing
from importlib import resources
from pathlib import Path

import typer.main
import yaml

from neurosql_med import config as config_module
from neurosql_med.cli.main import app

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"


def cli_group():
    """The command Typer builds for `nsql-med`: what the shell actually parses."""
    return typer.main.get_command(app)


def cli_commands() -> list[tuple[str, object]]:
    """Every sub-command, in the order `nsql-med --help` lists them."""
    return list(cli_group().commands.items())


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace("\n", " ")


def is_argument(param) -> bool:
    """A positional argument (``SCANS``), not an option."""
    return not any(opt.startswith("-") for opt in param.opts)


def param_names(param) -> str:
    """How a parameter is written on the command line: ``--out, -o``, ``--texture / --no-texture``, ``SCANS``."""
    if is_argument(param):
        return param.name.upper()
    names = ", ".join(param.opts)
    return f"{names} / {', '.join(param.secondary_opts)}" if param.secondary_opts else names


def param_type(param, hints: dict) -> str:
    """The value a parameter takes, from the command function's type hints (``flag`` for on/off options)."""
    if getattr(param, "is_flag", False):
        return "flag"
    tp = hints.get(param.name, str)
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = inner[0] if inner else tp
    return {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}.get(tp, getattr(tp, "__name__", str(tp)).upper())


def param_default(param) -> str:
    """The default as a user would type it; 'required' when there is none."""
    if param.required:
        return "required"
    value = param.default
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "off" if not value else "on"
    return "—" if value is None else f"`{value}`"


def _command_section(name: str, command) -> list[str]:
    hints = typing.get_type_hints(inspect.unwrap(command.callback))
    arguments = [p.name.upper() for p in command.params if is_argument(p)]
    lines = [f"## `nsql-med {name}`", "", command.help or "", "", "```",
             " ".join(["nsql-med", name, "[OPTIONS]", *arguments]), "```", "",
             "| argument / option | type | default | help |", "| --- | --- | --- | --- |"]
    for param in command.params:
        lines.append(f"| `{param_names(param)}` | {param_type(param, hints)} | {param_default(param)} | "
                     f"{_cell(param.help or '')} |")
    return lines + [""]


def cli_markdown() -> str:
    """The CLI reference page: every command, argument and option with its type, default and help."""
    lines = ["# CLI reference", "",
             "Generated from the Typer app (`cli/main.py`) each time the site is built; "
             "`nsql-med COMMAND --help` prints the same.", "",
             f"{cli_group().help}", "",
             "`nsql-med --version` prints the version. Exit codes and the rules every command follows are in "
             "[Exit codes and safety](safety.md).", ""]
    lines += [f"- [`{name}`](#nsql-med-{name}): {(command.help or '').splitlines()[0]}" for name, command in cli_commands()]
    lines.append("")
    for name, command in cli_commands():
        lines += _command_section(name, command)
    return "\n".join(lines)


def source_comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line of ``source``."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT}


def _comments_by_name(source: str) -> dict[str, str]:
    """``Class.field`` and module constant -> the comment config.py writes on its line."""
    comments = source_comments(source)
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    found[f"{node.name}.{item.target.id}"] = comments.get(item.end_lineno, "")
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = comments.get(node.end_lineno, "")
    return found


def config_sections() -> list[tuple[str, type]]:
    """(section name, its dataclass) in the order a config file lists them."""
    hints = typing.get_type_hints(config_module.Config)
    sections = []
    for f in dataclasses.fields(config_module.Config):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        sections.append((f.name, inner[0] if inner else tp))
    return sections


def config_keys() -> list[tuple[str, dataclasses.Field, str]]:
    """Every config key as (``section.key``, its field, its description)."""
    comments = _comments_by_name(Path(config_module.__file__).read_text())
    return [(f"{section}.{f.name}", f, comments.get(f"{cls.__name__}.{f.name}", ""))
            for section, cls in config_sections() for f in dataclasses.fields(cls)]


def config_limits() -> list[tuple[str, object, str]]:
    """The module's upper limits (``MAX_*``, ``SEED_RANGE``) with their values and comments."""
    comments = _comments_by_name(Path(config_module.__file__).read_text())
    return [(name, getattr(config_module, name), comments.get(name, ""))
            for name in vars(config_module) if name.startswith("MAX_") or name == "SEED_RANGE"]


def _type_name(tp: object) -> str:
    text = str(tp).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def _field_default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def builtin_configs() -> list[tuple[str, str, dict]]:
    """(name, the header comment saying what it is for, its parsed YAML) of every built-in config."""
    found = []
    for name in config_module.BUILTIN:
        text = resources.files("neurosql_med.configs").joinpath(f"{name}.yaml").read_text()
        header = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        found.append((name, " ".join(header), yaml.safe_load(text)))
    return found


def _builtin_value(raw: dict, key: str) -> str:
    section, name = key.split(".")
    value = (raw.get(section) or {}).get(name, dataclasses.MISSING)
    return "" if value is dataclasses.MISSING else f"`{value}`"


def config_markdown() -> str:
    """The config reference page: the built-in configs, then every key with type, default, built-in values, meaning."""
    builtins = builtin_configs()
    lines = ["# Config reference", "",
             "Generated from `neurosql_med/config.py` and the built-in YAML files in `configs/` each time the site "
             "is built. A config is YAML; an unknown key or a wrong type is an error naming the key. `--config` "
             "takes a path or a built-in name. Command-line options (`--epochs`, `--mode`, …) override the file, "
             "and a fit saves the resolved config in its model folder.", "",
             "## Built-in configs", "", "| name | what it is for |", "| --- | --- |"]
    lines += [f"| `{name}` | {_cell(header)} |" for name, header, _ in builtins]
    names = " | ".join(f"`{name}`" for name, _, _ in builtins)
    lines += ["", "## Keys", "",
              "*default* is the schema's value, used when a file leaves the key out; the next columns show what each "
              "built-in file sets (empty: the schema default).", ""]
    for section, cls in config_sections():
        doc = (cls.__doc__ or "").strip() if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        lines += [f"### `{section}`", "", *([doc, ""] if doc else []),
                  f"| key | type | default | {names} | meaning |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in builtins) + " | --- |"]
        for key, f, text in config_keys():
            if key.split(".")[0] != section:
                continue
            values = " | ".join(_builtin_value(raw, key) for _, _, raw in builtins)
            lines.append(f"| `{key}` | {_cell(_type_name(f.type))} | `{_field_default(f)}` | {values} | {_cell(text)} |")
        lines.append("")
    lines += ["## Limits", "", "Checked when a config is read, so a typo cannot ask for more than any machine has.", "",
              "| limit | value | what |", "| --- | ---: | --- |"]
    lines += [f"| `{name}` | {value:,} | {_cell(text)} |" for name, value, text in config_limits()]
    return "\n".join(lines) + "\n"


def write_pages() -> None:
    """Hand both pages to mkdocs-gen-files (only under `mkdocs build` / `mkdocs serve`)."""
    import mkdocs_gen_files

    for page, text in ((CLI_PAGE, cli_markdown()), (CONFIG_PAGE, config_markdown())):
        with mkdocs_gen_files.open(page, "w") as handle:
            handle.write(text)
        mkdocs_gen_files.set_edit_path(page, "gen_ref.py")


if __name__ in ("__main__", "<run_path>"):
    write_pages()
