"""utility.json's summary, utility.md and utility.png: mean ± sd per arm and k, and paired differences.

Arms are compared with real + classic augmentation, the practitioner's default, seed by
seed: each seed shares the test subjects, the training subjects, the network's initial
weights and its batches across arms, so the per-seed difference removes what the split
alone does. Its 95 % interval is a t interval over the seeds (none from a single seed).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from rich.table import Table
from scipy import stats

from neurosql_med.evaluation.utility.arms import REFERENCE_ARM, label, uses_neurosql
from neurosql_med.evaluation.utility.networks import BATCH_SIZE, HEADLINE, LR, PRIMARY
from neurosql_med.evaluation.utility.tasks import parse_task
from neurosql_med.viz.plots import save_figure

MEAN_PREDICTOR = "*training mean, no image*"  # regression's yardstick row
METRIC_NAMES = {"dice": "mean Dice", "mae": "MAE", "auc": "AUC", "balanced_accuracy": "balanced accuracy"}
DIGITS = 3


def _values(runs: Sequence[dict], arm: str, k: int, metric: str) -> dict[int, float]:
    return {r["seed"]: r["scores"][metric] for r in runs
            if r["arm"] == arm and r["k"] == k and r["scores"].get(metric) is not None}


def summarize(runs: Sequence[dict], arms: Sequence[str], ks: Sequence[int], metrics: Sequence[str]) -> dict:
    """{metric: {arm: {k: mean, sd (0 for one seed), values by seed}}}, plus each NeuroSQL arm's paired difference."""
    summary: dict = {"scores": {}, "against_classic": {}}
    for metric in metrics:
        summary["scores"][metric] = {arm: {str(k): stat(list(_values(runs, arm, k, metric).values())) for k in ks}
                                     for arm in arms}
        if REFERENCE_ARM in arms:
            summary["against_classic"][metric] = {
                arm: {str(k): paired_difference(_values(runs, arm, k, metric), _values(runs, REFERENCE_ARM, k, metric))
                      for k in ks} for arm in arms if uses_neurosql(arm)}
    return summary


def stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}


def paired_difference(arm: dict[int, float], reference: dict[int, float]) -> dict:
    """Mean of ``arm`` − ``reference`` over the seeds both ran, with a 95 % t interval (None below two seeds)."""
    seeds = sorted(set(arm) & set(reference))
    diffs = np.array([arm[s] - reference[s] for s in seeds])
    if len(diffs) == 0:
        return {"mean": None, "low": None, "high": None, "seeds": 0}
    if len(diffs) == 1:
        return {"mean": float(diffs[0]), "low": None, "high": None, "seeds": 1}
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return {"mean": float(diffs.mean()), "low": float(diffs.mean() - half), "high": float(diffs.mean() + half),
            "seeds": len(diffs)}


def best_arms(summary: dict, metric: str, higher: bool) -> dict[str, str]:
    """Per k, the arm with the best mean score."""
    scores = summary["scores"][metric]
    best: dict[str, str] = {}
    for k in next(iter(scores.values())):
        means = {arm: s[k]["mean"] for arm, s in scores.items() if s[k]["mean"] is not None}
        if means:
            best[k] = (max if higher else min)(means, key=lambda a: means[a])
    return best


def _cell(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if len(stat["values"]) > 1 else "")


def _difference(d: dict, digits: int) -> str:
    if d["mean"] is None:
        return "–"
    interval = "" if d["low"] is None else f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"{d['mean']:+.{digits}f}{interval}"


def score_table(summary: dict, metric: str, higher: bool, digits: int) -> list[str]:
    """Markdown rows: one per arm, one column per k, the best arm per k in bold."""
    scores, best = summary["scores"][metric], best_arms(summary, metric, higher)
    ks = list(next(iter(scores.values())))
    lines = ["| arm | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for arm, by_k in scores.items():
        cells = [f"**{_cell(by_k[k], digits)}**" if best.get(k) == arm else _cell(by_k[k], digits) for k in ks]
        lines.append(f"| {label(arm)} | " + " | ".join(cells) + " |")
    if reference := summary.get("reference", {}).get(metric):
        lines.append(f"| {MEAN_PREDICTOR} | " + " | ".join(_cell(reference[k], digits) for k in ks) + " |")
    return lines


def difference_table(summary: dict, metric: str, digits: int) -> list[str]:
    """Markdown rows: each NeuroSQL arm minus real + classic, per k, mean [95 % paired interval]."""
    against = summary["against_classic"].get(metric, {})
    if not against:
        return []
    ks = list(next(iter(against.values())))
    lines = ["| arm − real + classic | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    lines += [f"| {label(arm)} | " + " | ".join(_difference(by_k[k], digits) for k in ks) + " |"
              for arm, by_k in against.items()]
    return lines


def headline(result: dict) -> list[tuple[str, bool]]:
    """(metric, higher is better) for the scores a grid's tables and picture show, the ranking score first."""
    kind = parse_task(result["settings"]["task"]).kind
    primary, direction = PRIMARY[kind]
    lower = {primary} if direction == "lower" else set()
    return [(m, m not in lower) for m in HEADLINE[kind]]


def utility_figure(path: Path, result: dict) -> None:
    """Score against k, one line per arm with ± sd error bars, one panel per headline metric."""
    shown = headline(result)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.6 * len(shown), 4.0), squeeze=False)
    for ax, (metric, higher) in zip(axes[0], shown):
        for arm, by_k in result["summary"]["scores"][metric].items():
            ks = [k for k, s in by_k.items() if s["mean"] is not None]
            ax.errorbar([int(k) for k in ks], [by_k[k]["mean"] for k in ks], yerr=[by_k[k]["sd"] for k in ks],
                        marker="o", capsize=3, label=label(arm))
        if reference := result["summary"].get("reference", {}).get(metric):
            ax.plot([int(k) for k in reference], [r["mean"] for r in reference.values()], color="0.5", linestyle="--",
                    label=MEAN_PREDICTOR.strip("*"))
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(k) for k in result["settings"]["train_subjects"]])
        ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
        ax.set_xlabel("training subjects k")
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} ({'higher' if higher else 'lower'} is better)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(_title(result))
    fig.tight_layout()
    save_figure(fig, path)


def _title(result: dict) -> str:
    s = result["settings"]
    return f"nsql-med utility: {s['task']} on {s['scans']} ({len(s['seeds'])} seed(s), mean ± sd)"


def utility_markdown(result: dict) -> str:
    lines = [f"# {_title(result)}", ""]
    for metric, higher in headline(result):
        name = METRIC_NAMES.get(metric, metric)
        lines += [f"## {name} ({'higher' if higher else 'lower'} is better): mean ± sd over seeds, best arm per k in bold",
                  "", *score_table(result["summary"], metric, higher, DIGITS), ""]
        if differences := difference_table(result["summary"], metric, DIGITS):
            lines += [f"Each NeuroSQL arm minus real + classic ({name}), per seed, then mean "
                      "[95 % t interval over seeds]:", "", *differences, ""]
    return "\n".join(lines + _how(result))


def _how(result: dict) -> list[str]:
    """The notes under the tables: what was trained on what, and how long it took."""
    s, runs = result["settings"], result["runs"]
    kind = parse_task(s["task"]).kind
    split = next(iter(result["splits"].values()), {"test": []})
    test = f"the --holdout folder {s['holdout']}" if s["holdout"] else \
        f"{len(split['test'])} subjects drawn per seed ({s['holdout_fraction']:g} of them)"
    strata = {"segment": "one labelled model on the k subjects (each case comes with its label map)",
              "regress": "one model conditioned on the column, its cases asked for values drawn uniformly over "
                         "the k subjects' range",
              "classify": "one model conditioned on the column, its cases cycling through the levels (balanced)"}[kind]
    fit_seconds = sum(f["seconds"] for f in result["fits"])
    near = s.get("near_codes")  # absent from grids made before --near-codes
    drawn = "fresh reference draws" if near is None else f"latents drawn near the training codes (scale {near:g})"
    return [
        "## How it was run", "",
        f"- Test subjects: {test}; never in a training set or a NeuroSQL fit. Training subjects: the first k of "
        "the seed's order (nested: each smaller training set is part of every larger one).",
        f"- Network: {runs[0]['network'] if runs else '–'}; {s['steps']} Adam steps (lr {LR[kind]:g}), batch "
        f"{BATCH_SIZE}, in every arm; initial weights and batch order seeded by the seed, so arms differ only in data.",
        f"- Classic augmentation (MONAI, strength {s['classic']['strength']:g}): {'; '.join(s['classic']['transforms'])}.",
        f"- NeuroSQL: config {s['config']}, {s['nsql_steps']} generator steps per training set, fitted on the k "
        f"training subjects only: {strata}; {', '.join(f'{r:g}' for r in s['synthetic_per_real'])} synthetic "
        f"case(s) per real training sample ({drawn}; a lower ratio's cases are the first of a higher one's); "
        f"synthetic share of each batch: {s['schedule']}.",
        "- Regression and classification are scored per subject (mean prediction over its samples); "
        "segmentation by Dice per class over the test samples (background excluded), then their mean."
        + (f" {MEAN_PREDICTOR.strip('*').capitalize()}: the MAE of predicting every test subject as the mean of "
           "the k training subjects, what a network that learned nothing from the images scores." if kind == "regress"
           else ""),
        f"- Time: {sum(r['seconds'] for r in runs) / 60:.1f} min of downstream training over {len(runs)} runs, "
        f"{fit_seconds / 60:.1f} min of NeuroSQL fits, on {s['device']}.",
        "",
    ]


def utility_table(result: dict) -> Table:
    """The ranking score per arm and k, for the terminal."""
    metric, higher = headline(result)[0]
    scores, best = result["summary"]["scores"][metric], best_arms(result["summary"], metric, higher)
    table = Table(title=f"{METRIC_NAMES.get(metric, metric)} ({'higher' if higher else 'lower'} is better), "
                        f"{result['settings']['task']}")
    table.add_column("arm")
    for k in result["settings"]["train_subjects"]:
        table.add_column(f"k = {k}", justify="right")
    for arm, by_k in scores.items():
        table.add_row(label(arm), *(f"[bold]{_cell(by_k[k], DIGITS)}[/]" if best.get(k) == arm else _cell(by_k[k], DIGITS)
                                     for k in map(str, result["settings"]["train_subjects"])))
    return table
