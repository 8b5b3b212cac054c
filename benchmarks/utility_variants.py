"""Which NeuroSQL cases help real + classic? One k, one seed, one NeuroSQL fit, several ways to draw its cases.

    python benchmarks/utility_variants.py K SEED RATIO VARIANTS [config=NAME] [nsql=STEPS] [cohort=DIR] [out=DIR]

VARIANTS (comma-separated): classic (the reference arm), fresh (as `synthesize` draws), fresh-notex (no
texture), nearS (u = a training code + S * N(0, I): near-reconstructions for small S), mixA (u = a convex mix
of two training codes, weight up to A). Each trains the real + classic + NeuroSQL arm of `nsql-med utility`
(same network, steps, seed and test subjects: realistic-cohort/heldout) on those cases; results.json in out.
"""
import sys, json, time, numpy as np, torch
from pathlib import Path
from neurosql_med.evaluation.utility.run import load_study, _splits, _truth, _training_set
from neurosql_med.evaluation.utility.design import training_cohort
from neurosql_med.evaluation.utility.synthetic import SyntheticCases, fit_neurosql, draw
from neurosql_med.evaluation.utility.networks import train_network, score
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.io.model import load_model
from neurosql_med.engine.lattice import reference_draws

k, seed, ratio = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
strategies = sys.argv[4].split(",")
opts = dict(a.split("=") for a in sys.argv[5:])
cohort = Path(opts.get("cohort", "realistic-cohort"))
out = Path(opts.get("out", f"utility-variants-k{k}-s{seed}")); out.mkdir(exist_ok=True)
torch.set_num_threads(1)
cfgname = opts.get("config", "utility")
from neurosql_med.evaluation.options import UtilityOptions
study = load_study(UtilityOptions(scans=cohort / "bids", task="segment", holdout=cohort / "heldout",
                   config=cfgname, device="cpu", steps=1000, nsql_steps=int(opts.get("nsql", 800)), synthetic_per_real=(ratio,), out=out))
split = _splits(study, [seed], 0.25, [k])[seed]
train = training_cohort(study.pool, split.training(k)); test = study.holdout
n = max(1, round(ratio * len(train)))
tag = Path(cfgname).stem + f"-{study.nsql.steps}"
folder = out / f"model-{tag}"
model = load_model(folder) if (folder / "model.pt").exists() else fit_neurosql(train, study.nsql, folder, seed, None)[0]
results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}

def run(name, cases):
    data = _training_set(study, train, cases, (0.0, 1.0))
    t = time.time()
    tr = train_network(study.task, data, study.outputs, steps=1000, seed=seed, augment=ClassicAugmentation(2, seed), device=torch.device("cpu"))
    s = score(study.task, tr, test.images, _truth(study, test), test.subjects, study.names, (0.0, 1.0))
    results[f"{tag}:{name}"] = s["dice"]; (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{name}: dice {s['dice']:.4f} ({time.time()-t:.0f}s)", flush=True)
    return tr

def decode(z, texture=True):
    seeds = texture_seeds(seed, np.arange(len(z)))
    ims, labs = [], []
    for i in range(0, len(z), 64):
        if texture: a, b = model.sample(z[i:i+64], seeds[i:i+64])
        else: a, b = model.decode_with_labels(z[i:i+64], None, None)
        ims.append(a); labs.append(b)
    return SyntheticCases(torch.cat(ims), torch.cat(labs), {})

codes = model.lattice[model.assignment]
rng = np.random.default_rng(seed)
for st in strategies:
    if f"{tag}:{st}" in results or (st == "classic" and any(r.endswith(":classic") for r in results)): print(st, "done"); continue
    if st == "classic":
        run(st, None)
    elif st == "fresh":
        run(st, SyntheticCases(*draw(model, n, seed), {}))
    elif st == "fresh-notex":
        z = reference_draws(np.arange(n), model.latent_dim, model.lattice_kind, seed)[0]
        run(st, decode(z, texture=False))
    elif st.startswith("near"):  # near-code draws: u = code_j + sigma * eps
        sigma = float(st[4:])
        j = rng.permutation(np.resize(np.arange(len(codes)), n))
        run(st, decode(codes[j] + sigma * rng.standard_normal((n, codes.shape[1]))))
    elif st.startswith("mix"):  # pairs of codes, convex mix lambda in [0, a]
        a = float(st[3:])
        i, j = rng.integers(0, len(codes), n), rng.integers(0, len(codes), n)
        lam = rng.uniform(0, a, (n, 1))
        run(st, decode((1 - lam) * codes[i] + lam * codes[j]))
