"""`nsql-med benchmark`: NeuroSQL, VAE, GAN and DDPM trained at one tiny budget and scored alike."""
import json
import time

import numpy as np
import pytest
import torch

from support import write_subjects
from neurosql_med.evaluation.baselines import budget_lr, run_budgeted
from neurosql_med.evaluation.baselines.gan import diff_augment
from neurosql_med.evaluation.benchmark import (
    COLUMNS, MEMORY_CPU, PER_SAMPLE, REFERENCE, PeakMemory, benchmark_table, build_method, run_benchmark,
    split_by_subject, summarize,
)
from neurosql_med.evaluation.options import METHODS, BenchmarkOptions
from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.errors import UserError

BUDGET_MINUTES = 0.005  # 0.3 s a method: every method still takes its first steps
N_SAMPLES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return write_subjects(tmp_path_factory.mktemp("scans"), 6)


@pytest.fixture(scope="module")
def cohort(scans):
    return load_cohort(scans, load_config("tiny").data)


@pytest.fixture(scope="module")
def outcome(scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark(BenchmarkOptions(scans=scans, budget_minutes=BUDGET_MINUTES, n_samples=N_SAMPLES,
                                            config="tiny", seed=3, out=out, c2st="fast"))
    return result, out


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_then_samples_in_unit_range(name, cohort, tmp_path):
    # baselines get odd sides, which the DDPM must pad and crop and the VAE encoder pad
    images = cohort.images if name == "neurosql" else torch.rand(12, 1, 23, 30)
    method = build_method(name, load_config("tiny"), cohort, tmp_path / name)
    trained = method.fit(images, 0.2, seed=0, device=torch.device("cpu"))  # seconds: a few steps
    assert trained["epochs"] > 0 and trained["steps"] >= 1
    samples = method.sample(3, seed=1)
    assert samples.shape == (3, *images.shape[1:]) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, method.sample(3, seed=1))
    assert method.parameter_count() > 0


@pytest.mark.slow
def test_every_method_is_trained_and_scored_against_train_and_holdout(outcome):
    result, _ = outcome
    assert list(result["runs"]) == list(METHODS)
    for name, (run,) in result["runs"].items():
        assert run["seed"] == 3 and run["epochs"] > 0 and run["parameters"] > 0, name
        assert run["sample_ms"] > 0 and isinstance(run["peak_memory_mb"], float) and run["train_seconds"] > 0
        for side in ("train", "holdout"):
            scores = run[side]
            assert 0 <= scores["fidelity"]["mae"] <= 1 and -1 <= scores["fidelity"]["ssim"] <= 1
            assert 0 <= scores["coverage"]["covered"] <= 1
            assert 0 <= scores["distribution"]["precision"] <= 1 and 0 <= scores["distribution"]["recall"] <= 1
            assert scores["counts"]["synthetic"] == N_SAMPLES
            memo = scores["memorization"]
            assert not set(PER_SAMPLE) & set(memo) and memo["flagged"] == sorted(memo["flagged"])
            assert memo["n_flagged"] == len(memo["flagged"]) and memo["fraction_flagged"] == memo["n_flagged"] / N_SAMPLES
            assert (memo["n_flagged"] > 0) == (memo["ratio_min"] < memo["tau"])  # flagged: nearer than tau
        assert 0 <= run["c2st"]["auc"] <= 1 and run["texture"]["high_frequency_ratio"] > 0, name
        assert ("c2st_reconstruction" in run) == (name == "neurosql"), name
    assert 0 <= result["runs"]["neurosql"][0]["c2st_reconstruction"]["auc"] <= 1
    assert result["settings"]["memory"] and result["settings"]["budget_minutes"] == BUDGET_MINUTES


@pytest.mark.slow
def test_reference_row_scores_the_real_held_out_samples(outcome):
    result, _ = outcome
    (reference,) = result["reference"]
    held = result["splits"]["3"]["holdout_samples"]
    assert reference["seed"] == 3 and reference["train"]["counts"]["synthetic"] == held
    row = result["summary"][REFERENCE]
    assert 0 < row["train.fidelity.mae"]["mean"] < 1 and row["parameters"]["mean"] is None
    assert row["holdout.fidelity.mae"]["mean"] is None  # the held-out samples are not scored against themselves
    assert reference["c2st"] is None  # one held-out subject: no fold split keeps it out of the classifier's training
    assert 0 <= row["c2st_blur.auc"]["mean"] <= 1 and row["c2st.auc"]["mean"] is None


@pytest.mark.slow
def test_holdout_is_split_by_subject(outcome, cohort):
    result, _ = outcome
    split = result["splits"]["3"]
    assert split["holdout_subjects"] and len(split["train_subjects"]) >= 2
    assert not set(split["train_subjects"]) & set(split["holdout_subjects"])
    assert split["train_samples"] + split["holdout_samples"] == len(cohort)
    train, held = split_by_subject(cohort, 0.2, seed=3)
    assert sorted(set(held.subjects)) == split["holdout_subjects"]
    assert set(train.subjects).isdisjoint(held.subjects) and len(train) + len(held) == len(cohort)


@pytest.mark.slow
def test_outputs_exist_and_parse(outcome):
    result, out = outcome
    saved = json.loads((out / "benchmark.json").read_text())
    assert list(saved["summary"]) == [*METHODS, REFERENCE] and saved["splits"] == result["splits"]
    rows = [line for line in (out / "benchmark.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == [*METHODS, REFERENCE]  # header, a row per method, reference
    assert (out / "benchmark.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "models/neurosql-seed3/hashes.json").is_file()
    table = benchmark_table(result)
    assert table.row_count == len(COLUMNS) and [c.header for c in table.columns] == ["metric", "reading", *METHODS, REFERENCE]


def test_summary_is_mean_and_spread_across_seeds():
    def record(value):
        run: dict = {}
        for key, _, _ in COLUMNS:
            *parents, leaf = key.split(".")
            node = run
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return run

    summary = summarize({"vae": [record(1.0), record(3.0)], "gan": [record(2.0)]})
    mae = summary["vae"]["train.fidelity.mae"]
    assert mae["mean"] == 2.0 and mae["std"] == pytest.approx(2**0.5) and mae["values"] == [1.0, 3.0]
    assert summary["gan"]["epochs"] == {"mean": 2.0, "std": 0.0, "values": [2.0]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ("neurosql", "flow")}, "--methods must be one of neurosql, vae, gan, ddpm, got 'flow'"),
        ({"methods": ("vae", "vae")}, "each method may be named only once"),
        ({"methods": ()}, "no method given"),
        ({"budget_minutes": 0}, "--budget-minutes must be greater than 0, got 0"),
        ({"budget_minutes": -1.5}, "--budget-minutes must be greater than 0, got -1.5"),
        ({"n_samples": 1}, "--n-samples must be at least 2, got 1"),
        ({"holdout_fraction": 1.0}, "--holdout-fraction must be in \\(0, 1\\), got 1.0"),
        ({"seeds": (0, -1)}, "--seeds must be at least 0, got -1"),
        ({"c2st": "off"}, "--c2st must be one of fast, strong, got 'off'"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message, scans, tmp_path):
    with pytest.raises(UserError, match=message):
        BenchmarkOptions(scans=scans, config="tiny", out=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_too_few_subjects_to_hold_any_out(tmp_path):
    two = write_subjects(tmp_path / "two", 2)
    with pytest.raises(UserError, match="2 subject\\(s\\); a hold-out split needs at least 1 held-out and 2 training"):
        run_benchmark(BenchmarkOptions(scans=two, config="tiny", budget_minutes=BUDGET_MINUTES, out=tmp_path / "out"))


def test_holdout_folder_sharing_a_subject_is_refused(scans, tmp_path):
    other = write_subjects(tmp_path / "other", 1, first=5)  # sub-05 is also in the training folder
    with pytest.raises(UserError, match="sub-05 are in both"):
        run_benchmark(BenchmarkOptions(scans=scans, holdout=other, config="tiny", budget_minutes=BUDGET_MINUTES,
                                       out=tmp_path / "out"))


def test_peak_memory_sees_an_allocation_inside_the_block():
    memory = PeakMemory(torch.device("cpu"))
    if memory.how != MEMORY_CPU:
        pytest.skip("the growth of the lifetime peak (ru_maxrss) misses what an earlier test reached")
    with memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
        del block
    assert 48 < memory.mb < 1024


def test_budget_loop_stops_on_the_clock_and_anneals():
    fractions = []
    trained = run_budgeted(lambda idx, f: (fractions.append(f), time.sleep(0.005)), 10, 4, 0.1, seed=0)
    # the budget was spent, and the step that spent it was the last one started: at most one step over
    assert trained["seconds"] >= 0.1 and fractions[-1] < 1 and trained["steps"] == len(fractions)
    assert fractions == sorted(fractions) and fractions[0] == 0
    assert trained["epochs"] == pytest.approx(sum(min(4, 10 - 4 * (i % 3)) for i in range(len(fractions))) / 10)
    assert budget_lr(0.0) < 0.05 and budget_lr(0.05) == pytest.approx(1) and budget_lr(1.0) == pytest.approx(0.05)


@pytest.mark.parametrize("shape", [(4, 1, 16, 24), (3, 1, 8, 10, 12)])
def test_diff_augment_keeps_shape_and_gradient(shape):
    x = torch.rand(shape, requires_grad=True)
    y = diff_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
