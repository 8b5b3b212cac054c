"""The refusals before anything is written, and the lock held while a run writes.

`fit`, `synthesize` and `evaluate` write into a folder named by ``--out``. What the
user owns there must survive any mistake: ``--force`` only ever replaces a folder that
nsql-med itself wrote (a model folder or a cohort, recognised file by file), never an
input, ``/`` or the home folder. Each check runs before any scan is loaded or image
decoded, so a refused folder costs nothing and is left untouched. A run that fails once
it has started writing leaves a folder to continue: a model folder with a checkpoint
resumes with --resume; one whose fit stopped before its first checkpoint holds no
training, and the same command starts it again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from neurosql_med.bounded import read_json
from neurosql_med.errors import UserError
from neurosql_med.io.files import make_folder, write_text
from neurosql_med.io.model import (
    ARTIFACTS, CHECKPOINT, EVALUATION, HASHES, HISTORY, LOSS_PLOT, OPTIONAL, RECON_PLOT, is_model_folder,
)
from neurosql_med.version import __version__

LOCK = ".nsql-med.lock"
MARKER = ".nsql-med.json"
KINDS = {"model": "model folder", "cohort": "synthetic cohort"}  # what a MARKER may name, in words
MODEL_FILES = frozenset({*ARTIFACTS, *OPTIONAL, HASHES, EVALUATION, HISTORY, LOSS_PLOT, RECON_PLOT})
COHORT_FILES = frozenset({
    "dataset_description.json", "README", ".bidsignore", "participants.tsv", "participants.json",
    "manifest.tsv", "preview.png", "audit.json", "dseg.tsv",
})
SAMPLE = re.compile(r"sub-synth\d+(/anat(/sub-synth\d+_desc-nsql_(T1w|dseg)\.(nii\.gz|json))?"
                    r"|/dicom(/sub-synth\d+_desc-nsql_(T1w(_\d+\.dcm|\.json)|dseg\.dcm))?)?")
TEMPORARY = re.compile(r"\.[^/]+\.tmp[^/]*")  # the names `atomic_path` gives its temporaries


def check_resume_force(*, resume: bool, force: bool) -> None:
    if resume and force:
        raise UserError("--resume and --force contradict each other; choose one")


def check_output_path(out: Path, *, inputs: Sequence[str | Path] = ()) -> None:
    """Refusals that depend on where --out is rather than on what it holds."""
    target = out.resolve()
    if target == Path(target.anchor):
        raise UserError(f"--out {out} is the root folder; choose a folder of its own")
    home = _home()
    if home is not None and home.is_relative_to(target):
        raise UserError(f"--out {out} is your home folder or holds it; choose a folder of its own")
    for given in inputs:
        source = Path(given).resolve()
        if source.is_relative_to(target):
            role = "is" if source == target else "holds"
            raise UserError(f"--out {out} {role} the input {given}; choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry: nothing to protect
        return None


def check_model_output(out: Path, *, resume: bool, force: bool, inputs: Sequence[str | Path] = ()) -> None:
    """The refusals of `prepare_model_output` without touching anything, so a CLI can fail before loading scans;
    first, whether another run is writing --out (its half-made files would mislead the others)."""
    check_not_in_use(out)
    _check_model_folder(out, resume=resume, force=force, inputs=inputs)


def _check_model_folder(out: Path, *, resume: bool, force: bool, inputs: Sequence[str | Path]) -> None:
    """What --out holds against what was asked (see `check_model_output`).

    A fit that failed or was killed before its first checkpoint left nothing to continue:
    the same command starts it again, without --force (see `_unstarted`).
    """
    check_resume_force(resume=resume, force=force)
    check_output_path(out, inputs=inputs)
    if not _has_contents(out):
        if resume:
            raise UserError(f"--resume: {out} holds nothing to resume")
        return
    if resume:
        if _unstarted(out):
            raise UserError(f"--resume: {out} holds no checkpoint yet (its fit stopped before the first one); "
                            "start it again with the same command without --resume")
        if not is_model_folder(out):
            raise UserError(f"--resume: {out} holds no nsql-med checkpoint ({CHECKPOINT})")
        return
    _check_replaceable(out, "model")  # before any hint at --force: never suggest it for a folder it would refuse
    if force or _unstarted(out):
        return
    if is_model_folder(out):
        raise UserError(f"{out} already holds a model; use --resume to continue it or --force to replace it")
    raise UserError(f"{out} holds an unfinished nsql-med model folder; use --force to replace it")


def _unstarted(out: Path) -> bool:
    """A model folder nsql-med marked whose fit stopped before its first checkpoint: no training to keep."""
    return _has_contents(out) and not is_model_folder(out) and _marker_kind(out) == "model"


def prepare_model_output(
    out: Path, *, resume: bool, force: bool, inputs: Sequence[str | Path] = (),
) -> None:
    """Refuse to overwrite anything the user did not ask us to replace; clear it for --force or a fresh start.

    ``inputs``: the training scans (resolved before comparing), which --out may not be or hold.
    Called under `output_lock`, it checks the folder again, now that no other run can change it.
    """
    _check_model_folder(out, resume=resume, force=force, inputs=inputs)
    if (force or (not resume and _unstarted(out))) and out.exists():
        _clear(out)
    if resume:
        _remove_temporaries(out)
    make_folder(out)
    _mark(out, "model")


def prepare_cohort_output(
    out: Path, *, resume: bool, force: bool, settings: dict,
    inputs: Sequence[str | Path] = (), needed_bytes: int = 0,
) -> None:
    """An empty (or created) --out; with --resume, a cohort made with exactly ``settings``, its stray temporaries gone.

    ``settings`` are the dataset_description.json ``NeuroSQL`` fields a resumed run must share;
    ``inputs`` the folders the run reads; ``needed_bytes`` an upper bound on what it will write.
    """
    check_resume_force(resume=resume, force=force)
    check_output_path(out, inputs=inputs)
    if _has_contents(out):
        if resume:
            _check_resumable_cohort(out, settings)
        else:
            _check_replaceable(out, "cohort")
            if not force:
                raise UserError(f"--out {out} holds an nsql-med cohort; use --resume to finish it or --force to replace it")
    check_free_space(out, needed_bytes, reclaimable=resume or force)
    if force and out.exists():
        _clear(out)
    make_folder(out)
    _mark(out, "cohort")


def prepare_report_output(out: Path, *, inputs: Sequence[str | Path] = ()) -> None:
    """An --out folder for evaluate's report files; it may hold other files, which are left alone."""
    check_output_path(out, inputs=inputs)
    make_folder(out)


def check_free_space(out: Path, needed_bytes: int, *, reclaimable: bool) -> None:
    """Refuse a run whose files cannot fit, before the first one is written.

    With --force or --resume what --out holds now counts as free: it is replaced or kept as part of the run.
    """
    base = next(p for p in (out, *out.absolute().parents) if p.exists())
    usage = shutil.disk_usage(base)
    if usage.total == 0:  # a pseudo file system (/proc) has no size; writing there fails with its own message
        return
    free = usage.free + (_size(out) if reclaimable and out.is_dir() else 0)
    if needed_bytes > free:
        raise UserError(f"--out {out}: this run needs up to {needed_bytes / 1e9:.2f} GB "
                        f"but only {free / 1e9:.2f} GB is free there")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _has_contents(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK for p in out.iterdir())


def _check_replaceable(out: Path, kind: str) -> None:
    """--force only replaces what nsql-med wrote: anything else in --out is the user's, and stays.

    Nor does it replace one kind of nsql-med folder by another: a cohort is no model folder to refit.
    """
    marker = _marker_kind(out)
    if marker in KINDS and marker != kind:
        raise UserError(f"--out {out} is an nsql-med {KINDS[marker]}, not a {KINDS[kind]}; choose another --out")
    foreign = _foreign_entry(out, kind)
    if foreign is not None:
        raise UserError(f"--out {out} holds {foreign.relative_to(out)}, which nsql-med did not write; "
                        f"choose another --out (--force replaces only a {KINDS[kind]} nsql-med wrote)")


def _foreign_entry(out: Path, kind: str) -> Path | None:
    """The first entry of ``out`` that a ``kind`` run would not have written, or None when there is none."""
    marker = _marker_kind(out)
    if marker not in (None, kind):
        return out / MARKER
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_symlink() or not _written_by_us(rel, kind):
            return path
    if kind == "cohort" and marker is None and _has_contents(out) and not _described_by_us(out):
        return out / "dataset_description.json"  # named like a cohort, but not one nsql-med described
    return None


def _written_by_us(rel: str, kind: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if rel in (LOCK, MARKER) or (TEMPORARY.fullmatch(name) and (kind == "cohort" or "/" not in rel)):
        return True
    return rel in MODEL_FILES if kind == "model" else rel in COHORT_FILES or SAMPLE.fullmatch(rel) is not None


def _marker_kind(out: Path) -> str | None:
    try:
        return str(read_json(out / MARKER)["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _described_by_us(out: Path) -> bool:
    try:
        return read_json(out / "dataset_description.json")["GeneratedBy"][0]["Name"] == "nsql-med"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _clear(out: Path) -> None:
    """Empty --out but keep its lock file, on which this run holds the lock; links are removed, never followed."""
    for entry in out.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _mark(out: Path, kind: str) -> None:
    """Name the folder's kind, so a later --force recognises it as nsql-med's own."""
    if _marker_kind(out) != kind:
        write_text(out / MARKER, json.dumps({"kind": kind, "nsql-med": __version__}) + "\n")


def _remove_temporaries(out: Path) -> None:
    for stray in out.rglob(".*.tmp*"):  # temporaries of a run that was killed
        stray.unlink()


def _check_resumable_cohort(out: Path, settings: dict) -> None:
    try:
        recorded = read_json(out / "dataset_description.json")["NeuroSQL"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--resume: {out} is not an nsql-med cohort (no readable dataset_description.json)") from None
    differs = [k for k in settings if recorded.get(k) != settings[k]]
    if differs:
        raise UserError(f"--resume: {out} was made with different settings ({', '.join(differs)})")
    _remove_temporaries(out)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold --out exclusively for one run, so two runs never interleave their files in it.

    The lock is an flock on ``out/.nsql-med.lock``, which holds the owner's pid for the
    message. The kernel drops an flock when its process exits, however it dies (kill -9
    included), so a lock file left behind by a killed run is stale by construction and
    the next run simply takes it: no pid guessing, no manual clean-up.
    """
    out = Path(out)
    created = not out.exists()
    make_folder(out)
    fd = _acquire(out)
    try:
        yield
    finally:
        (out / LOCK).unlink(missing_ok=True)  # still holding it: a run that opened it meanwhile sees it vanish
        os.close(fd)
        if created and not any(out.iterdir()):
            out.rmdir()


def check_not_in_use(out: Path) -> None:
    """Refuse at once, writing nothing, when another run holds --out; `output_lock` then settles any race."""
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released with the fd below
    except BlockingIOError:
        raise _in_use(out, fd) from None
    finally:
        os.close(fd)


def _in_use(out: Path, fd: int) -> UserError:
    """The refusal naming the pid the lock's holder wrote into the lock file."""
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return UserError(f"{out} is in use by another nsql-med run (pid {holder})")


def _acquire(out: Path) -> int:
    """An fd holding the lock on the lock file that is in place (a finishing run may have just removed the one we opened)."""
    path = out / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write --out {out}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = _in_use(out, fd)
            os.close(fd)
            raise busy from None
        if path.exists() and os.path.samestat(os.fstat(fd), path.stat()):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise UserError(f"{out} is in use by another nsql-med run")
