"""Random access by global index over a built dataset, in either format, local or any fsspec URL.

``open(path, split)`` reads one manifest and nothing else: shard sizes (and parquet row-group sizes,
tar member indexes) are located through it, so opening 10,000 shards costs one small read. Parquet is
read by row group (the last few are cached); webdataset by byte range, using the member index written
next to each tar at build time. Both give the same sample dict: ``key``, ``text``, ``image`` (encoded
bytes of the primary image), ``source`` and every other field (other images as bytes). A shard that is
shorter than the manifest says raises ``ShardError`` naming it. Nothing here decodes images.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vldata.errors import SampleError, ShardError, one_line
from vldata.layout import (BUILD_DIR, MANIFEST, MAX_SAMPLE_BYTES, PLAN, READ_PREFERENCE, MemberLayout, PlainLayout,
                           escapes, format_folders, read_checked_manifest)
from vldata.read import subset as subsets

__all__ = ["SampleError", "ShardError", "Source", "ParquetSource", "WebDatasetSource", "open"]

_INHERITED: list = []  # a forked process's references to what its parent opened (see _forget_open_files)


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def open(path: str, split: str = "train", format: str | None = None, name: str | None = None,  # noqa: A002
         storage_options: dict | None = None, *, image: str | list[str] | None = None, text: str | None = None,
         index_dir: str | None = None, subset: str | None = None) -> Source:
    """A random-access source over a vldata build (OUT, OUT/parquet or OUT/webdataset), a Hugging Face
    parquet dataset, or a folder / URL prefix / brace pattern of plain webdataset tars; local or any
    fsspec URL. When OUT holds both formats, ``format`` chooses (default: webdataset, read by byte
    ranges). ``image``/``text`` name the image and text column (parquet) or member suffixes (tars) of
    a dataset vldata did not build; ``index_dir`` is where plain tars' member indexes are (or go).
    ``subset`` reads only the samples of a selection (``vldata select``): ``len`` is the subset's, a
    sample it lists twice is there twice, an online subset draws each epoch's samples anew."""
    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    folders = format_folders(root, fs, order=(format,) if format else READ_PREFERENCE)
    index_root = None
    manifest = read_checked_manifest(folders[0], fs) if folders else None
    if manifest is not None and not manifest.get("plain"):
        root = folders[0]
    else:  # not a build; plain tars indexed in place are checked against their tars like any index
        manifest, root, index_root = _describe_foreign(fs, root, split, format, image, text, index_dir)
        if manifest is None:
            raise FileNotFoundError(f"{path}: no {MANIFEST} here or in parquet/ or webdataset/, "
                                    "and no parquet dataset or webdataset tars")
    if split not in manifest["splits"]:
        raise KeyError(f"{path}: no split {split!r} (has {', '.join(manifest['splits'])})")
    cls = ParquetSource if manifest["format"] == "parquet" else WebDatasetSource
    source = cls(fs, root, manifest, split, name or manifest["builder"], index_root=index_root)
    if subset is not None:
        if subset not in (manifest.get("subsets") or {}):
            have = ", ".join(sorted(manifest.get("subsets") or {})) or "none"
            raise KeyError(f"{path}: no subset {subset!r} (subsets: {have})")
        picks, problems = subsets.read(fs, root, manifest, subset)
        if problems:
            raise ShardError(problems[0])
        source.select(picks.get(split) or subsets.Picks(subset, np.zeros(0, dtype=np.int64), split=split))
    return source


def _describe_foreign(fs, root: str, split: str, format: str | None, image, text,  # noqa: A002
                      index_dir: str | None) -> tuple[dict | None, str, str | None]:
    """(manifest, data folder, index folder) of a dataset vldata did not build: a Hugging Face parquet
    dataset (described from its README and parquet footers) or plain webdataset tars (described by
    their member indexes, built once when missing; ``root`` may be a prefix or a brace pattern, the
    data folder is the one holding the tars). (None, root, None) when ``root`` is neither."""
    from vldata.read import hf_parquet, tar_index

    parent = root.rstrip("/").rsplit("/", 1)[0]
    if any(fs.exists(f"{out}/{BUILD_DIR}/{PLAN}") for out in (root, parent)):  # never a foreign dataset
        raise FileNotFoundError(f"{root}: an unfinished vldata build (no {MANIFEST} yet): finish it with "
                                "vldata build ... --resume")
    if format in (None, "parquet"):
        manifest = hf_parquet.describe(fs, root, split, image=image, text=text)
        if manifest is not None:
            return manifest, root, None
    if format in (None, "webdataset"):
        found = tar_index.describe(fs, root, split, index_dir=index_dir, image=image, text=text)
        if found is not None:
            return found
    return None, root, None


class Source:
    """Samples of one split, addressable by global index 0..len-1 (shards in manifest order), or of a
    subset of them (``select``): index i is then the subset's i-th sample."""

    def __init__(self, fs, root: str, manifest: dict, split: str, name: str, index_root: str | None = None):
        self.fs, self.root, self.manifest, self.split, self.name = fs, root, manifest, split, name
        self.index_root = index_root or root  # where member indexes are (plain tars: maybe elsewhere)
        self._pid = os.getpid()
        self.shards = manifest["splits"][split]["shards"]
        self.shard_sizes = tuple(int(s["num_samples"]) for s in self.shards)
        self._starts = [0]
        for n in self.shard_sizes:
            self._starts.append(self._starts[-1] + n)
        self.picks: subsets.Picks | None = None

    def select(self, picks: subsets.Picks) -> None:
        """Read only the samples ``picks`` lists (sorted global indices of this split, repeats allowed)."""
        if len(picks.indices) and not 0 <= picks.indices[0] <= picks.indices[-1] < self._starts[-1]:
            raise ShardError(f"{self.root}: subset {picks.name!r} lists samples outside split {self.split!r}")
        self.picks = picks

    def __len__(self) -> int:
        return len(self.picks.indices) if self.picks is not None else self._starts[-1]

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Sample counts of the blocks this source reads whole or keeps together, in index order
        (the plan shuffles their order): its shards, or how many of a subset's samples each holds."""
        blocks = self._blocks()
        if self.picks is None:
            return blocks
        bounds = np.cumsum(blocks)
        return tuple(np.bincount(np.searchsorted(bounds, self.picks.indices, side="right"),
                                 minlength=len(blocks)).tolist())

    def _blocks(self) -> tuple[int, ...]:
        return self.shard_sizes

    @property
    def locality(self) -> int | None:
        """The widest shuffle window this source reads without thrashing (None: any)."""
        return None

    def drawn(self, epoch: int, seed: int) -> np.ndarray | None:
        """The indices epoch ``epoch`` of a run seeded ``seed`` may use, when that changes per epoch
        (an online subset: a fresh balanced draw); None: all of them."""
        return self.picks.drawn(epoch, seed) if self.picks is not None else None

    @property
    def identity(self) -> list | None:
        """What a saved position refers to besides the shard sizes: the subset read (None: all)."""
        return None if self.picks is None else [self.picks.name, self.picks.sha256]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index within the shard) of global index i of the split (not of a subset)."""
        if not 0 <= i < self._starts[-1]:
            raise IndexError(f"index {i} outside 0..{self._starts[-1] - 1}")
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def shard_url(self, s: int) -> str:
        return _join(self.root, self.shards[s]["path"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if self.picks is not None:
            if not 0 <= i < len(self):
                raise IndexError(f"index {i} outside 0..{len(self) - 1} of subset {self.picks.name!r}")
            i = int(self.picks.indices[i])
        s, j = self.locate(i)
        if self._pid != os.getpid():  # a forked copy: the parent's open files share their offsets with it
            self._forget_open_files()
        sample = self._read(s, j)
        sample["source"] = self.name
        return sample

    def values(self, field: str) -> list:
        """Per-sample values of a balance field (saved at build time), in index order."""
        info = self.manifest["splits"][self.split].get("values")
        if not info or field not in info["fields"]:
            have = ", ".join(info["fields"]) if info else "none"
            raise KeyError(f"{self.root}: no saved values for {field!r} (balance fields: {have})")
        url = self._inside(info["path"])
        try:
            with self.fs.open(url, "rb") as f:
                values = pq.read_table(f, columns=[field]).column(field).to_pylist()
        except (OSError, ValueError) as e:
            raise ShardError(f"{url}: unreadable values file ({one_line(e)})") from None
        return values if self.picks is None else [values[i] for i in self.picks.indices.tolist()]

    def get_many(self, indices) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def _read(self, shard: int, j: int) -> dict[str, Any]:
        raise NotImplementedError

    def _inside(self, rel: str, base: str | None = None) -> str:
        """The URL of a path from the manifest or an index, relative to ``base`` (default: the data
        folder). The manifest was checked to hold only relative paths inside the folder; locally a
        link must not lead outside it either, and only regular files are read (not a device that
        never ends)."""
        base = base or self.root
        url = _join(base, rel)
        problem = escapes(base, url) if isinstance(self.fs, LocalFileSystem) else None
        if problem:
            raise ShardError(problem)
        return url

    def _open_shard(self, s: int):
        """Open shard ``s`` after checking its size. Remote files are opened without read-ahead, so
        each read is one range request of exactly the bytes asked for (local reads are buffered by
        the OS anyway)."""
        url = self._inside(self.shards[s]["path"])
        try:
            size = self.fs.size(url)
        except FileNotFoundError:
            raise ShardError(f"{url}: missing") from None
        expected = int(self.shards[s]["num_bytes"])
        if size != expected:
            raise ShardError(f"{url}: {size} bytes, manifest says {expected} (truncated or altered)")
        if isinstance(self.fs, LocalFileSystem):
            return self.fs.open(url, "rb")
        return self.fs.open(url, "rb", cache_type="none", size=size)

    def _forget_open_files(self) -> None:
        """In a forked copy: new caches and a filesystem of this process's own (an async filesystem's
        session and event loop belong to the process that made them). What the parent opened is
        kept alive, untouched, and never closed here: closing an inherited HTTP connection would
        unregister its socket from the event loop's epoll, which parent and child share, and the
        parent would then wait for that response forever."""
        inherited = {k: v for k, v in self.__dict__.items() if k.startswith("_cache") or k.startswith("_files")}
        _INHERITED.append((self.fs, inherited))
        for k in inherited:
            self.__dict__[k] = OrderedDict()
        if not isinstance(self.fs, LocalFileSystem):
            self.fs = type(self.fs)(**self.fs.storage_options, skip_instance_cache=True)
        self._pid = os.getpid()

    def __getstate__(self):  # open file handles stay behind when a DataLoader worker gets a copy
        state = self.__dict__.copy()
        for k in [k for k in state if k.startswith("_cache") or k.startswith("_files")]:
            state[k] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


class ParquetSource(Source):
    """Parquet shards, read one row group at a time. A manifest with ``columns`` (a Hugging Face
    dataset vldata did not build, ``hf_parquet``) names the text and key columns: ``text`` and ``key``
    are taken from them (the original columns stay), a missing key is ``<key_prefix>_<row>``."""

    def __init__(self, *args, cache_row_groups: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: OrderedDict = OrderedDict()
        self._cache_files: OrderedDict = OrderedDict()
        self._keep_row_groups = cache_row_groups
        self._image_columns = [n for n, f in self.manifest["features"].items() if _is_image(f)]
        columns = self.manifest.get("columns")  # column names (or None) of the text and the key
        self._columns = {k: v for k, v in columns.items() if isinstance(v, str)} if isinstance(columns, dict) else None

    def _blocks(self) -> tuple[int, ...]:
        """Row groups, where the manifest gives them (a row group is read whole)."""
        groups = [sh.get("row_groups") for sh in self.shards]
        if all(isinstance(g, list) and sum(g) == n for g, n in zip(groups, self.shard_sizes)):
            return tuple(n for g in groups for n in g if n)
        return self.shard_sizes

    @property
    def locality(self) -> int | None:
        """The median row group: a window that wide spans at most three row groups (the reader keeps
        three), so each is read about once per pass instead of once per sample."""
        if not any(sh.get("row_groups") for sh in self.shards):
            return None
        blocks = sorted(n for n in self.block_sizes if n)
        return max(1, blocks[len(blocks) // 2]) if blocks else None

    def _file(self, s: int) -> pq.ParquetFile:
        if s not in self._cache_files:
            # pre_buffer: the column chunks of a row group are fetched as few coalesced ranges
            self._cache_files[s] = pq.ParquetFile(self._open_shard(s), pre_buffer=True)
            while len(self._cache_files) > 4:
                self._cache_files.popitem(last=False)
        return self._cache_files[s]

    def _row_group_of(self, s: int, j: int) -> tuple[int, int]:
        sizes = self.shards[s].get("row_groups")
        if sizes is None:
            try:
                meta = self._file(s).metadata
            except ShardError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever pyarrow raises on a broken file
                raise ShardError(f"{self.shard_url(s)}: unreadable parquet footer ({type(e).__name__})") from None
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.shards[s]["row_groups"] = sizes
        start = 0
        for g, n in enumerate(sizes):
            if j < start + n:
                return g, j - start
            start += n
        raise ShardError(f"{self.shard_url(s)}: its row groups hold {start} rows, fewer than sample {j} needs")

    def _read(self, s: int, j: int) -> dict[str, Any]:
        g, k = self._row_group_of(s, j)
        table = self._cache.get((s, g))
        if table is None:
            try:
                table = self._file(s).read_row_group(g)
            except ShardError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever pyarrow raises on a broken file
                raise ShardError(f"{self.shard_url(s)}: row group {g} unreadable ({one_line(e)})") from None
            self._cache[(s, g)] = table
            while len(self._cache) > self._keep_row_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end((s, g))
        if k >= table.num_rows:
            raise ShardError(f"{self.shard_url(s)}: row group {g} has {table.num_rows} rows, the manifest says more")
        try:
            row = table.slice(k, 1).to_pylist()[0]
        except (UnicodeDecodeError, ValueError) as e:  # bytes changed inside a page the footer cannot tell
            raise SampleError(f"{self.shard_url(s)}: row {j} does not decode ({one_line(e)})") from None
        for col in self._image_columns:
            value = row.get(col)
            row[col] = [_image_bytes(v) for v in value] if isinstance(value, list) else _image_bytes(value)
        primary = self.manifest.get("primary_image", "image")
        if primary != "image" and primary in row:
            row["image"] = row[primary]
        if self._columns is not None:  # a dataset vldata did not build: its own text and key columns
            text = row.get(self._columns.get("text"))
            row["text"] = text if isinstance(text, str) else ""
            key = row.get(self._columns.get("key"))
            row["key"] = str(key) if key is not None else f"{self.shards[s].get('key_prefix', s)}_{j}"
        return row


def _image_bytes(value: Any) -> bytes | None:
    """The encoded bytes of an HF Image cell ({bytes, path}). A cell with only a path is a missing
    image: a path in a downloaded dataset is never followed."""
    return value.get("bytes") if isinstance(value, dict) else value


def _is_image(feature: Any) -> bool:
    """Whether an HF feature is an Image or a list of them (``List``/``Sequence``, or ``[Image]``)."""
    if isinstance(feature, list) and len(feature) == 1:
        return _is_image(feature[0])
    if isinstance(feature, dict):
        if feature.get("_type") == "Image":
            return True
        if feature.get("_type") in ("List", "Sequence", "LargeList"):
            return _is_image(feature.get("feature"))
    return False


class WebDatasetSource(Source):
    """Tar shards, read by byte range through each shard's member index. Plain tars (a manifest with
    ``plain``, see ``read.tar_index``) use ``PlainLayout`` and may have their indexes in another folder,
    even on another filesystem (a local cache for tars on a web server)."""

    def __init__(self, fs, root: str, manifest: dict, split: str, name: str, index_root: str | None = None):
        super().__init__(fs, root, manifest, split, name, index_root=index_root)
        self._cache: OrderedDict = OrderedDict()  # shard -> index
        self._files: OrderedDict = OrderedDict()  # shard -> open file
        self._layout = PlainLayout.from_manifest(self.manifest) if self.manifest.get("plain") \
            else MemberLayout.from_manifest(self.manifest)
        self._index_fs, self._index_base = None, self.index_root  # None: the data's filesystem
        if self.index_root != self.root:
            self._index_fs, self._index_base = fsspec.core.url_to_fs(self.index_root)

    def _forget_open_files(self) -> None:
        super()._forget_open_files()
        if self._index_fs is not None and not isinstance(self._index_fs, LocalFileSystem):
            self._index_fs = type(self._index_fs)(**self._index_fs.storage_options, skip_instance_cache=True)

    def _index_url(self, rel: str) -> tuple[Any, str]:
        """(filesystem, URL) of a member index named in the manifest (checked like ``_inside``)."""
        if self._index_fs is None:
            return self.fs, self._inside(rel, self.index_root)
        url = _join(self._index_base, rel)
        problem = escapes(self._index_base, url) if isinstance(self._index_fs, LocalFileSystem) else None
        if problem:
            raise ShardError(problem)
        return self._index_fs, url

    def _index(self, s: int) -> list:
        if s not in self._cache:
            info = self.shards[s]
            if "index" not in info:
                raise ShardError(f"{self.shard_url(s)}: the manifest lists no member index (built by an older vldata?)")
            fs, url = self._index_url(info["index"])
            try:
                with fs.open(url, "rb") as f:
                    doc = json.load(f)
            except FileNotFoundError:
                raise ShardError(f"{url}: member index missing") from None
            except (ValueError, UnicodeDecodeError) as e:
                raise ShardError(f"{url}: unreadable member index ({type(e).__name__})") from None
            samples = doc.get("samples") if isinstance(doc, dict) else None
            if not isinstance(samples, list) or len(samples) != int(info["num_samples"]):
                have = len(samples) if isinstance(samples, list) else "no"
                raise ShardError(f"{url}: {have} samples, manifest says {info['num_samples']}")
            self._cache[s] = samples
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return self._cache[s]

    def _entry(self, s: int, j: int) -> tuple[str, list]:
        """Sample ``j`` of shard ``s`` from the member index, checked: a key, and members whose
        offsets and sizes lie inside the shard and span at most ``MAX_SAMPLE_BYTES``."""
        entry = self._index(s)[j]
        try:
            key, members = entry
            spans = [(str(suffix), int(offset), int(size)) for suffix, offset, size in members]
            ok = bool(spans) and isinstance(key, str) and all(
                0 <= o and 0 <= n and o + n <= int(self.shards[s]["num_bytes"]) for _, o, n in spans)
            ok = ok and max(o + n for _, o, n in spans) - min(o for _, o, _ in spans) <= MAX_SAMPLE_BYTES
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ShardError(f"{self.shard_url(s)}: the member index entry of sample {j} does not fit the shard")
        return key, spans

    def _file(self, s: int):
        if s not in self._files:
            self._files[s] = self._open_shard(s)
            while len(self._files) > 4:
                self._files.popitem(last=False)[1].close()
        return self._files[s]

    def members(self, i: int, suffixes: tuple[str, ...]) -> dict[str, Any]:
        """Sample ``i`` of the split (not of a subset) made of only the members with these suffixes:
        ``("txt", "json")`` gives its key, text and fields without reading its images."""
        s, j = self.locate(int(i))
        if self._pid != os.getpid():
            self._forget_open_files()
        key, spans = self._entry(s, j)
        f, chosen = self._file(s), []
        for suffix, offset, size in spans:
            if suffix in suffixes:
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    raise ShardError(f"{self.shard_url(s)}: sample {key} ends past the end of the file")
                chosen.append((suffix, data))
        try:
            return self._layout.sample(key, chosen)
        except (ValueError, UnicodeDecodeError) as e:
            raise SampleError(f"{self.shard_url(s)}: sample {key}: a member does not decode ({type(e).__name__})") from None

    def _read(self, s: int, j: int) -> dict[str, Any]:
        key, members = self._entry(s, j)
        f = self._file(s)
        # a sample's members are contiguous in the tar: one read (one range request) for all of them
        start = min(offset for _, offset, _ in members)
        end = max(offset + size for _, offset, size in members)
        f.seek(start)
        span = f.read(end - start)
        if len(span) != end - start:
            raise ShardError(f"{self.shard_url(s)}: sample {key} ends past the end of the file")
        try:
            return self._layout.sample(key, ((suffix, span[offset - start: offset - start + size])
                                                  for suffix, offset, size in members))
        except (ValueError, UnicodeDecodeError) as e:  # a .json or .txt member that does not decode
            raise SampleError(f"{self.shard_url(s)}: sample {key}: a member does not decode ({type(e).__name__})") from None

