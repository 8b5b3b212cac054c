"""Tampered model folders whose hashes.json was rewritten to match: every command must refuse them cleanly.

The hashes only prove the files are the ones recorded; an edited artifact with a
re-hashed folder must still end in one `error:` line naming the file, exit 2, and
nothing written.
"""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from support import cli
from neurosql_med.io.model import write_hashes


pytestmark = pytest.mark.slow  # every test here reads a tiny model


@pytest.fixture
def model(tiny_models):
    return tiny_models.get("tiny")


def edit_json(name, change):
    def tamper(folder):
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return tamper


def edit_yaml(change):
    def tamper(folder):
        path = folder / "config.yaml"
        raw = yaml.safe_load(path.read_text())
        change(raw)
        path.write_text(yaml.safe_dump(raw))
    return tamper


def edit_array(name, change):
    def tamper(folder):
        path = folder / name
        np.save(path, change(np.load(path)), allow_pickle=True)
    return tamper


def edit_weights(change):
    def tamper(folder):
        path = folder / "model.pt"
        state = torch.load(path, weights_only=True)
        change(state["generator"])
        torch.save(state, path)
    return tamper


def write(name, data: bytes):
    def tamper(folder):
        (folder / name).write_bytes(data)
    return tamper


def as_objects(array):
    return np.array(list(array), dtype=object)


DEEP = b"[" * 200_000 + b"]" * 200_000  # past the interpreter's recursion limit
ALIAS_BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
                     for p, c in zip(["", *"abcdefg"], "abcdefgh")) + "train: {lr: *h}\n"  # 9**8 strings once expanded


CASES = {
    "config other channels": (edit_yaml(lambda c: c["model"].update(channels=[8, 8])), ["model.pt", "config.yaml"]),
    "config other latent_dim": (edit_yaml(lambda c: c["model"].update(latent_dim=3)), ["lattice.npy", "config.yaml"]),
    "config fails schema": (edit_yaml(lambda c: c["model"].update(depth=3)), ["config.yaml", "model.depth"]),
    "config invalid value": (edit_yaml(lambda c: c["model"].update(latent_dim=0)), ["config.yaml", "latent_dim"]),
    "config not yaml": (write("config.yaml", b"model: [unclosed\n"), ["config.yaml"]),
    "config not text": (write("config.yaml", b"\xff\xfe\x00bad"), ["config.yaml"]),
    "weights missing tensor": (edit_weights(lambda g: g.pop("body.0.conv.weight")), ["model.pt", "missing", "body.0.conv.weight"]),
    "weights extra tensor": (edit_weights(lambda g: g.update(extra=torch.zeros(2))), ["model.pt", "unexpected", "extra"]),
    "weights wrong shape": (edit_weights(lambda g: g.update(template=torch.zeros(1, 1, 3, 3))), ["model.pt", "template"]),
    "weights not finite": (edit_weights(lambda g: g["template"].fill_(float("nan"))), ["model.pt", "template"]),
    "geometry missing key": (edit_json("geometry.json", lambda g: {k: v for k, v in g.items() if k != "affine"}), ["geometry.json", "affine"]),
    "geometry bad mode": (edit_json("geometry.json", lambda g: g | {"mode": "4d"}), ["geometry.json", "mode"]),
    "geometry nan affine": (edit_json("geometry.json", lambda g: g | {"affine": [[float("nan")] * 4] * 4}), ["geometry.json", "affine"]),
    "geometry inf affine": (edit_json("geometry.json", lambda g: g | {"affine": [[float("inf")] * 4] * 4}), ["geometry.json", "affine"]),
    "geometry 3x3 affine": (edit_json("geometry.json", lambda g: g | {"affine": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}), ["geometry.json", "affine"]),
    "geometry singular affine": (edit_json("geometry.json", lambda g: g | {"affine": [[0] * 4] * 3 + [[0, 0, 0, 1]]}), ["geometry.json", "affine"]),
    "geometry slice_axis out of range": (edit_json("geometry.json", lambda g: g | {"slice_axis": 3}), ["geometry.json", "slice_axis"]),
    "geometry slice_index out of range": (edit_json("geometry.json", lambda g: g | {"slice_index": 999}), ["geometry.json", "slice_index"]),
    "geometry not an object": (edit_json("geometry.json", lambda g: [g]), ["geometry.json"]),
    "geometry other than config": (edit_json("geometry.json", lambda g: g | {"mode": "3d", "slice_axis": None, "slice_index": None}),
                                   ["geometry.json", "config.yaml", "mode"]),
    "lattice pickled objects": (edit_array("lattice.npy", as_objects), ["lattice.npy"]),
    "lattice wrong width": (edit_array("lattice.npy", lambda a: np.hstack([a, a])), ["lattice.npy", "latent_dim"]),
    "lattice not finite": (edit_array("lattice.npy", lambda a: np.full_like(a, np.inf)), ["lattice.npy", "NaN or infinite"]),
    "lattice integers": (edit_array("lattice.npy", lambda a: a.astype(np.int64)), ["lattice.npy"]),
    "lattice shorter than assignment": (edit_array("lattice.npy", lambda a: a[:-1]), ["assignment.npy", "lattice.npy"]),
    "assignment pickled objects": (edit_array("assignment.npy", as_objects), ["assignment.npy"]),
    "assignment floats": (edit_array("assignment.npy", lambda a: a.astype(np.float64)), ["assignment.npy", "integer"]),
    "assignment out of range": (edit_array("assignment.npy", lambda a: a + len(a)), ["assignment.npy", "permutation"]),
    "assignment repeats": (edit_array("assignment.npy", lambda a: np.zeros_like(a)), ["assignment.npy", "permutation"]),
    "fingerprint not json": (write("data_fingerprint.json", b"{not json"), ["data_fingerprint.json"]),
    "fingerprint not an object": (write("data_fingerprint.json", b"[1, 2]"), ["data_fingerprint.json", "object"]),
    "fingerprint nested deeply": (write("data_fingerprint.json", DEEP), ["data_fingerprint.json", "nested deeper"]),
    "geometry nested deeply": (write("geometry.json", DEEP), ["geometry.json", "nested deeper"]),
    "config alias bomb": (write("config.yaml", ALIAS_BOMB.encode()), ["config.yaml", "alias"]),
    "config huge value": (edit_yaml(lambda c: c["model"].update(lattice=list(range(5_000)))), ["config.yaml", "list [0, 1, 2, 3, ...]"]),
}


def assert_refused(code, out, err, needles):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), (needles, err)
    assert "Traceback" not in out + err


def tampered(model, tmp_path, tamper):
    folder = shutil.copytree(model, tmp_path / "model")
    tamper(folder)
    write_hashes(folder)
    return folder


@pytest.mark.parametrize("tamper, needles", CASES.values(), ids=CASES.keys())
def test_rehashed_tampered_model_is_refused_before_writing(capsys, model, tmp_path, tamper, needles):
    folder = tampered(model, tmp_path, tamper)
    out = tmp_path / "synth"
    assert_refused(*cli(capsys, "synthesize", "--n", "3", "--out", out, "--model", folder), needles)
    assert not out.exists()


@pytest.mark.parametrize("hashes", [b"[]", b'{"model.pt": 1}', b"not json", DEEP], ids=["list", "not strings", "not json", "deep"])
def test_damaged_hashes_are_refused(capsys, model, tmp_path, hashes):
    folder = shutil.copytree(model, tmp_path / "model")
    (folder / "hashes.json").write_bytes(hashes)
    out = tmp_path / "synth"
    assert_refused(*cli(capsys, "synthesize", "--n", "3", "--out", out, "--model", folder), ["hashes.json"])
    assert not out.exists()


def test_every_command_reading_a_model_refuses_it(capsys, model, tiny_models, tmp_path):
    synth = tmp_path / "synth"
    assert cli(capsys, "synthesize", "--n", "2", "--out", synth, "--model", model)[0] == 0
    (synth / "preview.png").unlink()
    folder = tampered(model, tmp_path, CASES["assignment repeats"][0])
    image = next(synth.rglob("*.nii.gz"))
    scans = tiny_models.scans
    report = tmp_path / "report"
    for args in (("reproduce", image, "--model", folder), ("preview", synth, "--with-reconstructions", folder, "--out", tmp_path / "recon.png"),
                 ("evaluate", "--real", scans, "--synth", synth, "--model", folder, "--out", report)):
        assert_refused(*cli(capsys, *args), ["assignment.npy"])
    assert not (synth / "preview.png").exists() and not report.exists() and not (tmp_path / "recon.png").exists()
