"""Which NeuroSQL cases help real + classic? One k, one seed, one NeuroSQL fit, several ways to draw its cases.

    python benchmarks/utility_variants.py K SEED RATIO VARIANTS [config=NAME] [nsql=STEPS] [cohort=DIR] [out=DIR]

VARIANTS (comma-separated): classic (the reference arm), fresh (as `synthesize` draws), fresh-notex (no
texture), nearS (as `utility --near-codes S`: u = a training code + S * N(0, I)), mixA (u = a convex mix
of two training codes, weight up to A). A variant trains with a constant synthetic share (`utility --schedule
constant`), or, ending in ``:decay``, with the share falling to 0 (`--schedule decay`, utility's default).
Each trains the real + classic + NeuroSQL arm of `nsql-med utility` (same network, steps, seed and test
subjects: COHORT/heldout) on those cases; results.json in out, where a finished variant is skipped when run again.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neurosql_med.engine.lattice import reference_draws
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.evaluation.utility.design import training_cohort
from neurosql_med.evaluation.utility.networks import score, train_network
from neurosql_med.evaluation.utility.run import Study, _splits, _training_set, _truth, load_study
from neurosql_med.evaluation.utility.synthetic import SyntheticCases, draw, fit_neurosql
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.sampling import SAMPLE_BATCH


def decode(model: NeuroSQLModel, z: np.ndarray, seed: int, texture: bool = True) -> SyntheticCases:
    """Cases decoded from the latents ``z``, with the sampler's texture or as G(u) alone."""
    seeds = texture_seeds(seed, np.arange(len(z)))
    parts = [model.sample(z[i:i + SAMPLE_BATCH], seeds[i:i + SAMPLE_BATCH]) if texture
             else model.decode_with_labels(z[i:i + SAMPLE_BATCH], None, None) for i in range(0, len(z), SAMPLE_BATCH)]
    return SyntheticCases(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), {})


def cases(variant: str, model: NeuroSQLModel, n: int, seed: int, rng: np.random.Generator) -> SyntheticCases | None:
    """The ``n`` cases a variant trains on (None: the classic arm, real scans only)."""
    codes = model.lattice[model.assignment]
    if variant == "classic":
        return None
    if variant == "fresh":
        return SyntheticCases(*draw(model, n, seed), {})
    if variant == "fresh-notex":
        return decode(model, reference_draws(np.arange(n), model.latent_dim, model.lattice_kind, seed)[0], seed, False)
    if variant.startswith("near"):
        return SyntheticCases(*draw(model, n, seed, float(variant[4:])), {})
    if variant.startswith("mix"):
        i, j = rng.integers(0, len(codes), n), rng.integers(0, len(codes), n)
        weight = rng.uniform(0, float(variant[3:]), (n, 1))
        return decode(model, (1 - weight) * codes[i] + weight * codes[j], seed)
    raise SystemExit(f"error: unknown variant {variant!r} (classic, fresh, fresh-notex, nearS, mixA)")


def dice(study: Study, train, synth: SyntheticCases | None, seed: int, schedule: str = "constant") -> float:
    """The real + classic (+ NeuroSQL) arm of `utility`, trained and scored on the held-out subjects."""
    data = _training_set(study, train, synth, (0.0, 1.0))
    net = train_network(study.task, data, study.outputs, steps=study.steps, seed=seed,
                        augment=ClassicAugmentation(2, seed), device=torch.device("cpu"), schedule=schedule)
    test = study.holdout
    return score(study.task, net, test.images, _truth(study, test), test.subjects, study.names, (0.0, 1.0))["dice"]


def main(argv: list[str]) -> None:
    k, seed, ratio, variants = int(argv[0]), int(argv[1]), float(argv[2]), argv[3].split(",")
    opts = dict(a.split("=", 1) for a in argv[4:])
    cohort, config = Path(opts.get("cohort", "realistic-cohort")), opts.get("config", "utility")
    out = Path(opts.get("out", f"utility-variants-k{k}-s{seed}"))
    out.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    options = UtilityOptions(scans=cohort / "bids", task="segment", holdout=cohort / "heldout", config=config,
                             device="cpu", nsql_steps=int(opts.get("nsql", 800)), synthetic_per_real=(ratio,), out=out)
    study = load_study(options)
    train = training_cohort(study.pool, _splits(study, [seed], options.test_share, [k])[seed].training(k))
    tag = f"{Path(config).stem}-{study.nsql.steps}"
    folder = out / f"model-{tag}"
    model = load_model(folder) if (folder / "model.pt").exists() else fit_neurosql(train, study.nsql, folder, seed, None)[0]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for variant in variants:
        key = f"{tag}:{variant}"
        if key in results or (variant == "classic" and any(r.endswith(":classic") for r in results)):
            print(variant, "done")
            continue
        started = time.time()
        name, _, schedule = variant.partition(":")
        # One stream per variant, so a variant's cases do not depend on the order of VARIANTS.
        synth = cases(name, model, max(1, round(ratio * len(train))), seed, np.random.default_rng(seed))
        results[key] = dice(study, train, synth, seed, schedule or "constant")
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{variant}: dice {results[key]:.4f} ({time.time() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
