"""Conditional synthesis: covariates joined to scans, G(u, c), one exact LAP per stratum, and asking for subjects."""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support import CONDITIONS, TINY_EPOCHS, cli, write_subjects
from neurosql_med.config import AssignmentConfig, load_config, with_condition
from neurosql_med.data.covariates import condition_scans, load_conditioned_cohort, read_covariates
from neurosql_med.data.discovery import discover
from neurosql_med.engine.conditioning import ConditionSpec, Covariate
from neurosql_med.engine.assignment import AssignmentProblem
from neurosql_med.engine.decoder import Decoder
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.engine.strata import Strata, assign_stratified, cost_conditions
from neurosql_med.errors import UserError
from neurosql_med.evaluation.conditions import HOLDOUT_FRACTION, SEED, agreement, effect_sizes, tissue_fraction
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.synthesis.dataset import SyntheticDataset



def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_bids_participants_sessions_and_levels_join_to_the_right_scans(tiny_bids):
    (tiny_bids / "participants.tsv").write_text(
        "participant_id\tAge\tsex\tCDR\nsub-OAS30001\t70\tF\t0.5\nsub-OAS30002\t61\tM\t0\nsub-OAS30003\t82\tF\t1.0\n")
    (tiny_bids / "participants.json").write_text(json.dumps({"CDR": {"Levels": {"0": "normal", "0.5": "v", "1": "m", "2": "x"}}}))
    (tiny_bids / "sub-OAS30001" / "sub-OAS30001_sessions.tsv").write_text("session_id\tage\nses-d0129\t70.4\nses-d0757\t72.1\n")
    found = discover(tiny_bids)
    conditioned = condition_scans(found, read_covariates(found), ["cdr", "AGE", "Sex"], {})
    values = conditioned.values
    assert values["sub-OAS30001_ses-d0129"] == {"CDR": "0.5", "age": 70.4, "sex": "F"}  # the session's age (and spelling)
    assert values["sub-OAS30001_ses-d0757"]["age"] == 72.1
    assert values["sub-OAS30003"] == {"CDR": "1", "age": 82.0, "sex": "F"}  # "1.0" is level "1"
    cdr = conditioned.spec.covariates[0]
    assert (cdr.kind, cdr.levels, cdr.counts) == ("categorical", ["0", "0.5", "1"], [1, 2, 1])  # json order, seen levels only
    assert conditioned.spec.covariates[1].kind == "continuous"


def test_oasis1_csv_above_the_scans_joins_by_session_and_m_f_is_sex(tiny_oasis1):
    (tiny_oasis1.parent / "oasis_cross-sectional.csv").write_text(
        "ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,ASF,Delay\n"
        "OAS1_0001_MR1,F,R,74,2,3,29,0,1344,0.743,1.306,N/A\nOAS1_0002_MR1,M,R,55,4,1,29,0.5,1147,0.81,1.531,N/A\n")
    found = discover(tiny_oasis1)
    conditioned = condition_scans(found, read_covariates(found), ["CDR", "age", "sex"], {})
    assert conditioned.values == {"OAS1_0001_MR1": {"CDR": "0", "Age": 74.0, "sex": "F"},
                                  "OAS1_0002_MR1": {"CDR": "0.5", "Age": 55.0, "sex": "M"}}


def test_missing_values_are_skipped_with_their_reason_and_strict_or_unknown_columns_are_errors(tmp_path, capsys):
    scans = write_subjects(tmp_path / "scans", 4)
    (scans / "participants.tsv").write_text("participant_id\tage\tsex\nsub-00\t60\tF\nsub-01\tn/a\tM\nsub-02\t65\tF\nsub-03\t70\tM\n")
    found = discover(scans)
    conditioned = condition_scans(found, read_covariates(found), ["age"], {})
    assert [s.id for s in conditioned.discovery.scans] == ["sub-00", "sub-02", "sub-03"]
    assert [s.reason for s in conditioned.discovery.skipped if "sub-01" in str(s.path)] == ["no value for covariate age"]
    with pytest.raises(UserError, match="sub-01: no value for covariate age"):
        condition_scans(found, read_covariates(found), ["age"], {}, strict=True)
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--out", tmp_path / "m", "--condition", "CDR")
    assert code == 2 and err.strip() == "error: --condition: no covariate 'CDR' (covariates found: age, sex)"
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--out", tmp_path / "m", "--condition", "age",
                       "--covariates", tmp_path / "nope.tsv")
    assert code == 2 and err.startswith("error: --covariates: file not found")


def test_per_stratum_assignment_equals_brute_force():
    torch.manual_seed(0)
    generator = Decoder(2, 3 + 2, (8, 8), [4, 2]).eval()
    images = torch.rand(6, 1, 8, 8)
    # two strata of three images; continuous values differ within a stratum, so rows need their own decodes
    conditions = torch.tensor([[1, 0.2], [1, -0.5], [1, 0.9], [0, 1.1], [0, -1.0], [0, 0.3]], dtype=torch.float32)
    strata = Strata.of([(int(c[0]),) for c in conditions])
    lattice = torch.randn(6, 3)
    loss = ReconstructionLoss(2, 0.8, 3)
    problem = AssignmentProblem(generator, lattice, images, loss, AssignmentConfig(cost="loss"), 4, "cpu")
    result = assign_stratified(problem, conditions, strata, previous=None, seed=0)

    def cost(i: int, j: int) -> float:
        with torch.no_grad():
            out = generator(torch.cat([lattice[j], conditions[i]])[None])
        return float(loss(out, images[i:i + 1]))

    best = min(
        ((sum(cost(i, j) for rows, cols in zip(strata.rows, choice) for i, j in zip(rows, cols)), choice)
         for choice in itertools.product(*[itertools.permutations(c) for c in strata.columns])),
        key=lambda t: t[0])
    expected = np.empty(6, dtype=np.int64)
    for rows, cols in zip(strata.rows, best[1]):
        expected[rows] = cols
    assert np.array_equal(result.perm, expected)
    assert result.total_cost == pytest.approx(best[0], rel=1e-5)
    binned = cost_conditions(conditions, strata, [1], 2)  # stratum (0,): values 1.1, -1.0, 0.3 in bins {-1.0, 0.3}, {1.1}
    assert torch.allclose(binned[strata.rows[0], 1], torch.tensor([1.1, -0.35, -0.35]))


def _fit(capsys, scans: Path, out: Path, config: str, *extra) -> tuple[int, str, str]:
    """`nsql-med fit` with the tiny models' settings, conditioned on CONDITIONS."""
    return cli(capsys, "fit", scans, "--config", config, "--out", out, "--epochs", TINY_EPOCHS, "--device", "cpu",
               "--condition", ",".join(CONDITIONS), *extra)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny", "tiny3d"])
def test_conditional_fit_synthesize_and_reproduce(tiny_models, tmp_path, capsys, config):
    model = tiny_models.get(config, "conditional")
    spec = json.loads((model / "conditions.json").read_text())
    assert [c["name"] for c in spec["covariates"]] == ["group", "age"]
    assert spec["covariates"][0]["counts"] == [2, 3] and spec["covariates"][1]["min"] == 60.0
    assert "conditions.json" in json.loads((model / "hashes.json").read_text())
    assert load_config(model / "config.yaml").condition.columns == ["group", "age"]

    code, _, err = cli(capsys, "synthesize", "--model", model, "--out", tmp_path / "fixed", "--n", "3",
                       "--condition", "GROUP=B,Age=95", "--device", "cpu")
    assert code == 0, err
    rows = _rows(tmp_path / "fixed" / "participants.tsv")
    assert [(r["group"], r["age"], r["synthetic"]) for r in rows] == [("B", "95", "true")] * 3
    sidecar = json.loads((tmp_path / "fixed/sub-synth0002/anat/sub-synth0002_desc-nsql_T1w.json").read_text())
    assert sidecar["Condition"] == {"group": "B", "age": 95.0} and sidecar["Extrapolated"] is True
    code, out, _ = cli(capsys, "reproduce", tmp_path / "fixed/sub-synth0002/anat/sub-synth0002_desc-nsql_T1w.nii.gz",
                       "--model", model)
    assert code == 0 and out.startswith("identical")

    (tmp_path / "design.tsv").write_text("participant_id\tgroup\tage\tnWBV\nx\tA\t61\t0.7\ny\tB\t79.5\t0.8\nz\tA\t\t0.7\n")
    code, _, err = cli(capsys, "synthesize", "--model", model, "--out", tmp_path / "table", "--condition-table",
                       tmp_path / "design.tsv", "--device", "cpu")
    assert code == 0, err
    rows = _rows(tmp_path / "table" / "participants.tsv")
    assert [(r["group"], r["age"]) for r in rows[:2]] == [("A", "61"), ("B", "79.5")]
    assert rows[2]["group"] == "A" and 60 <= float(rows[2]["age"]) <= 80  # an empty cell is drawn in the training range

    code, _, err = cli(capsys, "synthesize", "--model", model, "--out", tmp_path / "balanced", "--n", "5",
                       "--balance", "group", "--device", "cpu")
    assert code == 0, err
    assert [r["group"] for r in _rows(tmp_path / "balanced" / "participants.tsv")] == ["A", "B", "A", "B", "A"]


@pytest.mark.slow
def test_condition_errors_dataset_and_unconditional_config(tiny_models, tmp_path, capsys):
    scans, model = tiny_models.scans, tiny_models.copy("tiny", "conditional", tmp_path / "model")  # resumed below
    for option, value, message in (
        ("--condition", "group=C", "error: --condition: group=C is a category the model never saw (training levels: A, B)"),
        ("--condition", "mmse=3", "error: --condition: the model has no covariate 'mmse' (it was fit on group, age)"),
        ("--balance", "age", "error: --balance: age is continuous; balance a categorical covariate"),
    ):
        code, _, err = cli(capsys, "synthesize", "--model", model, "--out", tmp_path / "x", "--n", "2", option, value)
        assert code == 2 and err.strip() == message
    assert not (tmp_path / "x").exists()
    code, out, err = _fit(capsys, scans, model, "tiny", "--resume")
    assert code == 0 and "conditioned on group, age" in out, err
    code, _, err = cli(capsys, "fit", scans, "--config", "tiny", "--out", model, "--resume", "--condition", "sex")
    assert code == 2 and "cannot change --condition" in err

    data = SyntheticDataset(model, n=3, condition="group=A", seed=4)
    items = [data[i] for i in range(3)]
    assert [item["condition"]["group"] for item in items] == ["A"] * 3
    assert all(40 <= item["condition"]["age"] <= 100 for item in items)
    written = tmp_path / "ds"
    cli(capsys, "synthesize", "--model", model, "--out", written, "--n", "3", "--condition", "group=A", "--seed", "4",
        "--device", "cpu")
    assert items[0]["condition"] == json.loads(
        (written / "sub-synth0001/anat/sub-synth0001_desc-nsql_T1w.json").read_text())["Condition"]


def test_an_unconditional_config_has_no_condition_section():
    cfg = load_config("tiny")
    assert "condition" not in cfg.to_dict() and "condition" not in cfg.to_yaml()


def test_tissue_fraction_and_effect_sizes_compare_real_and_synthetic_contrasts():
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    labels[0, 0, :2] = 1  # 8 CSF voxels, 8 tissue
    labels[0, 0, 2:] = 3
    labels[1, 0, 0] = 1  # 4 CSF, 4 tissue, 8 background
    labels[1, 0, 1] = 2
    assert np.allclose(tissue_fraction(torch.zeros(2, 1, 4, 4), labels), [0.5, 0.5])
    spec = ConditionSpec([Covariate("CDR", "categorical", ["0", "1"], [2, 2]),
                          Covariate("age", "continuous", [], [], 70.0, 10.0, 60.0, 80.0)])
    conditions = [{"CDR": "0", "age": 60.0}, {"CDR": "0", "age": 70.0}, {"CDR": "1", "age": 70.0}, {"CDR": "1", "age": 80.0}]
    real = np.array([0.8, 0.8, 0.6, 0.6])
    synth = np.array([0.75, 0.65, 0.6, 0.6])
    effects = effect_sizes(spec, (real, conditions), (synth, conditions))
    cdr = effects["CDR"]["1 - 0"]
    assert cdr["real"] == pytest.approx(-0.2) and cdr["synthetic"] == pytest.approx(-0.1)
    assert cdr["same_sign"] and cdr["ratio"] == pytest.approx(0.5)
    assert effects["age"]["slope"]["real"] < 0 and effects["age"]["slope"]["same_sign"]


@pytest.mark.slow
def test_age_agreement_is_the_held_out_subjects_error_in_years(tiny_models):
    """The predictor learns standardised ages, so ages a and 2a + 100 train the very same network: its MAE, reported
    in the covariate's own units, is then exactly twice as large. Scoring the held-out subjects' own images as the
    "synthetic" set gives the held-out score exactly: it is their error, not the training subjects'."""
    real = load_conditioned_cohort(tiny_models.scans, with_condition(load_config("tiny"), ["age"]))
    real = real.subset(np.arange(0, len(real), 3))  # fewer slices of every subject: the same question, faster
    age = real.condition_spec.covariates[0]
    _, held = split_by_subject(real, HOLDOUT_FRACTION, SEED)
    years = agreement(real.condition_spec, real, held.images, held.condition_values)["age"]
    assert years["holdout_real"] == years["synthetic"] > 0

    def stretched(values: list[dict]) -> list[dict]:
        return [{"age": 2 * v["age"] + 100} for v in values]
    spec = ConditionSpec([dataclasses.replace(age, mean=2 * age.mean + 100, std=2 * age.std)])
    other = dataclasses.replace(real, condition_spec=spec, condition_values=stretched(real.condition_values))
    twice = agreement(spec, other, held.images, stretched(held.condition_values))["age"]
    assert twice["holdout_real"] == twice["synthetic"] == 2 * years["holdout_real"]


@pytest.mark.slow
def test_evaluate_reports_condition_agreement_and_effects(tiny_models, tmp_path, capsys):
    scans, model = tiny_models.scans, tiny_models.get("tiny", "conditional")
    assert cli(capsys, "synthesize", "--model", model, "--out", tmp_path / "s", "--n", "6", "--balance", "group",
               "--device", "cpu")[0] == 0
    code, out, err = cli(capsys, "evaluate", "--real", scans, "--synth", tmp_path / "s", "--model", model, "--json",
                         "--no-c2st")
    assert code == 0, err
    section = json.loads(out)["conditions"]
    accuracy = section["agreement"]["group"]["synthetic"]
    assert section["agreement"]["group"]["metric"] == "accuracy" and accuracy * 6 == pytest.approx(round(accuracy * 6))
    assert section["agreement"]["age"]["metric"] == "mae" and section["agreement"]["age"]["holdout_real"] > 0
    assert set(section["effects"]["group"]) == {"B - A"} and "slope" in section["effects"]["age"]
    assert {k: v["synthetic"] for k, v in section["strata"].items()} == {"group=A": 3, "group=B": 3}
    real = load_conditioned_cohort(scans, load_config(model / "config.yaml"))
    fraction, groups = tissue_fraction(real.images, None), np.array([c["group"] for c in real.condition_values])
    assert {k: v["real"] for k, v in section["strata"].items()} == {f"group={g}": int((groups == g).sum()) for g in "AB"}
    expected = fraction[groups == "B"].mean() - fraction[groups == "A"].mean()
    assert section["effects"]["group"]["B - A"]["real"] == pytest.approx(expected)
    assert all(0 <= v["fraction_flagged"] <= 1 for v in section["strata"].values())
