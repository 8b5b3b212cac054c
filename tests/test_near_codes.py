"""--near-codes S: latents drawn near the training codes (a code picked at random plus S * N(0, I))."""
import json

import numpy as np
import pytest
import torch
from scipy import stats

from support import cli
from neurosql_med.engine.lattice import near_code_draws, quantile_lattice, reference_draws
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.errors import UserError
from neurosql_med.evaluation.utility.synthetic import draw
from neurosql_med.io.dicom import identity
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.dataset import SyntheticDataset
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.synthesize import synthesize

D, SCALE = 16, 0.6


def nearest(z: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each latent's distance to its nearest code."""
    return np.linalg.norm(z[:, None] - codes[None], axis=2).min(axis=1)


def test_draw_k_is_a_function_of_seed_and_k_alone():
    codes = quantile_lattice(40, D)
    z, rows = near_code_draws(codes, np.arange(1, 33), SCALE, 7, "gaussian")
    again, rows_again = near_code_draws(codes, np.arange(20, 25), SCALE, 7, "gaussian")
    assert np.array_equal(z[19:24], again) and np.array_equal(rows[19:24], rows_again)
    other, _ = near_code_draws(codes, np.arange(1, 33), SCALE, 8, "gaussian")
    assert not np.allclose(z, other)
    assert len(set(rows.tolist())) > 15  # codes are picked across the pool, not one


def test_draws_sit_at_scale_times_root_d_from_their_code_and_far_closer_than_fresh_ones():
    codes = quantile_lattice(40, D)
    z, rows = near_code_draws(codes, np.arange(1, 401), SCALE, 0, "gaussian")
    offsets = np.linalg.norm(z - codes[rows], axis=1)
    assert abs(offsets.mean() - SCALE * np.sqrt(D)) < 0.05 * SCALE * np.sqrt(D)
    fresh, _ = reference_draws(np.arange(1, 401), D, "gaussian", 0)
    assert nearest(z, codes).mean() < 0.7 * nearest(fresh, codes).mean()  # 2.4 against 3.8 at d = 16


def test_a_uniform_kind_model_is_drawn_near_in_the_gaussian_space():
    """A uniform-kind code is its Gaussian twin's copula: its draws are the Gaussian draws' copula."""
    z, rows = near_code_draws(quantile_lattice(40, D, "uniform"), np.arange(1, 101), SCALE, 0, "uniform")
    gaussian, gaussian_rows = near_code_draws(quantile_lattice(40, D), np.arange(1, 101), SCALE, 0, "gaussian")
    assert np.array_equal(rows, gaussian_rows) and np.allclose(z, stats.norm.cdf(gaussian))
    assert ((0 < z) & (z < 1)).all()


def run(model_dir, out, n, **kw):
    return synthesize(SynthesizeOptions(model=model_dir, out=out, n=n, device="cpu", **kw), show_progress=False)


def sidecars(out):
    return {p.name: json.loads(p.read_text())["NeuroSQL"] for p in sorted(out.rglob("sub-*_T1w.json"))}


@pytest.mark.slow
def test_synthesize_near_codes_records_reproduces_and_keeps_sample_k(tiny_models, tmp_path):
    model_dir = tiny_models.get("tiny")
    run(model_dir, tmp_path / "a", n=11, near_codes=SCALE, seed=2, format="both")
    run(model_dir, tmp_path / "b", n=3, near_codes=SCALE, seed=2, batch_size=1)
    a, b = ([line for line in (tmp_path / x / "manifest.tsv").read_text().splitlines() if "/anat/" in line] for x in "ab")
    assert len(b) == 3 and b == a[:3]

    model = load_model(model_dir, "cpu")
    codes = model.lattice[model.assignment]
    infos = list(sidecars(tmp_path / "a").values())
    assert len(infos) == 11 and all(info["near_codes"] == SCALE and 0 <= info["code_index"] < len(codes) for info in infos)
    offsets = [np.linalg.norm(np.asarray(info["latent"]) - codes[info["code_index"]]) for info in infos]
    assert 0.5 < np.mean(offsets) / (SCALE * np.sqrt(model.latent_dim)) < 1.5  # a code's own neighbourhood

    image = tmp_path / "a/sub-synth0009/anat/sub-synth0009_desc-nsql_T1w.nii.gz"
    assert reproduce(image, model_dir)[0] and reproduce(tmp_path / "a/sub-synth0009/dicom", model_dir)[0]
    side = image.with_name(image.name.replace(".nii.gz", ".json"))
    record = json.loads(side.read_text())
    side.write_text(json.dumps({**record, "NeuroSQL": {**record["NeuroSQL"], "near_codes": 7}}))
    with pytest.raises(UserError, match=r"NeuroSQL.near_codes must be a number in \(0, 3\]"):
        reproduce(side, model_dir)
    side.write_text(json.dumps(record))
    item = SyntheticDataset(model_dir, n=11, seed=2, near_codes=SCALE)[8]
    assert np.allclose(item["latent"].numpy(), sidecars(tmp_path / "a")[image.name.replace(".nii.gz", ".json")]["latent"],
                       atol=1e-6)
    assert item["code_index"] == sidecars(tmp_path / "a")[image.name.replace(".nii.gz", ".json")]["code_index"]


@pytest.mark.slow
def test_an_audit_redraw_near_codes_is_recorded_and_reproduced(tiny_models, tmp_path):
    model_dir, scans = tiny_models.get("tiny"), tiny_models.scans
    ratios = sorted(run(model_dir, tmp_path / "s", n=4, near_codes=SCALE, audit=scans).audit["ratios"].items(),
                    key=lambda item: item[1])
    tau = (ratios[0][1] + ratios[1][1]) / 2  # flags the sample nearest a training image, and only it
    dropped = run(model_dir, tmp_path / "t", n=4, near_codes=SCALE, audit=scans, drop_copies=True, tau=tau).audit
    assert [r["sample"] for r in dropped["replaced"]] == [ratios[0][0]]
    image = next((tmp_path / "t" / ratios[0][0] / "anat").glob("*_T1w.nii.gz"))
    info = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())["NeuroSQL"]
    assert info["latent_index"] > 4 and "code_index" in info and reproduce(image, model_dir)[0]


def test_a_draw_near_codes_never_shares_a_fresh_draws_dicom_uids():
    info = {"model_sha256": "m", "seed": 0, "index": 1, "latent_index": 1, "max_typicality": 1.0}
    fresh = identity({"NeuroSQL": info}, "synth0001")
    assert fresh == ("nsql-med", "m", None, 0, 1.0, None, None, 1, 1, "synth0001")  # as before --near-codes
    assert identity({"NeuroSQL": {**info, "near_codes": SCALE}}, "synth0001") != fresh


@pytest.mark.slow
def test_fresh_draws_record_no_near_codes(tiny_models, tmp_path):
    run(tiny_models.get("tiny"), tmp_path / "fresh", n=2)
    assert not any({"near_codes", "code_index"} & set(info) for info in sidecars(tmp_path / "fresh").values())


@pytest.mark.parametrize("args, needle", [
    (("--near-codes", "0"), "--near-codes must be in (0, 3]"),
    (("--near-codes", "3.5"), "--near-codes must be in (0, 3]"),
    (("--near-codes", "0.6", "--typicality", "0.5"), "exclude each other"),
])
def test_bad_near_codes_are_one_error_line(capsys, tmp_path, args, needle):
    code, _, err = cli(capsys, "synthesize", "--n", "2", "--out", tmp_path / "o", "--model", tmp_path / "none", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_conditional_models_refuse_near_codes(tiny_models, capsys, tmp_path):
    code, _, err = cli(capsys, "synthesize", "--n", "2", "--out", tmp_path / "o", "--model",
                       tiny_models.get("tiny", "conditional"), "--near-codes", "0.6", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --near-codes") and "conditional" in lines[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_stack_is_drawn_near_a_subjects_code(tiny_models, tmp_path):
    model_dir = tiny_models.get("tiny", "stacks")
    run(model_dir, tmp_path / "s", n=3, near_codes=SCALE)
    model = load_model(model_dir, "cpu")
    stacks = np.unique(model.assignment, return_index=True)[1]  # each subject's first slice stands for its code
    images = sorted((tmp_path / "s").rglob("sub-*_T1w.nii.gz"))
    for image in images:
        info = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())["NeuroSQL"]
        assert info["near_codes"] == SCALE and info["code_index"] in stacks
    assert reproduce(images[0], model_dir)[0]


@pytest.mark.slow
def test_utility_cases_near_codes_are_the_draws_near_the_models_codes(tiny_models):
    model = load_model(tiny_models.get("tiny"))
    z, rows = near_code_draws(model.lattice[model.assignment], np.arange(5), SCALE, 3, model.lattice_kind)
    images, labels = draw(model, 5, 3, SCALE)
    expected, expected_labels = model.sample(z, texture_seeds(3, np.arange(5)))
    assert torch.equal(images, expected) and (expected_labels is None or torch.equal(labels, expected_labels))
    assert not torch.equal(draw(model, 5, 3)[0], images)  # fresh reference draws are other cases


def test_utility_near_codes_is_refused_for_covariate_tasks(capsys, tmp_path):
    code, _, err = cli(capsys, "utility", tmp_path, "--task", "regress:age", "--near-codes", "0.6", "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--near-codes is for --task segment" in lines[0], err
    assert not (tmp_path / "o").exists()
