"""Seeded corruptions of every builder's sample raw input, and the build that must survive them.

A corruption picks one to three files of a sample (metadata files more often than images) and
truncates them, flips bytes, inserts NUL or lone CR bytes, inserts a 24 MB field without separators,
or replaces a compressed file with a bomb of its own kind (about 1000:1: 256 MB of one byte). The
build then runs in a child process and must end with exit 0 and exact accounting, or exit 2 and one
line on stderr; never a traceback, never a hang, and its peak RSS stays under 1 GB. Strictly (the
default; ``VLDATA_FUZZ_STRICT=0`` relaxes it), a damaged file must be handled by the builder itself:
rows that only the engine's last resort could count (``reader_error``) are failures too.

``python tests/fuzz_raw.py --n 200 [--builder NAME] [--seed S]`` (``make fuzz N=200``) runs as many
as asked and prints the seed of each failure, so that ``--seed S`` replays it; the test suite runs a
few per builder (tests/test_fuzz_builds.py).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

BUILDERS = ("scin", "wit", "open_images", "medtrinity", "arboretum", "laion")
RSS_LIMIT_KB = 1 << 20  # 1 GB
# strict: an exception that only the engine's last resort caught (``reader_error`` rows, or "could not be
# read" for partitions()) is a defect of the builder: it should name the file and count its own reason
STRICT = os.environ.get("VLDATA_FUZZ_STRICT", "1") != "0"
BOMB_BYTES = 256 << 20
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt", ".json")
RUNNER = r"""
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=float(__import__("os").environ["FUZZ_TIMEOUT"]))
print(json.dumps({"rc": proc.returncode, "err": proc.stderr[-4000:],
                  "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@dataclass
class Outcome:
    builder: str
    seed: int
    what: list[str]
    problem: str | None  # None: the build behaved


def write_samples(root: Path) -> dict[str, Path]:
    """One small sample per builder (written once; each case copies it)."""
    out = {}
    for name in BUILDERS:
        raw = root / name
        if not raw.exists():
            subprocess.run([sys.executable, "-m", "vldata.cli", "sample", name, str(raw), "--n", "8"], check=True,
                           capture_output=True)
        out[name] = raw
    return out


def _bomb(path: Path) -> None:
    """Replace a compressed file by a bomb of the same kind."""
    name = path.name
    if name.endswith(".tar.gz") or name.endswith(".tar.zst") or name.endswith(".tar"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("bomb/0000.jpg")
            info.size = BOMB_BYTES
            tar.addfile(info, _Zeros(BOMB_BYTES))
        data = buf.getvalue()
        if name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        elif name.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdCompressor(level=19).compress(data)
        path.write_bytes(data)
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(b"a" * BOMB_BYTES, compresslevel=9, mtime=0))  # one 256 MB line
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("bomb.png", b"\0" * BOMB_BYTES)
    else:
        _huge_field(path, random.Random(0))


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = b"\0" * n
        self.left -= n
        return n


def _huge_field(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    packed = path.name.endswith(".gz")
    if packed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):  # an earlier corruption of this case broke it: insert raw
            packed = False
    at = rng.randrange(len(data) + 1)
    data = data[:at] + b"A" * (24 << 20) + data[at:]
    path.write_bytes(gzip.compress(data, mtime=0) if packed else data)


def corrupt(raw: Path, rng: random.Random) -> list[str]:
    files = sorted(p for p in raw.rglob("*") if p.is_file() and p.name != "loopback.json")
    meta = [p for p in files if p.suffix not in (".jpg", ".jpeg", ".png", ".webp", ".gif")]
    done = []
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(meta if meta and rng.random() < 0.75 else files)
        kind = rng.choice(["truncate", "flip", "insert", "huge_field", "bomb"])
        data = path.read_bytes()
        if kind == "truncate":
            path.write_bytes(data[: rng.randrange(len(data) + 1)])
        elif kind == "flip":
            b = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            path.write_bytes(bytes(b))
        elif kind == "insert":
            b = bytearray(data)
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b) + 1):0] = rng.choice([b"\0", b"\r", b"\xff\xfe", b'"'])
            path.write_bytes(bytes(b))
        elif kind == "huge_field":
            _huge_field(path, rng)
        else:
            _bomb(path)
        done.append(f"{kind} {path.relative_to(raw)}")
    return done


def run_case(builder: str, sample: Path, seed: int, work: Path, timeout: float = 180) -> Outcome:
    rng = random.Random(f"{builder}:{seed}")
    case = work / f"{builder}-{seed}"
    shutil.rmtree(case, ignore_errors=True)
    raw, out = case / "raw", case / "out"
    shutil.copytree(sample, raw)
    what = corrupt(raw, rng)
    cmd = [sys.executable, "-c", RUNNER, sys.executable, "-m", "vldata.cli", "build", builder, "--raw", str(raw),
           "--out", str(out), "--workers", "2"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FUZZ_TIMEOUT": str(timeout)},
                              timeout=timeout + 30)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        return Outcome(builder, seed, what, f"hung (over {timeout:.0f} s) or the runner failed")
    problem = None
    err_lines = result["err"].strip().splitlines()
    if result["rss_kb"] > RSS_LIMIT_KB:
        problem = f"peak RSS {result['rss_kb'] // 1024} MB"
    elif result["rc"] == 2:
        if len(err_lines) != 1 or not err_lines[0].startswith("vldata: error: "):
            problem = f"exit 2 without exactly one error line: {result['err'][-600:]!r}"
        elif STRICT and "could not be read (" in err_lines[0]:  # the engine's last resort, not the builder
            problem = f"an exception the builder's partitions() let through: {err_lines[0][:400]!r}"
    elif result["rc"] != 0:
        problem = f"exit {result['rc']}: {result['err'][-600:]!r}"
    elif "Traceback" in result["err"]:
        problem = f"a traceback on stderr: {result['err'][-600:]!r}"
    else:
        stats = json.loads((out / "build" / "stats.json").read_text())
        for split, s in stats["splits"].items():
            if s["input_rows"] != s["written"] + s["failed"] + s["filtered"] + s["duplicates"]:
                problem = f"accounting of {split} does not balance: {s}"
            elif STRICT and s["reasons"]["failed"].get("reader_error"):  # the engine's last resort caught it
                failures = pq.read_table(out / "build" / "failures.parquet").to_pylist()
                problem = "reader_error (an exception the builder let through): " + next(
                    f["message"] for f in failures if f["reason"] == "reader_error")[:400]
    if problem is None:
        shutil.rmtree(case, ignore_errors=True)
    return Outcome(builder, seed, what, problem)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="cases per builder")
    ap.add_argument("--builder", action="append", choices=BUILDERS, help="only these builders")
    ap.add_argument("--seed", type=int, help="replay this one seed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vldata-fuzz-"))
    samples = write_samples(work / "samples")
    seeds = [args.seed] if args.seed is not None else range(args.n)
    failures = 0
    for builder in args.builder or BUILDERS:
        for seed in seeds:
            o = run_case(builder, samples[builder], seed, work)
            if o.problem:
                failures += 1
                print(f"FAIL {builder} --seed {seed}: {o.problem}  [{'; '.join(o.what)}]", flush=True)
    print(f"{failures} failure(s); cases kept under {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
