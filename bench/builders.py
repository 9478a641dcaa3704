"""Every builder's throughput and peak memory on its own generated input, with 1 and 2 workers.

Usage: python bench/builders.py [--builders wit medtrinity arboretum ...] [--n 10000] [--workers 1 2]
For each builder it writes the builder's synthetic sample with N rows once (``write_sample``), then
runs ``vldata build`` (both formats) in a fresh wrapper process per worker count, and prints input
rows/s, CPU ms per input row (all processes of the build) and the peak RSS of the largest process.
URL-based samples are served from 127.0.0.1 by the builder's own sample server during the build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's builders, not bench/builders.py

from measure import measure_command  # noqa: E402  (bench/measure.py)



def run_build(name: str, raw: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "vldata.cli", "build", name, "--raw", str(raw), "--out", str(out),
           "--workers", str(workers)]
    result = measure_command(cmd)
    stats = json.loads((out / "build" / "stats.json").read_text())["total"]
    result["input_rows"], result["written"] = stats["input_rows"], stats["written"]
    return result


def main() -> None:
    import vldata

    ap = argparse.ArgumentParser()
    ap.add_argument("--builders", nargs="+", default=[b for b in vldata.list_builders() if b != "laion"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"{'builder':<12} {'rows':>7} {'workers':>7} {'rows/s':>8} {'CPU ms/row':>11} {'peak RSS MB':>12} "
          f"{'written':>8}  (sample written in)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.builders:
            raw = Path(tmp) / f"{name}_raw"
            t0 = time.perf_counter()
            vldata.get_builder(name).write_sample(raw, args.n, 0)
            made = time.perf_counter() - t0
            for w in args.workers:
                out = Path(tmp) / f"{name}_out_{w}"
                r = run_build(name, raw, out, w)
                print(f"{name:<12} {r['input_rows']:>7} {w:>7} {r['input_rows'] / r['wall']:>8.1f} "
                      f"{1000 * r['cpu'] / r['input_rows']:>11.2f} {r['maxrss_mb']:>12.0f} {r['written']:>8}  "
                      f"({made:.0f}s)", flush=True)
                shutil.rmtree(out)
            shutil.rmtree(raw)


if __name__ == "__main__":
    main()
