"""The realism figures alone: the C2ST (fast or strong, with its controls), slice mixing and coherence.

`nsql-med evaluate` scores these beside fidelity, diversity, the memorization audit and
the label-agreement UNet; this script runs only the realism figures, for a synthetic
folder (any generator) against a real cohort, and prints the evaluate table's rows.
With --model, the model's preprocessing is used and, when --real holds its training
scans, the reconstruction C2ST is reported beside the samples'.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/bench_realism.py --real sample_data --synth synth --model model \\
        --c2st strong --json realism.json
    python benchmarks/bench_realism.py --real realistic-cohort/bids --synth other-synth --config default
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neurosql_med.evaluation.evaluate import anatomy_rows, read_sides, realism_rows, realism_sections
from neurosql_med.evaluation.options import C2ST_CHOICES


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="folder of real scans")
    parser.add_argument("--synth", type=Path, required=True, help="folder of synthetic NIfTI images")
    parser.add_argument("--model", type=Path, help="the nsql-med model that wrote --synth")
    parser.add_argument("--config", default="default", help="preprocessing config without --model")
    parser.add_argument("--c2st", choices=C2ST_CHOICES, default="strong")
    parser.add_argument("--json", type=Path, help="write the sections here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sides = read_sides(args.real, args.synth, args.model, args.config)
    sections = realism_sections(sides, args.c2st)
    table = Table(title=f"{len(sides.images)} synthetic vs {len(sides.train)} real samples, "
                        f"{time.monotonic() - started:.0f} s")
    for column in ("section", "metric", "value", "reading"):
        table.add_column(column)
    for row in realism_rows(sections) + anatomy_rows(sections):
        table.add_row(*row)
    Console(width=200).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(sections, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
