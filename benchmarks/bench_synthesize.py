"""Synthesis throughput and peak memory, N = 50 and N = 500 (issue figures for the README).

    python benchmarks/bench_synthesize.py --model nsql-model [--n 50 500] [--both]

``--both`` times every N with the model's residual texture and without it (``--no-texture``).

Each N runs in a fresh process so its peak resident memory (ru_maxrss) is its own;
the time includes writing compressed NIfTI files and sidecars (not the preview).
A model trained for a single epoch decodes exactly as fast as a finished one, so
`nsql-med fit sample_data --config volume3d --epochs 1 --out m3d` is enough to time 3D.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
model, out, n, texture = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "texture"
start = time.perf_counter()
synthesize(SynthesizeOptions(model=model, out=out, n=n, seed=0, device="cpu", texture=texture), show_progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"n": n, "texture": texture, "seconds": round(seconds, 2), "files_per_second": round(n / seconds, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--both", action="store_true", help="also time each N without the residual texture")
    args = parser.parse_args()
    for n in args.n:
        for texture in ("texture", "none") if args.both else ("texture",):
            with tempfile.TemporaryDirectory() as tmp:
                result = subprocess.run([sys.executable, "-c", CHILD, args.model, f"{tmp}/synth", str(n), texture],
                                        capture_output=True, text=True, check=True)
                print(json.dumps({"model": args.model, **json.loads(result.stdout)}))


if __name__ == "__main__":
    main()
