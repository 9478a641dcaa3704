"""`vldata build laion` against img2dataset on the same URL list, served from 127.0.0.1.

Usage: python bench/build_vs_img2dataset.py [--n 2000] [--runs 3] [--processes 2] [--threads 16]
                                            [--workdir DIR] [--venv DIR] [--img2dataset SPEC ...]

It installs img2dataset into its own throwaway virtualenv (``--venv``, default under /tmp; the first
installable of the ``--img2dataset`` specs), writes N images of varied sizes (web-photo-like JPEGs,
150 to 2000 px on the long side, a few PNG/WebP) plus a few failing URLs (404, an HTML page, a
truncated JPEG) and a LAION-400M-shaped metadata parquet, serves them from a threaded HTTP server on
127.0.0.1 (in this process), and runs the two tools alternately ``--runs`` times with the same
resize (keep_ratio 256, JPEG quality 95), the same processes x threads, the same shard size (1000
rows), webdataset output, no retries. Each run happens in a fresh wrapper process, so its CPU time
(user + system of every process of the tool, from getrusage(RUSAGE_CHILDREN)) and peak RSS (the
largest process) are the run's alone. Prints samples/s (written samples per wall-clock second),
CPU-seconds per sample, peak RSS, the medians and the ratios. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_WRAPPER = """
import resource, subprocess, sys, time, json
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall": wall, "cpu": r.ru_utime + r.ru_stime,
                  "maxrss_mb": r.ru_maxrss / 1024, "tail": (proc.stdout + proc.stderr)[-2000:]}))
"""
REPO = Path(__file__).resolve().parents[1]


def ensure_img2dataset(venv: Path, specs: list[str]) -> str:
    """img2dataset installed in ``venv``; returns its version. Tries each spec until one installs."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for spec in specs:
        print(f"installing {spec} into {venv} ...", flush=True)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
        if proc.returncode == 0:
            return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
        print(f"  {spec} does not install on Python {sys.version.split()[0]}:\n{proc.stderr[-1500:]}", flush=True)
    raise SystemExit("no img2dataset version could be installed")


def photo(rng: random.Random, w: int, h: int) -> bytes:
    """A JPEG that compresses and decodes like a photo: smooth regions, edges and sensor noise."""
    import numpy as np
    from PIL import Image, ImageFilter

    np_rng = np.random.default_rng(rng.getrandbits(32))
    coarse = np_rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    detail = Image.fromarray(np_rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8))
    img = Image.blend(img, detail.resize((w, h), Image.Resampling.NEAREST).filter(ImageFilter.SMOOTH), 0.25)
    arr = np.asarray(img, dtype=np.int16) + np_rng.normal(0, 5, (h, w, 1)).astype(np.int16)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.choice([75, 85, 90, 95]))
    return buf.getvalue()


def write_input(work: Path, n: int, port_placeholder: str = "PORT") -> tuple[Path, Path, int]:
    """site/ with the images and failing bodies, meta.parquet with URLs on 127.0.0.1:PORT."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    site, meta = work / "site", work / "meta.json"
    if meta.exists():
        return site, meta, json.loads(meta.read_text())["failing"]
    rng = random.Random(0)
    (site / "i").mkdir(parents=True, exist_ok=True)
    rows, failing = [], 0
    for i in range(n):
        kind = "ok"
        if i % 100 == 37:
            kind = ("missing", "html", "truncated")[(i // 100) % 3]
        long_side = int(min(2000, max(150, rng.lognormvariate(6.4, 0.5))))  # median ~600 px, like web photos
        ratio = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 1.25])
        w, h = (long_side, int(long_side / ratio)) if ratio >= 1 else (int(long_side * ratio), long_side)
        name = f"i/{i:05d}.jpg"
        if kind == "ok":
            if i % 50 == 11:  # a few PNG and WebP
                buf = io.BytesIO()
                Image.open(io.BytesIO(photo(rng, w, h))).save(buf, format=("PNG", "WEBP")[i % 2])
                name = f"i/{i:05d}.{('png', 'webp')[i % 2]}"
                (site / name).write_bytes(buf.getvalue())
            else:
                (site / name).write_bytes(photo(rng, w, h))
        elif kind == "html":
            (site / name).write_text("<!doctype html><html><body>moved</body></html>")
        elif kind == "truncated":
            (site / name).write_bytes(photo(rng, w, h)[:4000])
        failing += kind != "ok"
        rows.append({"SAMPLE_ID": i, "URL": f"http://127.0.0.1:{port_placeholder}/{name}", "TEXT": f"photo number {i}",
                     "HEIGHT": h, "WIDTH": w, "LICENSE": "?", "NSFW": "UNLIKELY", "similarity": 0.3 + (i % 10) / 100})
    pq.write_table(pa.Table.from_pylist(rows), work / "meta-template.parquet")
    meta.write_text(json.dumps({"n": n, "failing": failing}))
    return site, meta, failing


def metadata_for(work: Path, port: int) -> Path:
    """The metadata parquet with the server's real port (written fresh for this server)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(work / "meta-template.parquet")
    urls = pc.replace_substring(table.column("URL"), "PORT", str(port))
    table = table.set_column(table.schema.get_field_index("URL"), "URL", urls)
    raw = work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir()
    path = raw / "part-00000-00000000-0000-0000-0000-000000000000-c000.snappy.parquet"
    pq.write_table(table, path)
    return path


def measured(cmd: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed ({result['rc']}):\n{result['tail']}")
    return result


def run_vldata(meta: Path, out: Path, processes: int, threads: int) -> dict:
    cmd = [str(Path(sys.executable).with_name("vldata")), "build", "laion", "--raw", str(meta.parent), "--out", str(out),
           "--format", "webdataset", "--workers", str(processes), "--set", "rows_per_partition=1000",
           "--set", f"fetch.threads={threads}", "--set", f"fetch.per_host={threads}", "--set", "fetch.retries=0",
           "--set", "fetch.allow_private=true",  # the bench's own server on 127.0.0.1
           "--set", "image.resize_mode=keep_ratio", "--set", "image.image_size=256",
           "--set", "image.encode_format=jpeg", "--set", "image.encode_quality=95"]
    r = measured(cmd)
    r["written"] = json.loads((out / "build" / "stats.json").read_text())["total"]["written"]
    return r


def run_img2dataset(venv: Path, meta: Path, out: Path, processes: int, threads: int) -> dict:
    cmd = [str(venv / "bin" / "img2dataset"), "--url_list", str(meta), "--input_format", "parquet",
           "--url_col", "URL", "--caption_col", "TEXT", "--save_additional_columns", '["NSFW","similarity","LICENSE"]',
           "--output_format", "webdataset", "--output_folder", str(out), "--processes_count", str(processes),
           "--thread_count", str(threads), "--number_sample_per_shard", "1000", "--resize_mode", "keep_ratio",
           "--image_size", "256", "--encode_format", "jpg", "--encode_quality", "95", "--retries", "0",
           "--timeout", "10", "--extract_exif", "False", "--enable_wandb", "False", "--distributor", "multiprocessing"]
    r = measured(cmd)
    r["written"] = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vldata-bench-laion")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "vldata-bench-img2dataset-venv")
    ap.add_argument("--img2dataset", nargs="+", default=["img2dataset", "img2dataset==1.45.0", "img2dataset==1.41.0"])
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from vldata.ingest import loopback

    version = ensure_img2dataset(args.venv, args.img2dataset)
    work = args.workdir / f"n{args.n}"
    site, _, failing = write_input(work, args.n)
    print(f"img2dataset {version}; {args.n} URLs ({failing} failing) on 127.0.0.1; processes={args.processes} "
          f"threads={args.threads}; keep_ratio 256, JPEG q95, webdataset, 1000 rows per shard")
    results: dict[str, list[dict]] = {"vldata": [], "img2dataset": []}
    with loopback.serve(site) as base:
        meta = metadata_for(work, int(base.rsplit(":", 1)[1]))
        print(f"{'run':>3} {'tool':<12} {'written':>7} {'samples/s':>10} {'CPU s/sample':>13} {'peak RSS MB':>12}")
        for run in range(args.runs):
            for tool in ("vldata", "img2dataset"):
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                r = (run_vldata(meta, out, args.processes, args.threads) if tool == "vldata"
                     else run_img2dataset(args.venv, meta, out, args.processes, args.threads))
                r["rate"], r["cpu_per"] = r["written"] / r["wall"], r["cpu"] / r["written"]
                results[tool].append(r)
                print(f"{run + 1:>3} {tool:<12} {r['written']:>7} {r['rate']:>10.1f} {r['cpu_per']:>13.5f} "
                      f"{r['maxrss_mb']:>12.0f}", flush=True)
    med = {tool: {k: statistics.median(r[k] for r in rs) for k in ("rate", "cpu_per", "maxrss_mb", "written")}
           for tool, rs in results.items()}
    v, i = med["vldata"], med["img2dataset"]
    print(f"\nmedian of {args.runs}:")
    for tool, m in med.items():
        print(f"  {tool:<12} {m['rate']:8.1f} samples/s  {m['cpu_per'] * 1000:7.2f} CPU ms/sample  "
              f"{m['maxrss_mb']:6.0f} MB peak RSS  ({m['written']:.0f} written)")
    print(f"  vldata / img2dataset: throughput x{v['rate'] / i['rate']:.2f}, "
          f"CPU per sample x{i['cpu_per'] / v['cpu_per']:.2f} less, peak RSS x{v['maxrss_mb'] / i['maxrss_mb']:.2f}")
    # each round runs the two tools back to back: its ratio is less exposed to the machine's load drifting
    rounds = list(zip(results["vldata"], results["img2dataset"]))
    print("  per round (vldata / img2dataset): throughput "
          + ", ".join(f"x{a['rate'] / b['rate']:.2f}" for a, b in rounds)
          + "; CPU per sample " + ", ".join(f"x{b['cpu_per'] / a['cpu_per']:.2f}" for a, b in rounds))


if __name__ == "__main__":
    main()
