"""`nsql-med ARGS`, paused after the ``after``-th call of ``module.name`` until a barrier file appears.

The call itself runs in full; the process then waits, so a test acts on a run that is
certainly still in progress, at a known point. Run as a script (``python pausing.py WHERE
AFTER BARRIER ARGS...``) where each process must start anew, as torchrun starts its ranks;
support.Paused forks the test process instead. Light on purpose: nothing is imported before
the patch but the module patched.
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def pause_after(where: str, after: int, barrier: Path) -> None:
    """Make ``where`` (``module.name``) touch ``BARRIER.reached`` after its ``after``-th call, then wait for BARRIER."""
    module_name, name = where.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, name), []

    def then_wait(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == after:
            Path(f"{barrier}.reached").touch()
            while not barrier.exists():
                time.sleep(0.01)
        return result

    setattr(module, name, then_wait)


def main_paused(where: str, after: int, barrier: Path, args: list[str]) -> None:
    pause_after(where, after, barrier)
    from neurosql_med.cli.main import main
    sys.argv = ["nsql-med", *args]
    main()


if __name__ == "__main__":
    main_paused(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
