"""Subject codes (model.subject_codes): one code per training scan, an exact LAP over stacks, stacks as samples."""
from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from support import bids_errors, synthesize_on_cpu, tissue_cohort
from neurosql_med.config import AssignmentConfig, load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.assignment import AssignmentProblem
from neurosql_med.engine.decoder import Decoder
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.engine.stacks import Stacks, slice_grid
from neurosql_med.engine.strata import Strata, assign_stratified
from neurosql_med.errors import UserError
from neurosql_med.evaluation.evaluate import evaluate
from neurosql_med.evaluation.options import EvaluateOptions
from neurosql_med.evaluation.slices import group_stacks, stack_coherence
from neurosql_med.io.nifti import read_labels, read_sample
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.audit import audit_cohort
from neurosql_med.synthesis.dataset import SyntheticDataset
from neurosql_med.synthesis.sampling import Draw, Synthesis, dseg_of, sidecar_of, write_with_sidecar
from neurosql_med.io.model import load_model, write_hashes
from neurosql_med.training.conditions import training_conditions

SUBJECTS = dict(model__slice_levels=2, model__subject_codes=True)


@pytest.fixture(scope="module")
def scans(tiny_models):
    """The tiny models' 5 subjects."""
    return tiny_models.scans


@pytest.fixture(scope="module")
def subject_model(tiny_models):
    """The tiny labelled model with subject codes (support.TinyModels' "stacks" kind)."""
    return tiny_models.get("tiny", "stacks")


def test_subject_codes_need_slice_levels():
    with pytest.raises(UserError, match="model.subject_codes"):
        override(load_config("tiny"), model__subject_codes=True)
    with pytest.raises(UserError, match="model.slice_levels"):
        override(load_config("tiny3d"), model__slice_levels=2, model__subject_codes=True)
    plain = load_config("tiny")
    assert override(plain, model__subject_codes=False).digest() == plain.digest()  # off: the config hash is kept


def test_stacks_group_slices_by_scan_in_order():
    stacks = Stacks.of_scans(["b", "b", "a", "a", "a", "c"])
    assert stacks.of.tolist() == [0, 0, 1, 1, 1, 2] and stacks.first.tolist() == [0, 2, 5]
    slices, groups = stacks.members(np.array([2, 0]))
    assert slices.tolist() == [0, 1, 5] and groups.tolist() == [1, 1, 0]
    assert stacks.positions().tolist() == [0, 1, 0, 1, 2, 0]
    assert slice_grid(np.array([0.2, 0.6, 0.3, 0.5, 0.9, 0.4]), stacks) == (0.3, 0.55)  # 2 slices: the median stack


def test_strata_and_lattice_are_per_stack(scans):
    cfg = override(load_config("tiny"), **SUBJECTS)
    cohort = load_cohort(scans, cfg.data)
    conditioned = training_conditions(cohort, cfg)
    assert conditioned.stacks.count == len(set(cohort.scan_ids)) == 5 < len(cohort)
    assert [len(r) for r in conditioned.strata.rows] == [5]  # one stratum of stacks: a code serves every level
    assert len(torch.unique(conditioned.cost[:, 0])) == 2  # costs still decode each level stratum once
    assert len(conditioned.levels.grid) == 5 and conditioned.levels.low <= min(conditioned.levels.grid)


@pytest.mark.slow
def test_every_slice_of_a_subject_takes_its_subjects_code(subject_model):
    model = load_model(subject_model)
    stacks = Stacks.of_scans([s for s in np.repeat(np.arange(5), 5).astype(str)])  # the 5 x 5 slices, in scan order
    assert len(model.lattice) == 5 and len(model.assignment) == 25
    codes = model.assignment.reshape(5, 5)
    assert (codes == codes[:, :1]).all()  # one code per subject, shared by its slices
    assert sorted(codes[:, 0]) == list(range(5))  # a permutation over subjects
    assert np.array_equal(model.assignment, codes[:, 0][stacks.of])


def test_the_stack_lap_is_exact_against_brute_force():
    torch.manual_seed(3)
    generator = Decoder(2, 3, (12, 14), [8, 4])  # reads (u, p): a 2-d code and a level
    lattice = torch.tensor(quantile_lattice(4, 2), dtype=torch.float32)
    stacks = Stacks.of_scans(["s0", "s0", "s0", "s1", "s1", "s2", "s2", "s2", "s3", "s3"])
    levels = torch.tensor([[-1.0], [0.0], [1.0], [-0.5], [0.5], [-1.0], [0.0], [1.0], [-0.5], [0.5]])
    truth = torch.tensor([2, 0, 3, 1])[stacks.of]  # each stack made from one code, plus noise
    with torch.no_grad():
        images = (generator(torch.cat([lattice[truth], levels], 1))[:, :1] + 0.1 * torch.randn(10, 1, 12, 14)).clamp(0, 1)
    loss = ReconstructionLoss(2, 0.8, 7)
    problem = AssignmentProblem(generator, lattice, images, loss, AssignmentConfig(cost="loss"), 4, "cpu")
    result = assign_stratified(problem, levels, Strata.of([()] * 4), None, 0, stacks)
    costs = np.zeros((4, 4))  # stack a under code j: the sum of its slices' training losses, one image at a time
    with torch.no_grad():
        for j in range(4):
            decoded = generator(torch.cat([lattice[j].expand(10, -1), levels], 1))
            per_slice = loss.combined(*loss.terms(decoded, images, None)).numpy()
            np.add.at(costs[:, j], stacks.of, per_slice)
    best = min(itertools.permutations(range(4)), key=lambda p: costs[np.arange(4), p].sum())
    assert tuple(result.perm) == best
    assert result.total_cost == pytest.approx(costs[np.arange(4), best].sum(), rel=1e-4)


@pytest.fixture(scope="module")
def stacks_cohort(subject_model, tmp_path_factory):
    """Three synthetic subjects of the tiny model with subject codes, written once for this module."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    synthesize_on_cpu(subject_model, out, n=3, seed=2, format="both")
    return out


@pytest.mark.slow
def test_each_synthetic_subject_is_one_volume_with_its_label_volume(subject_model, stacks_cohort, tmp_path):
    model = load_model(subject_model)
    grid, stride = model.levels.grid, model.config.data.slice_stride
    images = sorted(stacks_cohort.glob("sub-*/anat/*_T1w.nii.gz"))
    assert [p.parent.parent.name for p in images] == ["sub-synth0001", "sub-synth0002", "sub-synth0003"]
    for path in images:
        image, dseg = nib.load(path), nib.load(dseg_of(path))
        assert image.shape == dseg.shape == (24, 32, len(grid))  # the slices stacked along data.slice_axis (2)
        assert image.header.get_zooms() == (6.0, 6.0, 6.0 * stride) and np.allclose(image.affine, dseg.affine)
        assert json.loads(sidecar_of(path).read_text())["NeuroSQL"]["slice_levels"] == list(grid)
        assert len(list((path.parent.parent / "dicom").glob("*_T1w_*.dcm"))) == len(grid)  # one instance a slice
    again = synthesize_on_cpu(subject_model, tmp_path / "again", n=3, seed=2, format="both")
    assert again.written == 3
    assert (tmp_path / "again" / "manifest.tsv").read_bytes() == (stacks_cohort / "manifest.tsv").read_bytes()
    assert reproduce(sidecar_of(images[1]), subject_model)[0]
    assert bids_errors(stacks_cohort) == []


@pytest.mark.slow
def test_the_dataset_yields_the_stacks_synthesize_writes(subject_model, stacks_cohort):
    dataset = SyntheticDataset(subject_model, n=3, seed=2)
    item = dataset[1]
    written = stacks_cohort / "sub-synth0002" / "anat" / "sub-synth0002_desc-nsql_T1w.nii.gz"
    assert item["image"].shape == (1, *nib.load(written).shape) and item["label"].shape == item["image"].shape
    assert np.allclose(item["image"][0].numpy(), read_sample(written), atol=0.5 / 4095)
    assert np.allclose(item["image"].affine.numpy(), nib.load(written).affine)


@pytest.mark.slow
def test_stacks_refuse_levels(subject_model, tmp_path):
    with pytest.raises(UserError, match="--levels"):
        synthesize_on_cpu(subject_model, tmp_path / "a", n=1, levels="0.5")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_the_audit_flags_a_stack_with_a_copied_slice_and_redraws_it(subject_model, scans, tmp_path):
    out = tmp_path / "s"
    checked = synthesize_on_cpu(subject_model, out, n=3, audit=scans).audit
    assert checked["n_checked"] == 3 and checked["n_flagged"] == 0
    job = Synthesis(load_model(subject_model), 3, 0, 1.0)
    train = load_cohort(scans, job.model.config.data).images
    stack = torch.from_numpy(read_sample(job.image_path(out, 2)))[None]
    stack[..., 1] = train[7, 0]  # one slice of the stack is a training slice
    write_with_sidecar(out, job, 2, Draw(stack, np.zeros(4), 0.0, latent_index=2))
    report = audit_cohort(out, job, train, tau=0.5, drop=True)
    assert report["flagged"] == ["sub-synth0002"] and report["n_remaining_copies"] == 0
    assert reproduce(job.image_path(out, 2), subject_model)[0]  # the redraw, from its recorded latent index


@pytest.mark.slow
def test_synthetic_stacks_hold_together_better_than_slices_of_different_subjects(stacks_cohort, scans):
    cohort = tissue_cohort(load_cohort(scans, load_config("tiny").data))
    real, _, real_labels = group_stacks(cohort.images, list(zip(cohort.scan_ids, cohort.slice_index)), list(cohort.labels))
    rng = np.random.default_rng(0)
    bags = []  # each position's slice from another subject: what slice-by-slice codes make of a "subject"
    for _ in range(10):
        who = rng.permutation(len(real))
        bags.append(stack_coherence(torch.stack([real[w][..., k] for k, w in enumerate(who)], -1),
                                    torch.stack([real_labels[w][..., k] for k, w in enumerate(who)], -1)))
    synthetic = [stack_coherence(torch.from_numpy(read_sample(p)), torch.from_numpy(read_labels(dseg_of(p))), axis=2)
                 for p in sorted(stacks_cohort.glob("sub-*/anat/*_T1w.nii.gz"))]
    for key in ("correlation", "label_dice"):
        assert np.mean([s[key] for s in synthetic]) > np.mean([b[key] for b in bags]) + 0.05, key


@pytest.mark.slow
def test_evaluate_reads_the_stacks_and_scores_their_coherence_against_real_stacks(subject_model, stacks_cohort, scans):
    report = evaluate(EvaluateOptions(real=scans, synth=stacks_cohort, model=subject_model, c2st="off"))
    assert report["counts"]["synthetic"] == 3 * len(load_model(subject_model).levels.grid)  # every slice of every stack
    coherence = report["coherence"]
    assert coherence["synthetic"]["stacks"] == 3 and coherence["real"]["stacks"] == 5
    assert coherence["ratio"]["correlation"] > 0.9  # the stacks hold together about as well as real ones
    assert coherence["real"]["margin"] > 0.05 and "margin" in coherence["synthetic"]  # each real stack is one brain


@pytest.mark.slow
def test_a_subject_model_without_its_slice_grid_or_with_a_split_code_is_refused(tiny_models, tmp_path):
    folder = tiny_models.copy("tiny", "stacks", tmp_path / "m")
    levels = json.loads((folder / "levels.json").read_text())
    (folder / "levels.json").write_text(json.dumps({k: v for k, v in levels.items() if k != "grid"}))
    write_hashes(folder)
    with pytest.raises(UserError, match="slice grid"):
        load_model(folder)
    (folder / "levels.json").write_text(json.dumps(levels))
    np.save(folder / "assignment.npy", np.zeros(25, dtype=np.int64))  # every slice on code 0: codes 1..4 unused
    write_hashes(folder)
    with pytest.raises(UserError, match="does not use each of the 5 lattice points"):
        load_model(folder)
