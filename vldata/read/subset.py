"""Subsets of a build: the samples a selection (``vldata select``) chose, as a small file over shards
that stay as they are.

A subset is ``subsets/NAME.parquet`` in a format folder (both folders of a build hold the same file):
one row per selected sample, sorted by (split, index), a sample listed twice selected twice; columns
``split`` (string), ``index`` (int64, the sample's global index in its split) and, for a MetaCLIP
selection, ``entries`` (list<int32>: the ids of the metadata entries its text matched). A MetaCLIP
selection also has ``subsets/NAME.counts.parquet`` (``split``, ``entry``, ``count``: how many texts
of the selection's input matched each entry). The manifest lists both under ``subsets.NAME`` with the
rule, its parameters, the seed, counts per split and sha256. An ``online`` subset holds every matched
sample and no draw: ``Picks.drawn`` draws each epoch's balanced subset (MetaCLIP's online balancing)
from (the selection's seed, the training seed, the epoch), the same draw ``metaclip_keep`` makes once
for an offline selection.

Everything here is read from a folder that may come from anywhere: a file is used only when its size
and sha256 are the manifest's and its rows are what a selection writes (``problems``). It must not
decide sample order (``read.plan``) or read shards.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vldata.layout import escapes, inside

SUBSETS_DIR = "subsets"
MAX_SUBSET_BYTES = 1 << 33  # 8 GiB: a selection of ~700M samples; more is not a file we wrote
# values per byte of a subset file: ours hold ~2 (1M sorted indices in 570 KB, bench/select_1m.py);
# a column of one repeated value compresses to almost nothing and would expand a small file into gigabytes
MAX_VALUES_PER_BYTE = 64
SCHEMA = pa.schema([("split", pa.string()), ("index", pa.int64()), ("entries", pa.list_(pa.int32()))])
COUNTS_SCHEMA = pa.schema([("split", pa.string()), ("entry", pa.int32()), ("count", pa.int64())])
_DRAW = 0x3E7AC11  # separates MetaCLIP draws from every other use of a seed
_DRAW_BLOCK = 1 << 22  # (sample, entry) pairs drawn at once
_MAX_LIST_IDS = 1 << 30  # entry ids in one chunk of the entries column (its offsets are int32)


def subset_file(name: str) -> str:
    return f"{SUBSETS_DIR}/{name}.parquet"


def counts_file(name: str) -> str:
    return f"{SUBSETS_DIR}/{name}.counts.parquet"


# --------------------------------------------------------------------------------------------
# MetaCLIP balancing


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """MetaCLIP's per-entry sampling probability min(1, t / count) (an entry nobody matched: 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.minimum(1.0, t / np.maximum(counts, 1.0))


def metaclip_keep(offsets: np.ndarray, ids: np.ndarray, counts: np.ndarray, t: float,
                  seed: list[int]) -> np.ndarray:
    """Which samples one MetaCLIP draw keeps. Sample i matched entries ``ids[offsets[i]:offsets[i+1]]``;
    it is kept when any of them is drawn (``u < p_entry``, one uniform u per (sample, entry)), i.e. with
    probability 1 - prod(1 - p) as in MetaCLIP's ``balance_sampling``; a sample without entries never
    is. ``seed`` is the list of integers the draw is a function of."""
    rng = np.random.default_rng(np.random.SeedSequence([int(s) for s in seed] + [_DRAW]))
    p = entry_probabilities(counts, t)
    n = len(offsets) - 1
    keep = np.zeros(n, dtype=bool)
    a = 0
    while a < n:  # in blocks of whole samples: the same stream of draws, a bounded amount of memory
        b = min(max(int(np.searchsorted(offsets, offsets[a] + _DRAW_BLOCK, "right")) - 1, a + 1), n)
        lo, hi = int(offsets[a]), int(offsets[b])
        hit = rng.random(hi - lo) < p[ids[lo:hi]]
        hits = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
        bounds = offsets[a:b + 1] - lo
        keep[a:b] = hits[bounds[1:]] > hits[bounds[:-1]]
        a = b
    return keep


def split_word(split: str) -> int:
    """A split's share of a seed: the same split draws the same way in every build."""
    return zlib.crc32(split.encode())


# --------------------------------------------------------------------------------------------
# The file, both ways


def to_table(splits: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]) -> pa.Table:
    """The subset file's table from, per split, (sorted indices, entry offsets, entry ids) (the last
    two None unless the rule matched entries)."""
    tables = []
    for split in sorted(splits):
        indices, offsets, ids = splits[split]
        n = len(indices)
        # rows in chunks whose entry ids fit the list column's int32 offsets (MetaCLIP at scale has billions)
        cuts = [0] if offsets is None else sorted({0, n, *np.searchsorted(
            offsets, np.arange(_MAX_LIST_IDS, int(offsets[-1]), _MAX_LIST_IDS), "right").tolist()})
        cuts = [0, n] if offsets is None else [c - 1 if 0 < c < n else c for c in cuts]
        for a, b in itertools.pairwise(cuts):
            if offsets is None:
                entries = pa.nulls(b - a, pa.list_(pa.int32()))
            else:
                lo, hi = int(offsets[a]), int(offsets[b])
                entries = pa.ListArray.from_arrays(pa.array((offsets[a:b + 1] - lo).astype(np.int32)),
                                                   pa.array(ids[lo:hi].astype(np.int32, copy=False)))
            tables.append(pa.table([pa.array([split] * (b - a), pa.string()),
                                    pa.array(indices[a:b].astype(np.int64)), entries], schema=SCHEMA))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def counts_table(counts: dict[str, np.ndarray]) -> pa.Table:
    """The counts file's table from, per split, the count of every entry (only entries matched)."""
    parts = []
    for split in sorted(counts):
        entry = np.flatnonzero(counts[split]).astype(np.int32)
        parts.append(pa.table([pa.array([split] * len(entry), pa.string()), pa.array(entry),
                               pa.array(counts[split][entry].astype(np.int64))], schema=COUNTS_SCHEMA))
    return pa.concat_tables(parts) if parts else COUNTS_SCHEMA.empty_table()


def table_bytes(table: pa.Table) -> bytes:
    """A table as the parquet bytes a selection writes (the same rows give the same bytes)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20, write_statistics=False,
                   store_schema=False)
    return sink.getvalue()


@dataclass(frozen=True)
class Picks:
    """One split's part of a subset: the global indices it selects (sorted, repeats allowed) and, for
    MetaCLIP, each pick's matched entries (``ids``, positions in ``counts``) and those entries' counts."""

    name: str
    indices: np.ndarray
    offsets: np.ndarray | None = None
    ids: np.ndarray | None = None
    counts: np.ndarray | None = None
    t: float | None = None
    seed: int = 0
    online: bool = False
    split: str = "train"
    sha256: str = ""

    def drawn(self, epoch: int, seed: int) -> np.ndarray | None:
        """For an online subset, the positions (into ``indices``) epoch ``epoch`` of a training run
        seeded ``seed`` uses: a fresh balanced draw; None for a fixed subset."""
        if not self.online:
            return None
        keep = metaclip_keep(self.offsets, self.ids, self.counts, self.t,
                             [self.seed, split_word(self.split), seed, epoch])
        return np.flatnonzero(keep).astype(np.int64)


def _read_checked(fs, folder: str, url: str, entry: dict, what: str) -> tuple[pa.Table | None, str | None]:
    """(table, None) when the file at ``url`` has the manifest's size and sha256 and parses, else
    (None, why). A local file must be a regular file inside ``folder`` (``layout.escapes``)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem) and fs.exists(url) and escapes(folder, url):
        return None, escapes(folder, url)
    try:
        size = fs.size(url)
    except FileNotFoundError:
        return None, f"{url}: {what} listed in the manifest but missing"
    if size != entry.get("num_bytes") or size > MAX_SUBSET_BYTES:
        return None, f"{url}: {size} bytes, manifest says {entry.get('num_bytes')} (truncated or altered)"
    with fs.open(url, "rb") as f:
        data = f.read(size + 1)
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return None, f"{url}: sha256 differs from the manifest (altered)"
    try:
        meta = pq.read_metadata(io.BytesIO(data))
        values = sum(meta.row_group(g).column(c).num_values
                     for g in range(meta.num_row_groups) for c in range(meta.num_columns))
        if values > MAX_VALUES_PER_BYTE * max(size, 1):  # what select writes holds a few values per byte
            return None, f"{url}: {values:,} values in {size:,} bytes, more than a {what} holds (a decompression bomb?)"
        return pq.read_table(io.BytesIO(data)), None
    except Exception as e:  # noqa: BLE001 - whatever pyarrow raises on a file that is not parquet
        return None, f"{url}: unreadable {what} ({type(e).__name__})"


def read(fs, folder: str, manifest: dict, name: str) -> tuple[dict[str, Picks], list[str]]:
    """Every split's ``Picks`` of subset ``name`` of a format folder, and the problems that make it
    unusable (then the picks are empty): a file missing, altered or not what a selection writes, an
    index outside its split, rows out of order, counts that are not the matches'."""
    entry = (manifest.get("subsets") or {}).get(name)
    if not isinstance(entry, dict):
        have = ", ".join(sorted(manifest.get("subsets") or {})) or "none"
        return {}, [f"{folder}: no subset {name!r} (subsets: {have})"]
    problems = entry_problems(name, entry)
    if problems:
        return {}, [f"{folder}: {p}" for p in problems]
    url = f"{folder.rstrip('/')}/{entry['path']}"
    table, problem = _read_checked(fs, folder, url, entry, "subset")
    if problem:
        return {}, [problem]
    if table.schema != SCHEMA:
        return {}, [f"{url}: columns {table.schema.names} are not a subset's (split, index, entries)"]
    counts_by_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # split -> (entry ids sorted, counts)
    num_entries = int(entry["params"]["num_entries"]) if entry.get("counts") is not None else 0
    if entry.get("counts") is not None:
        curl = f"{folder.rstrip('/')}/{entry['counts']['path']}"
        ctable, problem = _read_checked(fs, folder, curl, entry["counts"], "entry counts file")
        if problem:
            return {}, [problem]
        if ctable.schema != COUNTS_SCHEMA:
            return {}, [f"{curl}: columns {ctable.schema.names} are not (split, entry, count)"]
        for split in pc.unique(ctable["split"]).to_pylist():
            rows = ctable.filter(pc.equal(ctable["split"], split))
            ids, n = rows["entry"].to_numpy().astype(np.int64), rows["count"].to_numpy()
            if len(ids) and (ids.min() < 0 or ids.max() >= num_entries or (n < 1).any()
                             or (np.diff(ids) <= 0).any()):
                return {}, [f"{curl}: split {split}: entry ids out of range or repeated, or counts not positive"]
            counts_by_split[split] = (ids, n.astype(np.int64))
    out: dict[str, Picks] = {}
    splits = manifest["splits"]
    for split in pc.unique(table["split"]).to_pylist() if table.num_rows else []:
        rows = table.filter(pc.equal(table["split"], split))
        where = f"{url}: split {split!r}"
        if split not in splits:
            return {}, [f"{where}: not a split of this build"]
        indices = rows["index"].to_numpy()
        if (indices < 0).any() or (indices >= splits[split]["num_samples"]).any():
            return {}, [f"{where}: an index outside 0..{splits[split]['num_samples'] - 1}"]
        if (np.diff(indices) < 0).any():
            return {}, [f"{where}: indices not sorted"]
        listed = (entry.get("splits") or {}).get(split, {}).get("selected")
        if listed != len(indices):
            return {}, [f"{where}: {len(indices)} rows, manifest says {listed}"]
        picks = Picks(name=name, indices=indices, seed=int(entry.get("seed") or 0), online=bool(entry.get("online")),
                      split=split, sha256=entry["sha256"])
        if entry.get("counts") is not None:
            offsets, ids = _entries(rows["entries"])
            if offsets is None:
                return {}, [f"{where}: a sample without its entries"]
            # entries are numbered as in the user's file (up to num_entries); the draw needs only the
            # counted ones, so ids become positions among them: memory follows the files, not a number
            known, counts = counts_by_split.get(split, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            compact = np.searchsorted(known, ids)
            if len(ids) and (compact.max() >= len(known) or not np.array_equal(known[compact], ids)):
                return {}, [f"{where}: an entry without a count in {counts_file(name)}"]
            if entry.get("online") and not np.array_equal(np.bincount(compact, minlength=len(counts)), counts):
                return {}, [f"{where}: entry counts are not the counts of the stored matches"]
            picks = Picks(name=name, indices=indices, offsets=offsets, ids=compact, counts=counts,
                          t=float(entry["params"]["t"]), seed=picks.seed, online=picks.online, split=split,
                          sha256=entry["sha256"])
        out[split] = picks
    return out, []


def _entries(column: pa.ChunkedArray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(offsets, ids) of a list<int32> column, chunk by chunk (together they may hold more ids than
    one chunk's int32 offsets can); (None, None) when a row is null."""
    offsets, ids, base = [np.zeros(1, np.int64)], [np.zeros(0, np.int64)], 0
    for array in column.chunks:
        if array.null_count:
            return None, None
        chunk = array.offsets.to_numpy().astype(np.int64)  # a slice's offsets start where the slice does
        ids.append(array.values.to_numpy()[chunk[0]:chunk[-1]].astype(np.int64))
        offsets.append(chunk[1:] - chunk[0] + base)
        base += int(chunk[-1] - chunk[0])
    return np.concatenate(offsets), np.concatenate(ids)


def entry_problems(name: str, entry: dict) -> list[str]:
    """What makes a manifest's subset entry unusable, before any file is opened."""
    problems = []
    for key, kind in (("path", str), ("sha256", str), ("num_bytes", int), ("rule", str), ("params", dict),
                      ("splits", dict)):
        if not isinstance(entry.get(key), kind):
            problems.append(f"subset {name!r}: {key!r} is not a {kind.__name__}")
    if isinstance(entry.get("path"), str) and (not inside(entry["path"]) or entry["path"] != subset_file(name)):
        problems.append(f"subset {name!r}: path {entry['path']!r} is not {subset_file(name)}")
    counts = entry.get("counts")
    if counts is not None:
        if not isinstance(counts, dict) or counts.get("path") != counts_file(name):
            problems.append(f"subset {name!r}: counts path is not {counts_file(name)}")
        params = entry.get("params") if isinstance(entry.get("params"), dict) else {}
        if type(params.get("num_entries")) is not int or params["num_entries"] < 1 or \
                not isinstance(params.get("t"), (int, float)) or params["t"] <= 0:
            problems.append(f"subset {name!r}: MetaCLIP parameters num_entries/t missing or not positive")
    return problems
