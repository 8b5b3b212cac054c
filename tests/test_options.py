"""Each flag is written once: the command line shows and enforces what the options dataclasses declare."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from importlib import resources
from pathlib import Path

import pytest
import typer.main

from support import cli
from neurosql_med.cli.flags import parse_list
from neurosql_med.cli.main import app
from neurosql_med.config import BUILTIN, load_config
from neurosql_med.data.options import InspectOptions
from neurosql_med.errors import UserError
from neurosql_med.evaluation.options import BenchmarkOptions, EvaluateOptions, UtilityOptions
from neurosql_med.metrics import TAU
from neurosql_med.options import Range, flag_fields, flag_of, name_of
from neurosql_med.synthesis.options import MAX_SAMPLES, SampleOptions, SynthesizeOptions
from neurosql_med.training.options import FitOptions


def _commands() -> dict[str, tuple[object, type]]:
    """Every command built from an options dataclass, with that dataclass."""
    group = typer.main.get_command(app)
    return {name: (command, command.callback.options) for name, command in group.commands.items()
            if hasattr(command.callback, "options")}


def _shown(value: object) -> object:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def test_the_commands_with_many_options_are_built_from_dataclasses():
    assert {name: cls for name, (_, cls) in _commands().items()} == {
        "inspect": InspectOptions, "fit": FitOptions, "synthesize": SynthesizeOptions,
        "evaluate": EvaluateOptions, "benchmark": BenchmarkOptions, "utility": UtilityOptions}


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_field_is_a_flag_with_the_dataclass_default_and_help(name):
    command, cls = _commands()[name]
    params = {p.name: p for p in command.params}
    for f in flag_fields(cls):
        param = params[f.name]
        spec = flag_of(f)
        if f.default is dataclasses.MISSING:
            assert param.required, f"{name} {name_of(f)}"
        else:
            assert param.default == _shown(f.default), f"{name} {name_of(f)}"
        assert param.help == spec.text() and spec.help in param.help
        assert (name_of(f) in param.opts) or spec.argument or spec.negatable


def _help(capsys, command: str) -> tuple[int, str]:
    """`nsql-med COMMAND --help` as one line of words, the table's borders left out."""
    code, out, _ = cli(capsys, command, "--help")
    return code, " ".join(out.replace("│", " ").split())


def test_help_prints_the_dataclass_defaults(capsys):
    code, text = _help(capsys, "synthesize")
    assert code == 0 and f"[default: {SynthesizeOptions.__dataclass_fields__['batch_size'].default}]" in text
    assert f"(default {TAU})" in text and "One of: nifti, dicom, both." in text
    code, text = _help(capsys, "evaluate")
    assert code == 0 and f"[default: {TAU}]" in text


def test_the_config_choices_are_the_registry_of_builtin_configs():
    shipped = {p.name.removesuffix(".yaml") for p in resources.files("neurosql_med.configs").iterdir()
               if p.name.endswith(".yaml")}
    assert set(BUILTIN) == shipped and BUILTIN[0] == "default" and len(BUILTIN) == len(shipped)
    for name, (command, _) in _commands().items():
        (config,) = [p for p in command.params if p.name == "config"] or [None]
        if config is not None:
            listed = config.help.split("built-in name: ")[1].rstrip(".").split(", ")
            assert listed == list(BUILTIN), name
    for name in BUILTIN:
        load_config(name)


def test_choices_that_override_a_config_key_are_the_keys_literal_values():
    mode = FitOptions.__dataclass_fields__["mode"]
    assert flag_of(mode).choices == typing.get_args(typing.get_type_hints(type(load_config().data))["mode"])
    with pytest.raises(UserError, match="--lattice must be one of gaussian, uniform, center-outward, got 'sobol'"):
        FitOptions(scans=Path("x"), lattice="sobol")


@pytest.mark.parametrize("make, message", [
    (lambda: SynthesizeOptions(out=Path("o"), n=0), f"--n must be between 1 and {MAX_SAMPLES:,}, got 0"),
    (lambda: SynthesizeOptions(out=Path("o"), n=2, seed=-1), "--seed must be between 0 and"),
    (lambda: SynthesizeOptions(out=Path("o"), n=2, batch_size=0), "--batch-size must be at least 1, got 0"),
    (lambda: SynthesizeOptions(out=Path("o"), n=2, format="png"), "--format must be one of nifti, dicom, both, got 'png'"),
    (lambda: SynthesizeOptions(out=Path("o"), n=2, tau=0.3), "--drop-copies and --tau need --audit"),
    (lambda: SynthesizeOptions(out=Path("o")), "--n is required"),
    (lambda: SampleOptions(n=2, typicality=0.0), "--typicality must be in \\(0, 1\\], got 0.0"),
    (lambda: EvaluateOptions(real=Path("r"), synth=Path("s"), tau=float("nan")), "--tau must be positive and finite"),
    (lambda: UtilityOptions(scans=Path("s"), task="segment", train_subjects=(1,)), "--train-subjects must be at least 2"),
    (lambda: UtilityOptions(scans=Path("s"), task="segment", synthetic_per_real=(0,)),
     "--synthetic-per-real must be in \\(0, 100\\], got 0"),
    (lambda: UtilityOptions(scans=Path("s"), task="segment", holdout=Path("h"), holdout_fraction=0.5),
     "--holdout and --holdout-fraction exclude each other"),
    (lambda: UtilityOptions(scans=Path("s"), task="segment", schedule="linear"), "--schedule must be one of"),
    (lambda: BenchmarkOptions(scans=Path("s"), budget_minutes=float("nan")), "--budget-minutes must be greater than 0"),
])
def test_a_bad_value_is_refused_when_the_options_are_made(make, message):
    with pytest.raises(UserError, match=message):
        make()


@pytest.mark.parametrize("args, message", [
    (("synthesize", "--n", "0", "--out", "o"), f"--n must be between 1 and {MAX_SAMPLES:,}, got 0"),
    (("synthesize", "--n", "2", "--out", "o", "--format", "png"), "--format must be one of nifti, dicom, both"),
    (("fit", "scans", "--mode", "4d"), "--mode must be one of 2d, 3d, got '4d'"),
    (("utility", "scans", "--task", "segment", "--train-subjects", "4,x"), "--train-subjects must be comma-separated integers"),
    (("utility", "scans", "--task", "segment", "--synthetic-per-real", "0"), "--synthetic-per-real must be in (0, 100]"),
    (("benchmark", "scans", "--seeds", "1,-2"), "--seeds must be at least 0, got -2"),
    (("evaluate", "--real", "r", "--synth", "s", "--c2st", "medium"), "--c2st must be one of fast, strong, off"),
])
def test_the_command_line_refuses_with_the_same_words_as_one_error_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_lists_are_comma_separated_on_the_command_line_and_tuples_in_the_library():
    assert parse_list("4, 8,,16", int, "--k") == (4, 8, 16)
    assert parse_list("1,2.5", float, "--r") == (1.0, 2.5)
    with pytest.raises(UserError, match="--k must be comma-separated integers, got '4,a'"):
        parse_list("4,a", int, "--k")


def test_a_range_says_what_it_allows():
    assert Range(1).describe() == "at least 1" and Range(0, low_open=True).describe() == "greater than 0"
    assert Range(1, 1000).describe() == "between 1 and 1,000"
    assert Range(0, 1, low_open=True, high_open=True).describe() == "in (0, 1)"
    unit = Range(0, 1, low_open=True)
    assert unit.holds(1) and unit.holds(0.5) and not unit.holds(0) and not unit.holds(float("nan"))
    assert not unit.holds(float("inf")) and not Range(0).holds(-1)


@pytest.mark.processes
def test_the_command_line_starts_without_torch():
    """The options modules the commands are built from stay light: `nsql-med --version` is instant."""
    probe = "import sys, neurosql_med.cli.main; print(sorted({'torch', 'monai', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
