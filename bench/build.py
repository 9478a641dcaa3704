"""SCIN build throughput and peak memory, by number of cases and workers.

Usage: python bench/build.py [--cases 1000 10000] [--workers 1 2] [--shuffle 0 none]
For each size it writes the synthetic SCIN sample once, then builds it (both formats) in a fresh
`vldata build` process per worker count and `--shuffle` value (a seed, the default order, or `none`,
input order), and prints cases/s, CPU-seconds per case (all processes), the peak RSS of the largest
process and the size of the written split. Build memory must not grow with the number of cases,
shuffled or not (a shuffled split is spilled to buckets of at most ~64 MB on disk).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's builders, not this folder's builders.py

from measure import measure_command  # noqa: E402  (bench/measure.py)





def run_build(raw: Path, out: Path, workers: int, shuffle: str = "0") -> dict:
    """One build in a fresh wrapper process, so that CPU and peak RSS are this build's alone
    (the build process and its workers; ru_maxrss is the largest of them)."""
    cmd = [sys.executable, "-m", "vldata.cli", "build", "scin", "--raw", str(raw), "--out", str(out),
           "--workers", str(workers), "--shuffle", shuffle]
    return measure_command(cmd)


def split_mb(out: Path) -> float:
    return sum(f.stat().st_size for f in (out / "parquet" / "data").glob("*.parquet")) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shuffle", nargs="+", default=["0", "none"], help="--shuffle values to compare")
    args = ap.parse_args()
    from builders.scin.sample import write_sample

    print(f"{'cases':>7} {'workers':>7} {'shuffle':>7} {'cases/s':>9} {'cpu-ms/case':>12} {'peak RSS MB':>12} "
          f"{'split MB':>9}  (peak RSS: largest process of the build)")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cases:
            raw = Path(tmp) / f"raw{n}"
            write_sample(raw, n=n, seed=0)
            for w in args.workers:
                for shuffle in args.shuffle:
                    out = Path(tmp) / f"out{n}_{w}_{shuffle}"
                    r = run_build(raw, out, w, shuffle)
                    print(f"{n:>7} {w:>7} {shuffle:>7} {n / r['wall']:>9.1f} {1000 * r['cpu'] / n:>12.2f} "
                          f"{r['maxrss_mb']:>12.0f} {split_mb(out):>9.0f}", flush=True)
                    shutil.rmtree(out)


if __name__ == "__main__":
    main()
