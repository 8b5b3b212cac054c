"""The refusals before anything is written: a model folder (`fit`) and a cohort folder (`synthesize`).

Both commands take ``--resume`` and ``--force``; each check runs before any scan is
loaded or image decoded, so a refused folder costs nothing and is left untouched.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from neurosql_med.errors import UserError
from neurosql_med.io.model import CHECKPOINT, is_model_folder


def check_resume_force(*, resume: bool, force: bool) -> None:
    if resume and force:
        raise UserError("--resume and --force contradict each other; choose one")


def check_model_output(out: Path, *, resume: bool, force: bool) -> None:
    """The refusals of `prepare_model_output` without touching anything, so a CLI can fail before loading scans."""
    check_resume_force(resume=resume, force=force)
    if not out.exists():
        if resume:
            raise UserError(f"--resume: {out} does not exist; nothing to resume")
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if force:
        return
    if resume:
        if not is_model_folder(out):
            raise UserError(f"--resume: {out} holds no nsql-med checkpoint ({CHECKPOINT})")
        return
    if is_model_folder(out):
        raise UserError(f"{out} already holds a model; use --resume to continue it or --force to replace it")
    if any(out.iterdir()):
        raise UserError(f"{out} is not empty and not a model folder; choose another --out or use --force")


def prepare_model_output(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite anything the user did not ask us to replace; clear it for --force."""
    check_model_output(out, resume=resume, force=force)
    if force and out.exists():
        shutil.rmtree(out)


def prepare_cohort_output(out: Path, *, resume: bool, force: bool, settings: dict) -> None:
    """An empty (or created) --out; with --resume, a cohort made with exactly ``settings``, its stray temporaries gone.

    ``settings`` are the dataset_description.json ``NeuroSQL`` fields a resumed run must share.
    """
    check_resume_force(resume=resume, force=force)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            _check_resumable_cohort(out, settings)
        elif force:
            shutil.rmtree(out)
        else:
            raise UserError(f"--out {out} is not empty; use --resume to finish it or --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from None


def _check_resumable_cohort(out: Path, settings: dict) -> None:
    try:
        recorded = json.loads((out / "dataset_description.json").read_text())["NeuroSQL"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--resume: {out} is not an nsql-med cohort (no readable dataset_description.json)") from None
    differs = [k for k in settings if recorded.get(k) != settings[k]]
    if differs:
        raise UserError(f"--resume: {out} was made with different settings ({', '.join(differs)})")
    for stray in out.rglob(".*.tmp*"):  # temporaries of a run that was killed
        stray.unlink()
