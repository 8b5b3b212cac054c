"""The docs site's generated reference pages cover the code, and nothing in it is undocumented.

docs/gen_ref.py builds the CLI and config reference from the Typer app and config.py at every
`mkdocs build`; these tests run the same functions, so a new flag without help text, a new
config key without a description, or a page that stops listing one fails here.
"""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from neurosql_med import config as config_module

ROOT = Path(__file__).resolve().parents[1]
GEN = runpy.run_path(str(ROOT / "docs/gen_ref.py"), run_name="gen_ref")


def _parameters():
    root = [("", param) for param in GEN["cli_group"]().params]  # --version
    return root + [(name, param) for name, command in GEN["cli_commands"]() for param in command.params]


def test_every_command_says_what_it_does():
    commands = GEN["cli_commands"]()
    assert len(commands) >= 9
    undocumented = [name for name, command in commands if not (command.help or "").strip()]
    assert not undocumented, f"commands without a docstring: {undocumented}"


@pytest.mark.parametrize("name,param", _parameters(), ids=lambda v: getattr(v, "name", v))
def test_every_argument_and_option_has_help(name, param):
    assert (param.help or "").strip(), f"nsql-med {name} {GEN['param_names'](param)} has no help text"


def test_the_cli_page_lists_every_command_option_and_default():
    page = GEN["cli_markdown"]()
    for name, command in GEN["cli_commands"]():
        assert f"## `nsql-med {name}`" in page
        section = page.split(f"## `nsql-med {name}`")[1].split("\n## ")[0]
        for param in command.params:
            row = next((line for line in section.splitlines() if line.startswith(f"| `{GEN['param_names'](param)}` |")), None)
            assert row is not None, f"{name}: {GEN['param_names'](param)} missing from the CLI page"
            assert GEN["param_default"](param) in row


def test_the_cli_page_shows_what_the_shell_parses():
    """Spot checks against behaviour the tests elsewhere rely on: names, defaults, a negatable flag."""
    page = GEN["cli_markdown"]()
    assert "| `--texture / --no-texture` | flag | `--texture` |" in page
    assert "| `--out, -o` | PATH | `nsql-model` |" in page
    assert "| `SCANS` | PATH | required |" in page
    assert "nsql-med fit [OPTIONS] SCANS" in page


def test_the_config_help_names_every_builtin():
    page = GEN["cli_markdown"]()
    for name in config_module.BUILTIN:
        assert name in page.split("## `nsql-med fit`")[1].split("--config, -c")[1].split("\n")[0]


def test_every_config_key_has_a_description():
    missing = [key for key, _, text in GEN["config_keys"]() if not text]
    assert not missing, f"config keys without a comment in neurosql_med/config.py: {missing}"


def test_every_limit_has_a_description():
    missing = [name for name, _, text in GEN["config_limits"]() if not text]
    assert not missing, f"limits without a comment in neurosql_med/config.py: {missing}"


def test_the_config_page_lists_every_key_builtin_and_limit():
    page = GEN["config_markdown"]()
    keys = GEN["config_keys"]()
    assert len(keys) >= 39
    for key, _, _ in keys:
        assert f"| `{key}` |" in page
    for name in config_module.BUILTIN:
        assert f"| `{name}` |" in page
    for name, value, _ in GEN["config_limits"]():
        assert f"| `{name}` | {value:,} |" in page


def test_a_builtin_value_is_shown_beside_the_schema_default():
    row = next(line for line in GEN["config_markdown"]().splitlines() if line.startswith("| `model.channels` |"))
    assert "`[256, 128, 64, 32]`" in row and "`[256, 128, 64, 32, 16]`" in row  # default and hires3d


def test_every_builtin_config_says_what_it_is_for():
    assert all(header for _, header, _ in GEN["builtin_configs"]())



def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
