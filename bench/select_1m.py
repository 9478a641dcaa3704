"""``vldata select`` on 1,000,000 rows of a synthetic LAION-style build (metadata only): wall seconds,
CPU seconds and peak RSS per rule.

Usage: python bench/select_1m.py [--out DIR] [--rows 1000000] [--shards 10] [--entries 500000]
                                 [--uids 300000] [--no-t20000] [--rules NAME ...] [--seed 0]

Builds, once (reused while --out holds it; nothing is downloaded):
- a template: the LAION builder's bundled sample (``vldata sample laion RAW --n 30``) built to parquet
  (``vldata build laion --raw RAW --out SMALL --format parquet``; its URLs are served by a loopback
  server the builder starts itself). Its shard's Arrow schema and its ``parquet/vldata.json`` are
  the template;
- ``BIG/parquet/``: --rows rows in --shards shards (``data/train-0000i-of-000NN.parquet``, row groups
  of 1000 rows and the writer options of the builder, ``vldata.write.shards.open_parquet``) with that
  schema, a DataComp-like pool: ``text`` = ``caption`` = 5-20 words drawn Zipf-like from a 50k-word
  vocabulary (120 common English words first, then random letter strings at English letter
  frequencies), some capitalized, some with commas, 60% ending in a full stop; ``uid`` 32 lower-case
  hex, unique; ``meta_width``/``meta_height`` (and ``original_*``) log-normal ints in 50..2000;
  ``similarity``/``similarity_l14`` float32 values stored in the float64 columns; ``key`` unique;
  ``image`` one 273-byte PNG of the template, the same in every row; the other columns copied from
  one template row or null. Its manifest is the template's with this split (paths, counts, sizes,
  sha256, row groups); it passes ``vldata.layout.read_checked_manifest``;
- a MetaCLIP entries file: --entries distinct entries, one per line: the whole vocabulary as single
  words, then two- and three-word phrases of Zipf-drawn words;
- a uid file (numpy u8,u8, sorted as DataComp writes them) of --uids uids: 97% drawn from the build,
  the rest absent from it, and one build uid listed twice.

Then each rule runs as its own ``.venv/bin/vldata select BIG NAME ... --overwrite`` process. Wall
seconds are measured around it; CPU seconds (user + sys) and peak RSS are the ``os.wait4`` rusage of
that process, taken by a bare launcher interpreter (``LAUNCH``): the process and every child it
waited for (MetaCLIP's matching workers). ``ru_maxrss`` there is the largest high-water RSS of any
ONE of those processes, not their sum. (Waiting from this process instead would report this
process's own RSS for every rule: exec hands the exec'ing address space's high-water mark on;
``RUSAGE_CHILDREN.ru_maxrss`` is moreover a running maximum over every child ever waited for, so it
has no per-rule delta; its CPU delta is printed as a cross-check.) A thread also samples /proc every
50 ms: VmHWM of the select process and of its largest descendant, and the largest summed VmRSS of
the process tree (what the machine must hold at once).
It prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from vldata.layout import file_sha256

VLDATA = str(ROOT / ".venv" / "bin" / "vldata")
ROW_GROUP = 1000
VOCAB = 50_000
ENGLISH_HEAD = (  # split where used
    "the a of and in with on for to at is by from an this that it as are photo image picture view stock "
    "white black red blue green new old man woman people girl boy dog cat house car tree water city street "
    "food table room light dark small large big little beautiful vintage modern art design home garden "
    "wedding dress shoes bag book cover logo icon vector illustration background pattern set collection "
    "two three one his her their our my your near under over into up out during after before top side "
    "front back day night summer winter spring autumn beach mountain river sky sun snow flowers park road"
)
# English letter frequencies (percent), a..z
LETTER_FREQ = [8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9, 0.095, 6.0, 6.3,
               9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074]


# --------------------------------------------------------------------------------------------
# The data


def make_vocab(rng: np.random.Generator, size: int) -> list[str]:
    """``ENGLISH_HEAD`` then distinct random lower-case words of 2-10 letters, ``size`` in all."""
    p = np.array(LETTER_FREQ) / sum(LETTER_FREQ)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = list(dict.fromkeys(ENGLISH_HEAD.split()))
    seen = set(vocab)
    while len(vocab) < size:
        m = 2 * size
        chars = letters[rng.choice(26, size=(m, 10), p=p)]
        lengths = rng.integers(2, 11, size=m)
        chars[np.arange(10) >= lengths[:, None]] = 0  # NUL-padded S10: numpy strips trailing NULs
        for w in chars.view("S10").ravel().astype("U10").tolist():
            if w not in seen:
                seen.add(w)
                vocab.append(w)
                if len(vocab) == size:
                    break
    return vocab


def zipf_p(n: int) -> np.ndarray:
    p = 1.0 / (np.arange(n) + 2.7)
    return p / p.sum()


def captions(rng: np.random.Generator, tokens: pa.Array, n: int) -> pa.Array:
    """``n`` captions of 5-20 Zipf-drawn words. ``tokens`` holds the vocabulary four times: plain,
    with a comma, capitalized, capitalized with a comma."""
    v = len(tokens) // 4
    lengths = rng.integers(5, 21, size=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = rng.choice(v, size=total, p=zipf_p(v))
    first = np.zeros(total, dtype=bool)
    first[offsets[:-1]] = True
    last = np.zeros(total, dtype=bool)
    last[offsets[1:] - 1] = True
    capital = (first & (rng.random(total) < 0.5)) | (rng.random(total) < 0.03)
    comma = ~last & (rng.random(total) < 0.08)
    words = tokens.take(pa.array(ids + v * comma + 2 * v * capital))
    text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")
    stop = pa.array(["", "."]).take(pa.array((rng.random(n) < 0.6).astype(np.int8)))
    return pc.binary_join_element_wise(text, stop, "")


def sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(np.exp(rng.normal(np.log(450), 0.6, size=n)), 50, 2000).astype(np.int32)


def template(work: Path) -> tuple[pa.Schema, dict, dict]:
    """(schema, manifest, one row) of the LAION sample built to parquet in ``work``."""
    raw, small = work / "RAW", work / "SMALL"
    if not (small / "parquet" / "vldata.json").exists():
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(small, ignore_errors=True)
        subprocess.run([VLDATA, "sample", "laion", str(raw), "--n", "30"], check=True, capture_output=True)
        subprocess.run([VLDATA, "build", "laion", "--raw", str(raw), "--out", str(small), "--format", "parquet"],
                       check=True, capture_output=True)
    manifest = json.loads((small / "parquet" / "vldata.json").read_text())
    shard = small / "parquet" / manifest["splits"]["train"]["shards"][0]["path"]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    # the smallest image of a DataComp row: a tiny PNG that keeps the image column negligible
    row = min((r for r in rows if r["column_set"] == "datacomp"), key=lambda r: len(r["image"]["bytes"]))
    return table.schema, manifest, row


def shard_table(schema: pa.Schema, row: dict, tokens: pa.Array, seed: int, shard: int, start: int,
                n: int) -> tuple[pa.Table, np.ndarray]:
    """One shard's rows and their uids as (high, low) uint64 pairs."""
    rng = np.random.default_rng([seed, shard])
    raw = rng.bytes(16 * n)
    uid = pa.array(np.frombuffer(raw.hex().encode(), dtype="S32")).cast(pa.string())
    key = pa.array([f"{shard:05d}_{i:09d}" for i in range(start, start + n)], pa.string())
    text = captions(rng, tokens, n)
    w, h = sizes(rng, n), sizes(rng, n)
    b32 = np.clip(rng.normal(0.28, 0.05, size=n), 0.0, 0.6).astype(np.float32)
    l14 = np.clip(0.7 * b32 + rng.normal(0.05, 0.04, size=n), 0.0, 0.6).astype(np.float32)
    url = pc.binary_join_element_wise("http://127.0.0.1:9/img/", key, ".png", "")  # never fetched
    columns = {
        "key": key, "text": text, "caption": text, "url": url, "final_url": url, "uid": uid, "source_id": uid,
        "source_row": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "meta_width": pa.array(w), "meta_height": pa.array(h), "original_width": pa.array(w),
        "original_height": pa.array(h),
        "similarity": pa.array(b32.astype(np.float64)), "similarity_l14": pa.array(l14.astype(np.float64)),
    }
    null = {"punsafe", "pwatermark", "aesthetic", "nsfw_tag", "language", "license", "source_hash", "exif", "raw"}
    zeros = pa.array(np.zeros(n, dtype=np.int32))
    arrays = []
    for field in schema:
        if field.name in columns:
            arrays.append(columns[field.name].cast(field.type))
        elif field.name in null:
            arrays.append(pa.nulls(n, field.type))
        else:  # constant: the template row's value (image, image_info, column_set, fetched_from, ...)
            arrays.append(pa.array([row[field.name]], field.type).take(zeros))
    return pa.Table.from_arrays(arrays, schema=schema), np.frombuffer(raw, dtype=">u8").reshape(-1, 2)


def build(out: Path, rows: int, n_shards: int, n_entries: int, n_uids: int, seed: int) -> dict:
    """BIG/parquet, the entries file and the uid file under ``out`` (made once); their paths."""
    from vldata.layout import parquet_shard, read_checked_manifest
    from vldata.write.shards import open_parquet

    big, entries_path, uids_path = out / "BIG", out / "entries.txt", out / "uids.npy"
    done = out / "done.json"
    params = {"rows": rows, "shards": n_shards, "entries": n_entries, "uids": n_uids, "seed": seed, "v": 1}
    paths = {"big": big, "entries": entries_path, "uids": uids_path, "pristine": out / "manifest.pristine.json"}
    if done.exists() and json.loads(done.read_text()) == params:
        return paths
    for p in (big, entries_path, uids_path, done):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    schema, manifest, row = template(out)
    t_template = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, VOCAB)
    tokens = pa.array(vocab + [w + "," for w in vocab] + [w.capitalize() for w in vocab]
                      + [w.capitalize() + "," for w in vocab], pa.string())
    folder = big / "parquet"
    (folder / "data").mkdir(parents=True)
    shards, all_pairs, start = [], [], 0
    per = -(-rows // n_shards)
    for s in range(n_shards):
        n = min(per, rows - start)
        table, pairs = shard_table(schema, row, tokens, seed, s, start, n)
        rel = parquet_shard("train", s, n_shards)
        with open_parquet(folder / rel, schema) as writer:
            writer.write_table(table, row_group_size=ROW_GROUP)
        groups = [min(ROW_GROUP, n - i) for i in range(0, n, ROW_GROUP)]
        assert pq.ParquetFile(folder / rel).metadata.num_row_groups == len(groups)
        shards.append({"path": rel, "num_samples": n, "num_bytes": (folder / rel).stat().st_size,
                       "sha256": file_sha256(folder / rel), "row_groups": groups})
        all_pairs.append(pairs)
        start += n
    t_shards = time.perf_counter() - t0 - t_template
    manifest = {k: v for k, v in manifest.items() if k != "subsets"}
    manifest["splits"] = {"train": {"num_samples": rows, "num_bytes": sum(s["num_bytes"] for s in shards),
                                    "shards": shards}}
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (folder / "vldata.json").write_text(text)
    paths["pristine"].write_text(text)
    read_checked_manifest(folder)

    # uid file: 97% of the listed uids from the build, the rest absent, one build uid twice
    pairs = np.concatenate(all_pairs)
    uid_pairs = np.empty(len(pairs), dtype=np.dtype("u8,u8"))
    uid_pairs["f0"], uid_pairs["f1"] = pairs[:, 0], pairs[:, 1]
    assert len(np.unique(uid_pairs)) == rows, "synthetic uids collided"
    present = int(n_uids * 0.97) - 1
    listed = uid_pairs[rng.choice(rows, size=present, replace=False)]
    absent = np.frombuffer(rng.bytes(16 * (n_uids - present - 1)), dtype=">u8").reshape(-1, 2)
    extra = np.empty(len(absent), dtype=np.dtype("u8,u8"))
    extra["f0"], extra["f1"] = absent[:, 0], absent[:, 1]
    listed = np.sort(np.concatenate([listed, listed[:1], extra]))
    with open(uids_path, "wb") as f:
        np.save(f, listed, allow_pickle=False)

    # MetaCLIP entries: every vocabulary word, then Zipf-drawn 2- and 3-word phrases (3:1), distinct
    entries = dict.fromkeys(vocab)
    p = zipf_p(len(vocab))
    while len(entries) < n_entries:
        m = n_entries
        ids = rng.choice(len(vocab), size=(m, 3), p=p)
        three = rng.random(m) < 0.25
        for row_ids, t in zip(ids.tolist(), three.tolist()):
            entries[" ".join(vocab[i] for i in (row_ids if t else row_ids[:2]))] = None
            if len(entries) == n_entries:
                break
    entries_path.write_text("\n".join(entries) + "\n", encoding="utf-8")
    done.write_text(json.dumps(params))
    print(f"made in {time.perf_counter() - t0:.1f}s: template build {t_template:.1f}s, {n_shards} shards "
          f"{t_shards:.1f}s, entries + uid file {time.perf_counter() - t0 - t_template - t_shards:.1f}s")
    return paths


# --------------------------------------------------------------------------------------------
# Measuring one process


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; (0, 0) when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class TreeSampler(threading.Thread):
    """Every ``period`` s: VmHWM of each process below ``root`` (by depth) and their summed VmRSS."""

    def __init__(self, root: int, period: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.period = root, period
        self.hwm: dict[int, int] = {}
        self.depth: dict[int, int] = {}
        self.peak_sum = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            below, todo = [], [(c, 1) for c in _children(self.root)]
            while todo:
                pid, depth = todo.pop()
                below.append(pid)
                self.depth.setdefault(pid, depth)
                todo += [(c, depth + 1) for c in _children(pid)]
            total = 0
            for pid in below:
                rss, hwm = _status(pid)
                total += rss
                if hwm:
                    self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
            self.peak_sum = max(self.peak_sum, total)
            self.stop.wait(self.period)


# Runs the command and reports its os.wait4 rusage. Linux carries the high-water RSS of the process
# that execs into the new program's ru_maxrss (exec records the old address space's hiwater), and a
# vfork/fork+exec from this process would carry this process's few hundred MB into every figure: the
# launcher is a bare interpreter of ~10 MB, so what it hands on is negligible.
LAUNCH = """
import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime,
               "maxrss_kib": ru.ru_maxrss}, f)
"""


def measure(cmd: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCH, str(report), *cmd], stdout=out,
                                    stderr=err, cwd=ROOT)
            sampler = TreeSampler(proc.pid)
            sampler.start()
            proc.wait()
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        ru = json.loads(report.read_text()) if report.exists() else {"rc": proc.returncode, "cpu": 0, "maxrss_kib": 0}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_hwm = max((v for pid, v in sampler.hwm.items() if sampler.depth[pid] == 1), default=0)
    workers = [v for pid, v in sampler.hwm.items() if sampler.depth[pid] > 1]
    return {"rc": ru["rc"], "wall": wall, "cpu": ru["cpu"],
            "cpu_children_delta": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "maxrss_kib": ru["maxrss_kib"], "main_hwm_kib": main_hwm, "worker_hwm_kib": max(workers, default=0),
            "n_children": len(workers), "tree_peak_kib": sampler.peak_sum, "stdout": stdout, "stderr": stderr}


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vldata-bench-select")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--uids", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-t20000", action="store_true", help="skip the MetaCLIP run at t = 20,000")
    ap.add_argument("--rules", nargs="*", default=None, metavar="NAME",
                    help="run only these (subset names, e.g. metaclip_t100; basic_l14_top50 needs basic)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = build(args.out, args.rows, args.shards, args.entries, args.uids, args.seed)
    big, folder = paths["big"], paths["big"] / "parquet"
    # every run starts from the build as made: no subsets from an earlier run
    shutil.rmtree(folder / "subsets", ignore_errors=True)
    shutil.copyfile(paths["pristine"], folder / "vldata.json")
    m = json.loads((folder / "vldata.json").read_text())
    data_bytes = m["splits"]["train"]["num_bytes"]
    text_bytes = sum(pq.ParquetFile(folder / s["path"]).metadata.row_group(g).column(1).total_compressed_size
                     for s in m["splits"]["train"]["shards"]
                     for g in range(len(s["row_groups"])))
    print(f"build: {args.rows:,} rows in {args.shards} parquet shards, {data_bytes / 1e6:.0f} MB "
          f"(text column {text_bytes / 1e6:.0f} MB compressed), at {big}")
    print(f"entries: {args.entries:,} in {paths['entries'].stat().st_size / 1e6:.1f} MB; uid file: "
          f"{args.uids:,} uids; {os.cpu_count()} CPUs")

    entries, uids = str(paths["entries"]), str(paths["uids"])
    rules = [
        ("score_l14_top30", "--score similarity_l14 --top 0.3", ["--score", "similarity_l14", "--top", "0.3"]),
        ("score_min028", "--score similarity --min 0.28", ["--score", "similarity", "--min", "0.28"]),
        ("uids300k", "--uids FILE.npy (300k)", ["--uids", uids]),
        ("basic", "--datacomp-basic", ["--datacomp-basic"]),
        ("basic_l14_top50", "--score similarity_l14 --top 0.5 --from basic",
         ["--score", "similarity_l14", "--top", "0.5", "--from", "basic"]),
        ("metaclip_t100", "--metaclip --t 100", ["--metaclip", entries, "--t", "100"]),
        ("metaclip_t100_w1", "--metaclip --t 100 --workers 1", ["--metaclip", entries, "--t", "100", "--workers", "1"]),
        ("metaclip_t100_online", "--metaclip --t 100 --online", ["--metaclip", entries, "--t", "100", "--online"]),
    ]
    if not args.no_t20000:
        rules.append(("metaclip_t20000", "--metaclip --t 20000", ["--metaclip", entries, "--t", "20000"]))

    if args.rules is not None:
        rules = [r for r in rules if r[0] in args.rules]
    results = []
    for name, label, rule in rules:
        r = measure([VLDATA, "select", str(big), name, *rule, "--overwrite"])
        if r["rc"] != 0:
            print(f"{label}: exit {r['rc']}\n{r['stderr'][-3000:]}")
            results.append((name, label, r, None))
            continue
        entry = json.loads((folder / "vldata.json").read_text())["subsets"][name]
        results.append((name, label, r, entry))
        print(f"  {label}: {r['wall']:.1f}s; {r['stdout'].strip()}", flush=True)

    print(f"\n{'rule':<46} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>13} {'selected':>10} {'rows/s':>10}")
    for name, label, r, entry in results:
        if entry is None:
            print(f"{label:<46} FAILED (exit {r['rc']})")
            continue
        s = entry["splits"]["train"]
        print(f"{label:<46} {r['wall']:>7.1f} {r['cpu']:>7.1f} {r['maxrss_kib'] / 1024:>13.0f} "
              f"{s['selected']:>10,} {s['input'] / r['wall']:>10,.0f}")
    print("\npeak RSS = ru_maxrss from os.wait4: the largest high-water RSS of the select process or of any one "
          "process it waited for (not a sum).\nSampled every 50 ms (/proc VmHWM; sum of VmRSS over the tree); CPU "
          "cross-check (RUSAGE_CHILDREN delta); subset files:")
    print(f"{'rule':<46} {'main HWM':>9} {'worker HWM':>11} {'procs':>5} {'tree sum':>9} {'CPU chk':>8} "
          f"{'subset B':>11} {'counts B':>10}")
    for name, label, r, entry in results:
        if entry is None:
            continue
        sub = folder / entry["path"]
        counts = (folder / entry["counts"]["path"]).stat().st_size if entry.get("counts") else 0
        print(f"{label:<46} {r['main_hwm_kib'] / 1024:>9.0f} {r['worker_hwm_kib'] / 1024:>11.0f} "
              f"{r['n_children']:>5} {r['tree_peak_kib'] / 1024:>9.0f} {r['cpu_children_delta']:>8.1f} "
              f"{sub.stat().st_size:>11,} {counts:>10,}")
    for name, label, r, entry in results:
        if entry is not None:
            stats = {k: v for k, v in entry["splits"]["train"].items() if k not in ("input", "selected")}
            print(f"{label}: {stats}")


if __name__ == "__main__":
    main()
