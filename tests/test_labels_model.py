"""Labelled NeuroSQL: one generator for the image and its tissue labels, one assignment for both, dseg files out."""
import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from support import LABEL_NAMES, TINY_EPOCHS, bids_errors, relative_files, tissue_cohort, write_subjects
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.decoder import Decoder, split_output
from neurosql_med.engine.losses import ReconstructionLoss, label_loss, pairwise_label_loss
from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.io.nifti import read_labels, read_sample
from neurosql_med.synthesis.dataset import SyntheticDataset
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit

NAMES = ["background", "CSF", "GM", "WM"]
T1W = "sub-synth{0:04d}/anat/sub-synth{0:04d}_desc-nsql_T1w.nii.gz"
DSEG = "sub-synth{0:04d}/anat/sub-synth{0:04d}_desc-nsql_dseg.nii.gz"


def labelled(cohort):
    """Tissue classes from intensity thresholds: background, a dark 'CSF' rim and hole, 'GM', bright 'WM'."""
    labels = torch.bucketize(cohort.images, torch.tensor([0.05, 0.4, 0.75]))
    return dataclasses.replace(cohort, labels=labels, label_names=NAMES)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return write_subjects(tmp_path_factory.mktemp("scans"), 6)


@pytest.fixture
def model_dir(tiny_models):
    """A labelled tiny fit: its classes are LABEL_NAMES, cut from the images by intensity."""
    return tiny_models.get("tiny", "labelled")


def run(model_dir, out, n=10, **kw):
    return synthesize(SynthesizeOptions(model=model_dir, out=out, n=n, device="cpu", **kw), show_progress=False)


@pytest.mark.parametrize("shape", [(12, 14), (8, 9, 10)])
def test_pairwise_label_cost_equals_the_loss_of_each_pair(shape):
    torch.manual_seed(0)
    loss = ReconstructionLoss(len(shape), window=5, label_weight=0.7)
    images, labels = torch.rand(4, 1, *shape), torch.randint(0, 4, (4, 1, *shape))
    outputs = torch.cat([torch.rand(5, 1, *shape), 3 * torch.randn(5, 4, *shape)], dim=1)
    direct = torch.stack([loss(outputs[j:j + 1].expand(4, -1, *shape), images, labels) for j in range(5)], dim=1)
    torch.testing.assert_close(loss.pairwise(outputs, images, labels), direct, atol=1e-5, rtol=0)
    labels_only = torch.stack([label_loss(outputs[j:j + 1, 1:].expand(4, -1, *shape), labels) for j in range(5)], dim=1)
    torch.testing.assert_close(pairwise_label_loss(outputs[:, 1:], labels), labels_only, atol=1e-5, rtol=0)


def test_a_perfect_label_prediction_costs_almost_nothing():
    labels = torch.randint(0, 3, (2, 1, 6, 7))
    logits = 50 * torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    cost = pairwise_label_loss(logits, labels)
    assert cost.diagonal().max() < 1e-4 and cost[0, 1] > 1  # a code is matched to its own anatomy


def test_labelled_decoder_outputs_image_and_logits_from_the_mean_anatomy():
    labels = torch.randint(0, 4, (10, 1, 12, 16))
    decoder = Decoder(2, 3, (12, 16), [8, 4], num_labels=4)
    decoder.init_label_template(labels)
    out = decoder(torch.randn(2, 3))
    image, logits = split_output(out)
    assert out.shape == (2, 5, 12, 16) and image.min() >= 0 and image.max() <= 1 and logits.shape[1] == 4
    frequency = decoder.label_template.exp()[0]
    torch.testing.assert_close(frequency.sum(0), torch.ones(12, 16))
    unlabelled = Decoder(2, 3, (12, 16), [8, 4])
    assert "label_template" not in dict(unlabelled.named_parameters()) and split_output(unlabelled(torch.randn(1, 3)))[1] is None


def test_label_template_is_the_log_class_frequency():
    labels = torch.zeros(4, 1, 2, 2, dtype=torch.int64)
    labels[:3, 0, 0, 0] = 1  # voxel (0, 0): class 1 in 3 of 4 samples
    decoder = Decoder(2, 2, (2, 2), [4], num_labels=2)
    decoder.init_label_template(labels)
    assert decoder.label_template.exp()[0, :, 0, 0].tolist() == pytest.approx([1.5 / 5, 3.5 / 5])


@pytest.mark.slow
@pytest.mark.parametrize("config, epochs", [("tiny", 12), ("tiny3d", 20)])
def test_a_labelled_fit_lowers_both_loss_terms(scans, tmp_path, config, epochs):
    cfg = override(load_config(config), train__epochs=epochs)
    result = fit(labelled(load_cohort(scans, cfg.data)), cfg, tmp_path / "m", show_progress=False)
    first, last = result.history[0], result.history[-1]
    w = cfg.loss.ssim_weight
    image_loss = [r["l1"] + w * (1 - r["ssim"]) for r in (first, last)]
    assert image_loss[1] < image_loss[0] / 1.2  # stated factors: measured 3.1 (2D) and 1.4 (3D) for the image loss,
    assert last["label_loss"] < first["label_loss"] / 1.3  # 1.65 and 1.67 for the label loss
    assert last["dice"] > first["dice"] and set(last["dice_per_class"]) == set(NAMES)
    assert json.loads((tmp_path / "m/labels.json").read_text())["names"] == NAMES
    model = load_model(tmp_path / "m")
    assert model.label_names == NAMES and model.reconstructed_labels().shape == model.reconstructions().shape


@pytest.mark.slow
def test_labelled_resume_equals_uninterrupted(tiny_models, tmp_path):
    """Cut after its second epoch and resumed: the bytes of the shared labelled tiny model, fitted in one go."""
    cfg = override(load_config("tiny"), train__epochs=TINY_EPOCHS, train__device="cpu")
    cohort = tissue_cohort(load_cohort(tiny_models.scans, cfg.data))
    whole, part = tiny_models.get("tiny", "labelled"), tmp_path / "part"

    def ctrl_c_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    assert fit(cohort, cfg, part, show_progress=False, on_epoch_end=ctrl_c_after_epoch_2).epochs == 2 < TINY_EPOCHS
    with pytest.raises(UserError, match="or their label maps"):
        fit(dataclasses.replace(cohort, labels=None, label_names=None), cfg, part, resume=True, show_progress=False)
    fit(cohort, cfg, part, resume=True, show_progress=False)
    for name in ("model.pt", "assignment.npy", "labels.json", "hashes.json"):
        assert (whole / name).read_bytes() == (part / name).read_bytes(), name
    fit(cohort, override(cfg, train__epochs=1), part, force=True, show_progress=False)  # labels.json is ours


def test_label_maps_that_do_not_fit_are_refused(scans, tmp_path):
    cfg = override(load_config("tiny"), train__epochs=1)
    cohort = labelled(load_cohort(scans, cfg.data))
    with pytest.raises(UserError, match="only 3 names"):
        fit(dataclasses.replace(cohort, label_names=NAMES[:3]), cfg, tmp_path / "a", show_progress=False)
    with pytest.raises(UserError, match="do not match the images"):
        fit(dataclasses.replace(cohort, labels=cohort.labels[:, :, :5]), cfg, tmp_path / "b", show_progress=False)


@pytest.mark.slow
def test_a_model_folder_without_its_labels_is_refused(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "m")
    (copy / "labels.json").unlink()
    with pytest.raises(UserError, match="labels.json is missing"):
        load_model(copy)
    hashes = json.loads((copy / "hashes.json").read_text())
    del hashes["labels.json"]
    (copy / "hashes.json").write_text(json.dumps(hashes))
    with pytest.raises(UserError, match="no label classes"):
        load_model(copy)
    (copy / "labels.json").write_text(json.dumps({"names": list(LABEL_NAMES)}))
    with pytest.raises(UserError, match="not recorded in hashes.json"):
        load_model(copy)


@pytest.mark.slow
def test_every_sample_gets_a_dseg_on_its_image_grid(model_dir, tmp_path):
    out = tmp_path / "s"
    run(model_dir, out, n=5, seed=3)
    names = relative_files(out)
    assert (out / "dseg.tsv").read_text() == "index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(LABEL_NAMES))
    for k in range(1, 6):
        assert T1W.format(k) in names and DSEG.format(k) in names
    image, dseg = nib.load(out / T1W.format(2)), nib.load(out / DSEG.format(2))
    assert dseg.get_data_dtype() == np.uint8 and dseg.shape == image.shape
    assert np.array_equal(dseg.affine, image.affine) and np.array_equal(dseg.header.get_sform(), image.header.get_sform())
    assert set(np.unique(np.asarray(dseg.dataobj))) <= set(range(len(LABEL_NAMES))) and len(np.unique(np.asarray(dseg.dataobj))) > 1
    side = json.loads((out / DSEG.format(2)).with_suffix("").with_suffix(".json").read_text())
    assert side["ImageSha256"] == __import__("hashlib").sha256((out / DSEG.format(2)).read_bytes()).hexdigest()
    assert side["SpatialReference"] == f"bids::{T1W.format(2)}" and side["NeuroSQL"]["index"] == 2
    manifest = (out / "manifest.tsv").read_text().splitlines()
    assert len(manifest) == 1 + 2 * 5 and manifest[2].startswith(DSEG.format(1))
    assert (out / "preview.png").is_file()


@pytest.mark.slow
def test_same_bytes_and_reproduce_checks_the_dseg(model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(model_dir, a, n=9, seed=5, batch_size=8)
    run(model_dir, b, n=9, seed=5, batch_size=64)
    assert relative_files(a) == relative_files(b)
    for name in relative_files(a):
        if name.endswith((".nii.gz", ".json", ".tsv")) and name != "dataset_description.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    identical, _, _ = reproduce(a / T1W.format(9), model_dir)
    assert identical
    assert reproduce(a / DSEG.format(9), model_dir)[0]  # a dseg is checked through its image
    dseg = a / DSEG.format(9)
    data = np.asarray(nib.load(dseg).dataobj).copy()
    data.flat[0] = (data.flat[0] + 1) % len(LABEL_NAMES)  # one voxel of another class
    changed = nib.Nifti1Image(data, nib.load(dseg).affine, nib.load(dseg).header)
    nib.save(changed, dseg)
    identical, recorded, fresh = reproduce(a / T1W.format(9), model_dir)
    assert not identical and "dseg" in recorded and recorded.split()[0] == fresh.split()[0]


@pytest.mark.slow
def test_reproduce_cli_says_different_for_a_changed_dseg(model_dir, tmp_path, capsys):
    from support import cli

    out = tmp_path / "s"
    run(model_dir, out, n=2, seed=1)
    code, stdout, _ = cli(capsys, "reproduce", out / T1W.format(2), "--model", model_dir)
    assert code == 0 and "identical" in stdout
    dseg = out / DSEG.format(2)
    dseg.unlink()
    code, _, err = cli(capsys, "reproduce", out / T1W.format(2), "--model", model_dir)
    assert code == 2 and "dseg" in err and "missing" in err
    shutil.copy(out / DSEG.format(1), dseg)  # another sample's labels in its place
    code, stdout, _ = cli(capsys, "reproduce", out / T1W.format(2), "--model", model_dir)
    assert code == 1 and "DIFFERENT" in stdout


@pytest.mark.slow
def test_resume_after_a_crash_completes_both_files(model_dir, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "crashed"
    run(model_dir, whole, n=10)
    run(model_dir, out, n=10)
    # killed part-way: a dseg missing, a dseg sidecar missing, a dseg truncated, a T1w sidecar not yet written
    (out / DSEG.format(3)).unlink()
    (out / DSEG.format(4)).with_suffix("").with_suffix(".json").unlink()
    broken = out / DSEG.format(6)
    broken.write_bytes(broken.read_bytes()[:60])
    (out / T1W.format(9)).with_suffix("").with_suffix(".json").unlink()
    (out / "manifest.tsv").unlink()
    summary = run(model_dir, out, n=10, resume=True)
    assert summary.written == 4 and summary.kept == 6
    assert relative_files(out) == relative_files(whole)
    for name in relative_files(whole):
        if name.endswith(".nii.gz") or name == "manifest.tsv":
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.slow
def test_force_replaces_a_labelled_cohort(model_dir, tmp_path):
    out, fresh = tmp_path / "s", tmp_path / "fresh"
    run(model_dir, out, n=2, seed=1)
    run(model_dir, out, n=3, force=True)
    run(model_dir, fresh, n=3)
    assert relative_files(out) == relative_files(fresh) and DSEG.format(3) in relative_files(out)
    for name in relative_files(fresh):  # seed 1's images and label maps are all gone, none left beside seed 0's
        if name.endswith((".nii.gz", ".tsv")):
            assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


@pytest.mark.slow
def test_synthetic_dataset_items_carry_the_written_labels(model_dir, tmp_path):
    out = tmp_path / "s"
    run(model_dir, out, n=4, seed=2)
    ds = SyntheticDataset(model_dir, n=4, seed=2)
    for i in (0, 3):
        item = ds[i]
        assert item["label"].dtype == torch.int64 and item["label"].shape == item["image"].shape == (1, 24, 32)
        assert torch.equal(item["label"].affine, item["image"].affine)
        assert np.array_equal(item["label"][0].numpy(), read_labels(out / DSEG.format(i + 1))[:, :, 0])
        assert np.abs(item["image"][0].numpy() - read_sample(out / T1W.format(i + 1))[:, :, 0]).max() <= 1 / 4095


@pytest.mark.slow
@pytest.mark.processes
def test_bids_validator_accepts_a_labelled_cohort(model_dir, tmp_path):
    out = tmp_path / "bids"
    run(model_dir, out, n=3)
    assert bids_errors(out) == []
