"""Cost of indexing plain webdataset tars (``vldata index``) and of opening them afterwards.

Usage: python bench/index_cost.py [--n 10000] [--rounds 2] [--workdir DIR]

Builds (once, cached in --workdir) N samples as plain webdataset tars written by
``webdataset.TarWriter`` (KEY.jpg: a 256 px photo-like JPEG from bench/loader.py's ``photo()``,
KEY.txt, KEY.json), 1000 samples per tar. Then, --rounds times into a fresh temporary index folder,
``vldata.read.tar_index.index(tars, index_dir=...)`` (what ``vldata index PATH --index-dir DIR`` runs):
samples/s, CPU seconds (this process and its children, from getrusage), the bytes it read against the
tars' total, and the bytes the index wrote. Then a second ``vldata.open(tars, index_dir=...)``, which
must read no tar: every file it opens is recorded by an audit hook (``open`` events) and its bytes read
come from /proc/self/io; the same for ``vldata.open(tars)`` through the cache ($VLDATA_CACHE, a
temporary folder here): the first open builds the index there, the second only checks it. Finally the
CLI once, in a fresh process (start-up included), to show its report.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from loader import photo

PER_TAR = 1000


def sample(i: int) -> tuple[str, bytes, str, dict]:
    rng = np.random.default_rng(i)
    key = f"{i:09d}"
    caption = f"synthetic photo {i}"
    return key, photo(rng, 256), caption, {"key": key, "caption": caption, "width": 256, "status": "success"}


def build(workdir: Path, n: int) -> Path:
    tars = workdir / f"tars_{n}"
    if (workdir / f"done_{n}").exists():
        return tars
    import webdataset as wds

    tars.mkdir(parents=True, exist_ok=True)
    with get_context("fork").Pool(2) as pool:
        for s, start in enumerate(range(0, n, PER_TAR)):
            with wds.TarWriter(str(tars / f"{s:05d}.tar")) as sink:
                for key, data, caption, meta in pool.imap(sample, range(start, min(n, start + PER_TAR)), chunksize=32):
                    sink.write({"__key__": key, "jpg": data, "txt": caption, "json": meta})
    (workdir / f"done_{n}").write_text("ok\n")
    return tars


def cpu_now() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def rchar() -> int:
    """Bytes this process has read through read() calls, page cache or not (/proc/self/io)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


_opened: list[str] | None = None


def _audit(event: str, args) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path != "/proc/self/io":  # our own measurement
            _opened.append(path)


def watched_open(tars: Path, **kwargs):
    """vldata.open(tars) timed, with every file it opens and the bytes it reads."""
    import vldata

    global _opened
    _opened = []
    r0, c0, t0 = rchar(), cpu_now(), time.perf_counter()
    src = vldata.open(str(tars), **kwargs)
    wall, cpu, read = time.perf_counter() - t0, cpu_now() - c0, rchar() - r0
    opened, _opened = _opened, None
    return src, wall, cpu, read, opened


def folder_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vldata-bench-index")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vldata-index-"))
    os.environ["VLDATA_CACHE"] = str(scratch / "cache")  # a cache of our own: the first open must build

    from vldata.read.tar_index import index

    for module in ("vldata.read.source", "vldata.read.hf_parquet"):  # open() imports them on first use
        importlib.import_module(module)
    t0 = time.perf_counter()
    tars = build(args.workdir, args.n)
    tar_files = sorted(tars.glob("*.tar"))
    tar_bytes = sum(p.stat().st_size for p in tar_files)
    print(f"{args.n} samples (256 px JPEG + txt + json) in {len(tar_files)} tars, {tar_bytes / 1e6:.1f} MB "
          f"(built or found in {time.perf_counter() - t0:.0f}s; in the page cache, so CPU is what is measured)")
    sys.addaudithook(_audit)

    runs = []
    for r in range(args.rounds):
        out = scratch / f"index{r}"
        c0, t0 = cpu_now(), time.perf_counter()
        report = index(str(tars), index_dir=str(out), progress=False)
        wall, cpu = time.perf_counter() - t0, cpu_now() - c0
        samples = report.manifest["plain"]["stats"]["samples"]
        written, files = folder_bytes(out)
        runs.append((wall, cpu, samples, report.bytes_read, written, files))
        print(f"  round {r + 1}: {samples / wall:,.0f} samples/s, {cpu:.2f} CPU-s, read {report.bytes_read:,} B, "
              f"wrote {written:,} B in {files} files", flush=True)
        assert samples == args.n, (samples, args.n)
        if r < args.rounds - 1:
            shutil.rmtree(out)
    best_wall = min(r[0] for r in runs)
    best_cpu = min(r[1] for r in runs)
    _, _, samples, read, written, files = runs[-1]
    print(f"\nindex ({len(tar_files)} tars, best of {args.rounds}): {samples / best_wall:,.0f} samples/s "
          f"({tar_bytes / best_wall / 1e6:,.0f} MB/s of tar), {best_cpu:.2f} CPU-s "
          f"({1e6 * best_cpu / samples:.1f} CPU us/sample); read {read:,} B = {read / tar_bytes:.3f} x the tars' "
          f"{tar_bytes:,} B; wrote {written:,} B in {files} files ({written / tar_bytes:.2%} of the tars, "
          f"{written / samples:.0f} B/sample)")
    print(report)

    index_dir = str(scratch / f"index{args.rounds - 1}")
    rows = []
    for label, kwargs in (("vldata.open(tars, index_dir=...), index there", {"index_dir": index_dir}),
                          ("vldata.open(tars), first: builds the cache", {}),
                          ("vldata.open(tars), second: cache current", {})):
        src, wall, cpu, read, opened = watched_open(tars, **kwargs)
        opened_tars = [p for p in opened if p.endswith(".tar")]
        rows.append((label, wall, cpu, read, len(opened), len(opened_tars)))
        assert len(src) == args.n, (label, len(src))
    src[args.n - 1]  # the source reads (after the watched open)
    print(f"\n{'open':<46} {'wall s':>7} {'CPU s':>6} {'bytes read':>12} {'files opened':>13} {'tars opened':>12}")
    for label, wall, cpu, read, n_opened, n_tars in rows:
        print(f"{label:<46} {wall:>7.3f} {cpu:>6.3f} {read:>12,} {n_opened:>13} {n_tars:>12}")
    for label, *_, n_tars in (rows[0], rows[2]):
        print(f"{label}: {'reads no tar' if n_tars == 0 else f'OPENED {n_tars} TARS'}")

    cli = scratch / "cli"
    for attempt in ("first", "again"):
        c0, t0 = cpu_now(), time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "vldata.cli", "index", str(tars), "--index-dir", str(cli)],
                              check=False, capture_output=True, text=True, cwd=BENCH.parent)
        wall, cpu = time.perf_counter() - t0, cpu_now() - c0
        print(f"\n`vldata index {tars} --index-dir {cli}` ({attempt}, fresh process): exit {done.returncode}, "
              f"{wall:.2f}s, {cpu:.2f} CPU-s")
        print(done.stdout.strip() or done.stderr.strip()[-2000:])
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
