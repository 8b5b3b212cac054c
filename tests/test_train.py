"""The NeuroSQL trainer and the model folder it writes."""
import json
import pickle

import numpy as np
import pytest
import torch

from support import TINY_EPOCHS, write_subjects
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.errors import UserError
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.io.model import FORMAT, load_checkpoint, load_model
from neurosql_med.training.train import epoch_lr, fit


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = write_subjects(tmp_path_factory.mktemp("scans"), 6)
    return root


@pytest.fixture(scope="module")
def cohort2d(scans):
    return load_cohort(scans, load_config("tiny").data)


def tiny(name="tiny", **changes):
    return override(load_config(name), **changes)


@pytest.mark.slow
def test_2d_fit_lowers_loss_and_writes_model_folder(cohort2d, tmp_path):
    out = tmp_path / "model"
    result = fit(cohort2d, tiny(train__epochs=12), out, show_progress=False)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0] / 2, losses  # stated factor: at least halved in 12 tiny epochs
    for name in ("model.pt", "config.yaml", "lattice.npy", "assignment.npy", "geometry.json",
                 "data_fingerprint.json", "history.jsonl", "loss.png", "recon.png", "hashes.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    assert {"loss", "ssim", "seconds"} <= set(rows[0]) and "changed_fraction" in rows[1]
    perm = np.load(out / "assignment.npy")
    assert sorted(perm.tolist()) == list(range(len(cohort2d)))
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())
    assert fingerprint["n_scans"] == 6 and "sub-" not in json.dumps(fingerprint)
    model = load_model(out)
    assert model.reconstructions().shape == cohort2d.images.shape


@pytest.mark.slow
def test_3d_fit_beats_the_mean_image_it_starts_from(scans, tmp_path):
    cohort = load_cohort(scans, load_config("tiny3d").data)
    cfg = tiny("tiny3d", train__epochs=30)
    result = fit(cohort, cfg, tmp_path / "m3", show_progress=False)
    loss = ReconstructionLoss(3, cfg.loss.ssim_weight, cfg.loss.ssim_window)
    mean_image = loss(cohort.images.mean(0, keepdim=True).expand_as(cohort.images), cohort.images).mean().item()
    assert result.history[0]["loss"] > 0.95 * mean_image  # the decoder starts at the mean (its template)
    assert result.history[-1]["loss"] < mean_image / 1.5  # stated factor: measured 1.85 in 30 tiny epochs


@pytest.mark.slow
def test_same_seed_same_model(tiny_models, tmp_path):
    """A fit here gives the bytes of the shared tiny model, fitted with the same settings (maybe in another process)."""
    cfg = tiny(train__epochs=TINY_EPOCHS, train__device="cpu")
    again = fit(load_cohort(tiny_models.scans, cfg.data), cfg, tmp_path / "again", show_progress=False)
    shared = tiny_models.get("tiny")
    for name in ("model.pt", "assignment.npy", "texture.pt"):
        assert (tmp_path / "again" / name).read_bytes() == (shared / name).read_bytes(), name
    assert again.model_sha256 == json.loads((shared / "hashes.json").read_text())["model.pt"]


@pytest.mark.slow
def test_interrupt_then_resume_equals_uninterrupted(cohort2d, tmp_path):
    cfg = tiny(train__epochs=5)
    whole = fit(cohort2d, cfg, tmp_path / "whole", show_progress=False)

    def ctrl_c_after_epoch_3(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    part = fit(cohort2d, cfg, tmp_path / "part", show_progress=False, on_epoch_end=ctrl_c_after_epoch_3)
    assert part.interrupted and part.epochs == 3
    assert not (tmp_path / "part/hashes.json").exists()
    with pytest.raises(UserError, match="incomplete model folder"):
        load_model(tmp_path / "part")
    done = fit(cohort2d, cfg, tmp_path / "part", resume=True, show_progress=False)
    assert done.epochs == 5
    a, b = (load_checkpoint(tmp_path / p / "model.pt") for p in ("whole", "part"))
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    assert np.array_equal(np.load(tmp_path / "whole/assignment.npy"), np.load(tmp_path / "part/assignment.npy"))
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in done.history]


@pytest.mark.slow
def test_output_folder_refusals(cohort2d, tmp_path):
    cfg = tiny(train__epochs=1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt, which nsql-med did not write"):
        fit(cohort2d, cfg, busy, show_progress=False)
    model = tmp_path / "model"
    fit(cohort2d, cfg, model, show_progress=False)
    with pytest.raises(UserError, match="already holds a model"):
        fit(cohort2d, cfg, model, show_progress=False)
    with pytest.raises(UserError, match="--resume: .* no nsql-med checkpoint"):
        fit(cohort2d, cfg, busy, resume=True, show_progress=False)
    assert fit(cohort2d, cfg, model, force=True, show_progress=False).epochs == 1


def test_epoch_schedule_warms_up_over_five_epochs_then_decays_to_five_percent():
    factor = epoch_lr(20)
    assert [factor(e) for e in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(factor(e) > factor(e + 1) for e in range(5, 20))
    assert factor(10) == pytest.approx(0.7625)  # a third of the way down the cosine: 0.05 + 0.95 (1 + cos 60°) / 2
    assert factor(20) == pytest.approx(0.05) and factor(25) == factor(20)
    assert epoch_lr(5)(5) == 1.0  # a run no longer than its warm-up ends at the full rate, without dividing by zero


def test_pickled_checkpoint_is_refused_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    bad = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "generator": Evil()}, bad)
    with pytest.raises(UserError, match="pickled objects"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "junk.pt")


def test_checkpoint_of_another_version_is_refused_clearly(tmp_path):
    old = tmp_path / "model.pt"
    torch.save({"format": "nsql-med/1", "generator": {"w": torch.zeros(2)}}, old)
    with pytest.raises(UserError, match="another nsql-med version .* fit the model again"):
        load_checkpoint(old)
    torch.save({"format": "other-tool/1", "generator": {}}, old)
    with pytest.raises(UserError, match="not an nsql-med checkpoint"):
        load_checkpoint(old)


@pytest.mark.slow
def test_tampered_model_is_refused(tiny_models, tmp_path):
    out = tiny_models.copy("tiny", "plain", tmp_path / "model")
    load_model(out)
    lattice = np.load(out / "lattice.npy")
    np.save(out / "lattice.npy", lattice + 1)
    with pytest.raises(UserError, match="lattice.npy: does not match"):
        load_model(out)
