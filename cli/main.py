"""The `nsql-med` command: argument parsing only; every step lives in the library."""
from __future__ import annotations

import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

from neurosql_med import __version__
from neurosql_med.errors import UserError

app = typer.Typer(
    name="nsql-med",
    help="Learn from a few dozen brain MRI scans with NeuroSQL and write synthetic cohorts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"nsql-med {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Learn from a few dozen brain MRI scans with NeuroSQL and write synthetic cohorts."""


def main() -> None:
    """Entry point: user errors become one `error:` line and exit status 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # usage errors: bad option value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
