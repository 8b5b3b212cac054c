"""`nsql-med utility`: the subject split, equal budgets per arm, the three outputs, resume and refusals."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from support import cli, tissue_labels, varied_volume, write_nifti, write_subjects
from neurosql_med.errors import UserError
from neurosql_med.evaluation.utility import run as utility_run
from neurosql_med.evaluation.utility import synthetic
from neurosql_med.evaluation.utility.design import check_design, split_seed
from neurosql_med.evaluation.utility import networks
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.evaluation.utility.covariate import covariate_network
from neurosql_med.evaluation.utility.networks import (
    BATCH_SIZE, Trained, TrainingSet, batches, build_network, score, train_network,
)
from neurosql_med.evaluation.utility.report import paired_difference
from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility.run import ARMS, run_utility
from neurosql_med.evaluation.utility.tasks import Targets, parse_task
from neurosql_med.io.files import sha256_file
from neurosql_med.io.model import CONDITIONS, FINGERPRINT

SUBJECTS = 8
AGES = [50, 81, 63, 72, 58, 90, 67, 45]
GROUPS = ["a", "b", "a", "b", "a", "b", "a", "b"]
TINY = dict(train_subjects=[2], seeds=[0], steps=3, nsql_steps=4, config="tiny", device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def write_cohort(root: Path, labels: bool = True, ages: list = AGES) -> Path:
    """BIDS subjects with tissue label maps and a participants.tsv (age, group, site)."""
    write_subjects(root, SUBJECTS)
    for i in range(SUBJECTS):
        if labels:
            write_nifti(root / f"sub-{i:02d}/anat/sub-{i:02d}_dseg.nii.gz", tissue_labels(varied_volume(i), (300, 700)),
                        (4, 4, 4))
    rows = [f"sub-{i:02d}\t{ages[i]}\t{GROUPS[i]}\t3" for i in range(SUBJECTS)]
    (root / "participants.tsv").write_text("participant_id\tage\tgroup\tsite\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def watched(scans, tmp_path_factory) -> tuple[dict, Path, dict]:
    """A tiny segment grid, with every NeuroSQL fit's and downstream training set's subjects recorded."""
    seen: dict = {"fits": [], "trained": []}
    fit, training_set = synthetic.fit, utility_run._training_set

    def watch_fit(cohort, *args, **kwargs):
        seen["fits"].append((set(cohort.subjects), {s.subject for s in cohort.discovery.scans}))
        return fit(cohort, *args, **kwargs)

    def watch_training_set(study, train, synth, scale):
        seen["trained"].append(set() if train is None else set(train.subjects))
        return training_set(study, train, synth, scale)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "fit", watch_fit)
        patch.setattr(utility_run, "_training_set", watch_training_set)
        out = tmp_path_factory.mktemp("utility") / "out"
        result = run_utility(UtilityOptions(scans=scans, task="segment", out=out, **TINY), show_progress=False)
    return result, out, seen


@pytest.mark.slow
def test_tiny_grid_writes_all_three_outputs(watched):
    result, out, _ = watched
    assert {p.name for p in out.iterdir()} >= {"utility.json", "utility.md", "utility.png"}
    saved = json.loads((out / "utility.json").read_text())
    assert sorted(r["arm"] for r in saved["runs"]) == sorted(ARMS)
    assert all(0 <= r["scores"]["dice"] <= 1 for r in saved["runs"])
    markdown = (out / "utility.md").read_text()
    assert "real + classic + NeuroSQL" in markdown and "elastic" in markdown and "**" in markdown
    assert (out / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_no_test_subject_reaches_a_neurosql_fit_or_a_training_set(watched, scans):
    result, out, seen = watched
    test = set(result["splits"]["0"]["test"])
    train = set(result["splits"]["0"]["train"]["2"])
    assert test and len(train) == 2 and not test & train
    assert seen["fits"] and all(subjects <= train and listed <= train for subjects, listed in seen["fits"])
    assert seen["trained"] and all(subjects <= train for subjects in seen["trained"])
    # the model folder records what it learned from: the training subjects' scans, none of the test subjects'
    fingerprint = json.loads(next((out / "models").rglob(FINGERPRINT)).read_text())
    learned = {h for hashes in fingerprint["scans"].values() for h in hashes}
    hashes = {s: sha256_file(next(scans.glob(f"{s}/anat/*_T1w.nii.gz"))) for s in test | train}
    assert learned == {hashes[s] for s in train} and not learned & {hashes[s] for s in test}


@pytest.mark.slow
def test_every_arm_trains_the_same_network_for_the_same_steps(watched):
    result, _, _ = watched
    runs = result["runs"]
    assert {(r["network"], r["parameters"], r["steps"]) for r in runs} == {(runs[0]["network"], runs[0]["parameters"], 3)}
    by_arm = {r["arm"]: r for r in runs}
    assert by_arm["real"]["synthetic_samples"] == 0 and by_arm["neurosql-only"]["real_samples"] == 0
    ratio = UtilityOptions(scans=Path("s"), task="segment").synthetic_per_real[0]  # the default ratio
    assert by_arm["real+neurosql"]["synthetic_samples"] == round(ratio * by_arm["real+neurosql"]["real_samples"])


def test_training_runs_exactly_its_steps_whatever_the_data_size():
    task = parse_task("regress:age")
    for n in (3, 16, 37):
        calls = []
        data = TrainingSet(torch.rand(n, 1, 32, 32), torch.randn(n))
        trained = train_network(task, data, 1, steps=7, seed=0, augment=None, device=torch.device("cpu"),
                                advance=lambda: calls.append(1))
        assert trained.steps == 7 and len(calls) == 7


def test_covariate_network_reads_ranks_so_a_sites_gain_changes_nothing():
    net = covariate_network((32, 40), 3).eval()
    scan = torch.zeros(2, 1, 32, 40)
    scan[:, :, 4:28, 6:34] = 0.5 + 0.5 * torch.rand(2, 1, 24, 28)  # a brain on a zero background
    assert torch.allclose(net(scan), net(1.7 * scan), atol=1e-6)
    assert covariate_network((16, 24, 16), 1)(torch.rand(2, 1, 16, 24, 16)).shape == (2, 1)  # 3D volumes too


def test_same_seed_same_initial_network_whatever_the_data(monkeypatch):
    built = []

    def watch_build(*args):
        net = build_network(*args)
        built.append({k: v.clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(networks, "build_network", watch_build)
    task = parse_task("classify:group")
    small = TrainingSet(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1]))
    large = TrainingSet(torch.rand(40, 1, 32, 32), torch.arange(40) % 2)
    for data in (small, large):
        train_network(task, data, 2, steps=2, seed=5, augment=ClassicAugmentation(2, 5), device=torch.device("cpu"))
    assert len(built) == 2 and all(torch.equal(built[0][k], built[1][k]) for k in built[0])


def test_split_keeps_test_subjects_out_and_training_sets_nested():
    subjects = [f"s{i:02d}" for i in range(30)]
    for seed in range(20):
        split = split_seed(subjects, seed, holdout_fraction=0.25)
        assert len(split.test) == 8 and not set(split.test) & set(split.order)
        assert sorted(split.test + split.order) == subjects
        assert split.training(4) == split.training(8)[:4]


def test_classification_split_tests_and_trains_every_level():
    subjects = [f"s{i:02d}" for i in range(12)]
    targets = Targets("cdr", {s: float(i % 3 == 0) + float(i % 6 == 0) for i, s in enumerate(subjects)}, ["0", "0.5", "1"])
    for seed in range(10):
        split = split_seed(subjects, seed, holdout_fraction=0.25, targets=targets)
        assert {targets.values[s] for s in split.test} == {0.0, 1.0, 2.0}
        assert {targets.values[s] for s in split.training(3)} == {0.0, 1.0, 2.0}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classify:group", "regress:Age"])
def test_regress_and_classify_fit_one_conditional_model_on_the_training_subjects_only(scans, tmp_path, task):
    """One fit per training set, conditioned on the column; its conditions.json knows only the training subjects."""
    seen: dict = {"fits": [], "synthetic": []}
    fit, training_set = synthetic.fit, utility_run._training_set

    def watch_fit(cohort, cfg, *args, **kwargs):
        seen["fits"].append((set(cohort.subjects), cfg.condition.columns, len(cohort)))
        return fit(cohort, cfg, *args, **kwargs)

    def watch_training_set(study, train, synth, scale):
        if train is None:
            seen["synthetic"].append(synth.targets.clone())
        return training_set(study, train, synth, scale)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "fit", watch_fit)
        patch.setattr(utility_run, "_training_set", watch_training_set)
        out = tmp_path / "out"
        options = UtilityOptions(scans=scans, task=task, out=out, **(TINY | {"train_subjects": [4]}))
        result = run_utility(options, show_progress=False)
    train = result["splits"]["0"]["train"]["4"]
    column = task.split(":")[1].lower()
    assert [(s, [c.lower() for c in cols]) for s, cols, _ in seen["fits"]] == [(set(train), [column])]
    saved = json.loads(next((out / "models").rglob(CONDITIONS)).read_text())
    assert len(saved["training"]) == seen["fits"][0][2]  # one encoded condition per training sample, nobody else's
    (covariate,) = saved["covariates"]
    (targets,) = seen["synthetic"]
    if task.startswith("classify"):
        mine = [GROUPS[int(s[4:])] for s in train]
        assert covariate["levels"] == ["a", "b"] and covariate["counts"] == [mine.count("a"), mine.count("b")]
        assert torch.bincount(targets.long()).tolist() == [len(targets) // 2] * 2  # balanced over the levels
    else:
        ages = [AGES[int(s[4:])] for s in train]  # the range of the training subjects, not of the whole cohort
        assert (covariate["min"], covariate["max"]) == (min(ages), max(ages)) != (min(AGES), max(AGES))
        assert min(ages) <= targets.min() < targets.max() <= max(ages)


def test_regression_mae_is_in_the_columns_units_and_per_subject():
    """A network answering 1 (one sd above the mean) for every image: each subject's mean prediction is 70 years."""
    constant = torch.nn.Module()
    constant.forward = lambda x: torch.ones(len(x), 1)
    trained = Trained(constant, steps=0, parameters=0)
    truth = torch.tensor([50.0, 50.0, 50.0, 70.0])  # subject a: three slices, b: one
    scores = score(parse_task("regress:age"), trained, torch.zeros(4, 1, 8, 8), truth, ["a", "a", "a", "b"], [], (60.0, 10.0))
    assert scores == {"mae": pytest.approx(10.0)}  # (|70 - 50| + |70 - 70|) / 2 subjects, not / 4 slices


def test_paired_difference_interval():
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0, 3: 9.0})
    assert d["seeds"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["high"] - d["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert paired_difference({0: 1.0}, {0: 0.5})["low"] is None


@pytest.mark.slow
def test_resume_skips_finished_runs_and_adds_new_seeds(scans, tmp_path):
    out = tmp_path / "out"
    first = run_utility(UtilityOptions(scans=scans, task="regress:Age", out=out, **TINY), show_progress=False)
    summary = first["summary"]["scores"]["mae"]  # per arm and k: the runs' MAE over the seeds
    assert {arm: by_k["2"]["values"] for arm, by_k in summary.items()} == {r["arm"]: [r["scores"]["mae"]] for r in first["runs"]}
    assert all(r["scores"]["mae"] > 0 for r in first["runs"])
    more_seeds = UtilityOptions(scans=scans, task="regress:Age", out=out, resume=True, **(TINY | {"seeds": [0, 1]}))
    second = run_utility(more_seeds, show_progress=False)
    assert second["runs"][:5] == first["runs"] and {r["seed"] for r in second["runs"][5:]} == {1}
    again = run_utility(UtilityOptions(scans=scans, task="regress:Age", out=out, resume=True, **TINY),
                        show_progress=False)  # summarises the seeds asked for
    assert {len(by_k["2"]["values"]) for by_k in again["summary"]["scores"]["mae"].values()} == {1}
    with pytest.raises(UserError, match="other settings .*steps"):
        run_utility(UtilityOptions(scans=scans, task="regress:Age", out=out, resume=True, **(TINY | {"steps": 4})),
                    show_progress=False)


def _refused(capsys, out: Path, *args) -> str:
    code, _, err = cli(capsys, "utility", "--out", out, "--config", "tiny", "--steps", 2, "--nsql-steps", 2,
                       "--train-subjects", 2, "--seeds", 0, *args)  # the last of a repeated option counts
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (out / "utility.json").exists() and not (out / "models").exists()
    return err


@pytest.mark.parametrize("task, message", [
    ("regress:height", "no covariate 'height'"),
    ("regress:site", "constant"),
    ("regress:group", "not numeric"),
    ("classify:site", "constant"),
    ("predict", "unknown --task"),
    ("regress", "needs a column"),
])
def test_bad_task_columns_are_refused_before_training(capsys, scans, tmp_path, task, message):
    assert message in _refused(capsys, tmp_path / "out", scans, "--task", task)


def test_too_few_subjects_and_missing_label_maps_are_refused(capsys, scans, tmp_path):
    assert "need" in _refused(capsys, tmp_path / "a", scans, "--task", "segment", "--train-subjects", "4,7")
    unlabelled = write_cohort(tmp_path / "plain", labels=False)
    assert "label map" in _refused(capsys, tmp_path / "b", unlabelled, "--task", "segment")
    missing = write_cohort(tmp_path / "gaps", labels=False, ages=["n/a"] + AGES[1:])
    assert "no value of 'age'" in _refused(capsys, tmp_path / "c", missing, "--task", "regress:age")


def test_a_finished_grid_is_not_overwritten(capsys, scans, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "utility.json").write_text("{}")
    code, _, err = cli(capsys, "utility", scans, "--task", "segment", "--out", out, "--config", "tiny")
    assert code == 2 and "--resume" in err and (out / "utility.json").read_text() == "{}"


def test_design_refuses_k_below_the_number_of_levels():
    subjects = [f"s{i}" for i in range(12)]
    targets = Targets("cdr", {s: float(i % 3) for i, s in enumerate(subjects)}, ["0", "0.5", "1"])
    with pytest.raises(UserError, match="cannot hold all 3 levels"):
        check_design(subjects, [2, 4], holdout_fraction=0.25, fixed_test=None, targets=targets)
    check_design(subjects, [3, 4], holdout_fraction=0.25, fixed_test=None, targets=targets)


@pytest.mark.slow
def test_a_holdout_folder_is_the_test_set(scans, tmp_path):
    held = write_subjects(tmp_path / "held", 3, first=8)
    (held / "participants.tsv").write_text("participant_id\tage\nsub-08\t70\nsub-09\t55\nsub-10\t80\n")
    options = UtilityOptions(scans=scans, task="regress:age", out=tmp_path / "out", holdout=held,
                             **(TINY | {"train_subjects": [7]}))
    result = run_utility(options, show_progress=False)
    assert result["splits"]["0"]["test"] == ["sub-08", "sub-09", "sub-10"]
    assert {r["test_subjects"] for r in result["runs"]} == {3} and len(result["runs"]) == len(ARMS)
    mean = np.mean([AGES[int(s[4:])] for s in result["splits"]["0"]["train"]["7"]])
    yardstick = np.mean([abs(age - mean) for age in (70, 55, 80)])
    assert result["summary"]["reference"]["mae"]["7"]["values"] == [pytest.approx(yardstick)]
    with pytest.raises(UserError, match="fewer than k = 9"):
        run_utility(UtilityOptions(scans=scans, task="regress:age", out=tmp_path / "more", holdout=held,
                                   **(TINY | {"train_subjects": [9]})), show_progress=False)


@pytest.mark.slow
def test_a_ratio_sweep_runs_each_neurosql_arm_per_ratio_on_nested_cases(scans, tmp_path):
    options = UtilityOptions(scans=scans, task="segment", out=tmp_path / "out", synthetic_per_real=[1, 2],
                             **(TINY | {"train_subjects": [3]}))
    result = run_utility(options, show_progress=False)
    arms = {r["arm"]: r for r in result["runs"]}
    assert set(arms) == {"real", "real+classic", "real+neurosql@1", "real+neurosql@2", "real+classic+neurosql@1",
                         "real+classic+neurosql@2", "neurosql-only@1", "neurosql-only@2"}
    real = arms["real"]["real_samples"]
    assert arms["real"]["synthetic_samples"] == 0 and real > 0
    assert arms["real+neurosql@1"]["synthetic_samples"] == real
    assert arms["neurosql-only@2"]["synthetic_samples"] == 2 * real and arms["neurosql-only@2"]["real_samples"] == 0
    against = result["summary"]["against_classic"]["dice"]
    assert set(against) == {a for a in arms if "@" in a}
    assert "(×2)" in (tmp_path / "out" / "utility.md").read_text()


def test_decay_schedule_spends_synthetic_cases_early_and_ends_on_real_scans():
    steps, real, fake = 40, 30, 30
    drawn = list(batches(real, fake, steps, torch.Generator().manual_seed(0), "decay"))
    shares = [float((b >= real).double().mean()) for b in drawn]
    assert len(drawn) == steps and all(len(b) == BATCH_SIZE for b in drawn)
    assert shares[0] == 1.0 and shares[-1] == 0.0 and all(a >= b for a, b in zip(shares, shares[1:]))
    assert abs(np.mean(shares) - 0.5) < 0.05  # the same synthetic exposure as the constant schedule
    constant = torch.cat(list(batches(real, fake, steps, torch.Generator().manual_seed(0), "constant")))
    assert abs(float((constant >= real).double().mean()) - 0.5) < 0.05


def test_constant_schedule_is_a_shuffled_pass_per_epoch():
    drawn = list(batches(20, 0, 3, torch.Generator().manual_seed(1), "constant"))
    assert [len(b) for b in drawn] == [16, 4, 16]
    assert sorted(torch.cat(drawn[:2]).tolist()) == list(range(20))


def test_classic_augmentation_moves_labels_with_the_image():
    torch.manual_seed(0)
    image = torch.zeros(8, 1, 32, 40)
    image[:, :, 8:24, 10:30] = 1.0
    labels = (image > 0.5).long()
    out, moved = ClassicAugmentation(2, seed=3, strength=1.5)(image, labels)
    assert out.shape == image.shape and moved.shape == labels.shape and set(moved.unique().tolist()) <= {0, 1}
    assert not torch.equal(out, image)  # something was transformed
    agree = ((out > 0.5).long() == moved).double().mean()
    assert agree > 0.93  # geometry moved both the same way: the label follows the bright square
