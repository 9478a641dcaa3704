"""Local processes versus Ray tasks on this machine: build throughput and the cost of a partition.

Usage: python bench/scale.py [--builder laion] [--n 4000] [--rows-per-partition 500] [--tiny 20]
                             [--workers 2] [--repeats 2]
Writes the builder's sample (LAION: URLs served from 127.0.0.1 by the sample's own server) once,
then builds it with ``--executor local`` and ``--executor ray`` (same ``--workers``, a local Ray
with that many CPUs), alternating, ``--repeats`` times, first with ``--rows-per-partition`` rows per
partition and then with ``--tiny`` rows per partition. Prints wall seconds and input rows/s per run,
whether the shards are byte-identical, Ray's fixed start-up cost (``ray.init`` + ``shutdown``), and
the overhead per partition of each executor: the extra wall time of the tiny-partition build over
the normal one, divided by the extra number of partitions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import measure_command  # noqa: E402  (bench/measure.py)


def shard_digest(out: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(list(out.glob("parquet/data/*.parquet")) + list(out.glob("webdataset/*.tar"))):
        h.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def build(name: str, raw: Path, out: Path, executor: str, workers: int, rows: int) -> dict:
    cmd = [sys.executable, "-m", "vldata.cli", "build", name, "--raw", str(raw), "--out", str(out),
           "--executor", executor, "--workers", str(workers), "--set", f"rows_per_partition={rows}"]
    result = measure_command(cmd)
    stats = json.loads((out / "build" / "stats.json").read_text())["total"]
    plan = json.loads((out / "build" / "plan.json").read_text())
    result.update(input_rows=stats["input_rows"], partitions=len(plan["partitions"]), digest=shard_digest(out))
    shutil.rmtree(out)
    return result


def ray_startup(workers: int) -> float:
    code = ("import time, ray; t = time.perf_counter(); "
            f"ray.init(num_cpus={workers}, include_dashboard=False, log_to_driver=False); ray.shutdown(); "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
                 .stdout.strip().splitlines()[-1])


def main() -> None:
    import vldata

    ap = argparse.ArgumentParser()
    ap.add_argument("--builder", default="laion")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--rows-per-partition", type=int, default=500)
    ap.add_argument("--tiny", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    results: dict[tuple[str, int], list[dict]] = {}
    print(f"{'executor':<8} {'rows/part':>9} {'parts':>6} {'wall s':>7} {'rows/s':>8} {'shards':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        vldata.get_builder(args.builder).write_sample(raw, args.n, 0)
        for rows in (args.rows_per_partition, args.tiny):
            for _ in range(args.repeats):
                for executor in ("local", "ray"):
                    r = build(args.builder, raw, Path(tmp) / "out", executor, args.workers, rows)
                    results.setdefault((executor, rows), []).append(r)
                    print(f"{executor:<8} {rows:>9} {r['partitions']:>6} {r['wall']:>7.2f} "
                          f"{r['input_rows'] / r['wall']:>8.1f} {r['digest']:>17}", flush=True)
    digests = {r["digest"] for rs in results.values() for r in rs}
    print(f"\nshards identical across executors and partition sizes: {'yes' if len(digests) == 1 else 'NO'}")
    startup = statistics.median(ray_startup(args.workers) for _ in range(3))
    print(f"ray.init + shutdown (local, {args.workers} CPUs), median of 3: {startup:.2f} s")
    for executor in ("local", "ray"):
        normal, tiny = results[(executor, args.rows_per_partition)], results[(executor, args.tiny)]
        wall_n, wall_t = statistics.median(r["wall"] for r in normal), statistics.median(r["wall"] for r in tiny)
        extra_parts = tiny[0]["partitions"] - normal[0]["partitions"]
        print(f"{executor:<6} median wall {wall_n:.2f} s at {args.rows_per_partition} rows/partition "
              f"({normal[0]['input_rows'] / wall_n:.0f} rows/s), {wall_t:.2f} s at {args.tiny}: "
              f"overhead {1000 * (wall_t - wall_n) / extra_parts:.1f} ms per partition")


if __name__ == "__main__":
    main()
