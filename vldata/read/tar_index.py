"""Member indexes for webdataset tars vldata did not write (img2dataset output, DataComp shards, anything
from ``webdataset.TarWriter``), so that they are read like a build: one sample by one byte range.

``index(path)`` reads each tar once (``read.tar_scan``) and writes, per tar, a member index in the
format builds use (``layout.member_index``, ``MEMBER_INDEX_FORMAT``, plus the tar's stats), then a
manifest (``vldata.json``: each tar's size and mtime or etag, and a ``plain`` section: the member
choice, the folder, what was skipped or excluded and why) next to the tars, or in ``index_dir``.
``describe(...)`` is what ``read.source.open`` calls for such tars: it uses an index next to the tars
or in ``index_dir`` while it matches them, otherwise builds one once into the cache
(``layout.cache_slot("index", path)``), re-reading only tars that changed. ``path`` is a folder, a URL
prefix (``.../shard-``: the tars whose names start with it) or a brace pattern
(``.../{00000..00009}.tar``). Tars named ``{split}-...`` (``train-``, ``validation-``...) are split by
name; other tars are one split, named as asked. It must not write next to the
tars unless asked (``index`` without ``index_dir``), use an index that fails ``manifest_problems``,
or read a tar whose index is current.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vldata.errors import ShardError, StructuralError, one_line
from vldata.layout import (
    MANIFEST,
    MANIFEST_VERSION,
    MEMBER_INDEX_FORMAT,
    PlainLayout,
    atomic_write,
    cache_slot,
    inside,
    member_index,
    read_checked_manifest,
)
from vldata.read.tar_scan import Scan, scan

INDEX_VERSION = "plain-1"  # the manifest's "version" for an index of plain tars
SPLIT_NAMES = frozenset({"train", "training", "validation", "valid", "val", "dev", "test", "eval"})
_SPLIT_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_]*)-")
_ETAGS = ("ETag", "etag", "Last-Modified", "LastModified", "last_modified", "updated", "generation")
_READ_BLOCK = 8 << 20  # remote tars are read in requests of this size
_REMOTE_WORKERS = 8  # remote tars indexed at once (local ones one by one: the CPU is the limit)
_MAX_EXPANDED = 1_000_000
_REPORT_LINES = 20  # tars named per kind of problem in ``vldata index``'s report


@dataclass
class Tars:
    """The tars a path names: ``names`` relative to the folder ``root`` (an fs path) holding them, in
    order, or None where the storage cannot list a folder; ``source`` is the normalized path."""

    source: str
    root: str
    names: list[str] | None
    prefix: str = ""
    listing: dict = field(default_factory=dict)  # name -> the listing's info (size, mtime, ...)


@dataclass
class IndexReport:
    """What ``index`` did; ``os.fspath(report)`` is the folder the index is in."""

    folder: str
    manifest: dict
    read: int = 0
    reused: int = 0
    bytes_read: int = 0
    scans: dict[str, Scan] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return self.folder

    def __str__(self) -> str:
        plain, stats = self.manifest["plain"], self.manifest["plain"]["stats"]
        counts = (f"{stats['tars']} tars: {stats['indexed']} indexed ({self.read} read, {self.reused} unchanged), "
                  f"{stats['excluded']} excluded")
        lines = [counts, f"{stats['samples']} samples with an image (member {'|'.join(plain['image'])})"]
        if stats["skipped"]:
            parts = []
            for reason, n in sorted(stats["skipped"].items()):
                example = next((f"{name}: {s.skipped_keys[reason][0]!r}" for name, s in self.scans.items()
                                if s.skipped_keys.get(reason)), None)
                parts.append(f"{reason} {n}" + (f" (e.g. {example})" if example else ""))
            lines.append("skipped samples: " + ", ".join(parts))
        early = [f"ended early: {e['path']}: {e['ended_early']}" for info in self.manifest["splits"].values()
                 for e in info["shards"] if e.get("ended_early")]
        for named in (early, [f"excluded: {e['path']}: {e['reason']}" for e in plain["excluded"]]):
            lines += named[:_REPORT_LINES]
            if len(named) > _REPORT_LINES:  # all of them are in the manifest's plain.stats
                lines.append(f"... and {len(named) - _REPORT_LINES} more")
        lines += [f"read {self.bytes_read} bytes", f"index in {self.folder}"]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry points


def index(path: str, index_dir: str | None = None, image: str | list[str] | None = None, text: str | None = None,
          progress: bool = True, fs=None, storage_options: dict | None = None) -> IndexReport:
    """Index the tars ``path`` names into ``index_dir`` (default: next to them, local folders only).
    Tars whose index there is current are not read again."""
    if fs is None:
        fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    else:
        root = fs._strip_protocol(str(path))
    tars = select(fs, root)
    if tars.names is None:
        raise StructuralError(f"{path}: this storage cannot list a folder; name the tars with a brace pattern "
                              "(.../{00000..00009}.tar)")
    if not tars.names:
        raise StructuralError(f"{path}: no .tar files there")
    if index_dir is None:
        if not isinstance(fs, LocalFileSystem):
            raise StructuralError(f"{path} is remote: give --index-dir (an index goes next to the tars only locally)")
        ifs, iroot = fs, tars.root
    else:
        ifs, iroot = fsspec.core.url_to_fs(str(index_dir))
    old = _read_index(ifs, iroot, beside=index_dir is None)
    if old is None and index_dir is None and _exists(ifs, f"{iroot}/{MANIFEST}"):
        raise StructuralError(f"{iroot}: a vldata build (its {MANIFEST} is not an index of plain tars); "
                              "open it directly, or give --index-dir")
    now = _stamps(fs, tars)
    if all("missing" in st for st in now.values()):
        why = next(iter(now.values()))["missing"]
        raise StructuralError(f"{path}: none of its {len(now)} tars can be read ({why})")
    donors = [(old, ifs, iroot, index_dir is None)] if old is not None else []
    layout = _choice(image, text) or _layout_of(donors, fs, tars) or PlainLayout()
    report = _build(fs, tars, now, ifs, iroot, layout, donors, progress)
    report.folder = iroot if isinstance(ifs, LocalFileSystem) else ifs.unstrip_protocol(iroot)
    return report


def describe(fs, root: str, split: str, index_dir: str | None = None, image: str | list[str] | None = None,
             text: str | None = None) -> tuple[dict, str, str] | None:
    """(manifest of the asked split's view, data folder, index folder URL) for the tars ``root`` names,
    or None when it names none. The index comes from ``index_dir`` (rebuilt there when out of date),
    else from next to the tars while current, else from the cache (built there once)."""
    tars = select(fs, root)
    cache_fs = LocalFileSystem()
    cache = str(cache_slot("index", tars.source))
    if index_dir is not None:
        ifs, iroot = fsspec.core.url_to_fs(str(index_dir))
        places = [(ifs, iroot, False)]
    else:
        places = [(fs, None, True), (cache_fs, cache, False)]  # None: next to the tars, wherever they turn out
    if tars.names is None:
        tars = _known_tars(fs, tars, places)
        if tars is None:
            raise FileNotFoundError(f"{root}: this storage cannot list a folder and no index names its tars; "
                                    "use a brace pattern (.../{00000..00009}.tar)")
    if not tars.names:
        return None
    wanted = _choice(image, text)
    now = _stamps(fs, tars)
    if all("missing" in st for st in now.values()):
        return None
    donors = []  # donors: indexes out of date, whose unchanged tars need not be read again
    for ifs, iroot, beside in places:
        stored = _read_index(ifs, iroot or tars.root, beside=beside)
        if stored is not None and _current(stored, tars, now, wanted, fs, beside):
            return _view(stored, tars, split), tars.root, _url(ifs, iroot or tars.root, fs, tars.root)
        if stored is not None:
            donors.append((stored, ifs, iroot or tars.root, beside))
    ifs, iroot, _ = places[-1]
    layout = wanted or _layout_of(donors, fs, tars) or PlainLayout()
    _check_writable(ifs, iroot)
    report = _build(fs, tars, now, ifs, iroot, layout, donors, progress=True)
    return _view(report.manifest, tars, split), tars.root, _url(ifs, iroot, fs, tars.root)


# --------------------------------------------------------------------------------------------
# Which tars a path names


def select(fs, path: str) -> Tars:
    """The tars of a folder, a prefix, a brace pattern or one ``.tar`` file (see the module docstring)."""
    path = path.rstrip("/") or "/"
    source = fs.unstrip_protocol(path)
    if "{" in path and "}" in path:
        full = list(dict.fromkeys(expand_braces(path)))
        root = _common_folder(full)
        names = [p[len(root):].lstrip("/") for p in full]
        bad = next((n for n in names if not inside(n)), None)
        if bad is not None:
            raise StructuralError(f"{path}: {bad!r} is not a file inside {root}")
        return Tars(source, root, names)
    local = isinstance(fs, LocalFileSystem)
    if not path.lower().endswith(".tar"):
        listing = _list_tars(fs, path)
        if listing is not None:
            return Tars(source, path, sorted(listing), listing=listing)
    parent, _, prefix = path.rpartition("/")
    parent = parent or "/"
    if path.lower().endswith(".tar") and (local or _exists(fs, path)):
        return Tars(source, parent, [prefix] if not local or fs.isfile(path) else [])
    listing = _list_tars(fs, parent)
    if listing is None:
        return Tars(source, parent, [] if local else None, prefix=prefix)
    return Tars(source, parent, sorted(n for n in listing if n.startswith(prefix)), prefix=prefix, listing=listing)


def expand_braces(pattern: str) -> list[str]:
    """``a{0..2}b{x,y}`` -> a0bx a0by a1bx ... (``braceexpand`` when installed: it comes with webdataset)."""
    try:
        from braceexpand import braceexpand
    except ImportError:  # pragma: no cover - a dependency of webdataset
        braceexpand = _braces
    out = []
    for item in braceexpand(pattern):
        out.append(item)
        if len(out) > _MAX_EXPANDED:
            raise StructuralError(f"{pattern}: more than {_MAX_EXPANDED} names")
    return out


def _braces(pattern: str):
    """A small brace expander: ``{a,b}`` lists, ``{00..10}`` ranges (zero-padded like the bounds), nesting."""
    start, depth, end, commas = pattern.find("{"), 0, -1, []
    for i in range(start, len(pattern)) if start >= 0 else ():
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if pattern[i] == "," and depth == 1:
            commas.append(i)
        if depth == 0:
            end = i
            break
    if end < 0:  # no braces, or unbalanced ones: literal
        yield pattern
        return
    head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    bounds = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if bounds:
        a, b = bounds.groups()
        width = len(a) if a.startswith("0") or b.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        items = (str(i).zfill(width) for i in range(int(a), int(b) + step, step))  # lazy: {0..10**12} is legal
    elif commas:
        cuts = [start, *commas, end]
        items = [pattern[cuts[k] + 1:cuts[k + 1]] for k in range(len(cuts) - 1)]
    else:  # "{x}" is literal
        for rest in _braces(tail):
            yield head + "{" + body + "}" + rest
        return
    for item in items:
        for rest in _braces(item + tail):
            yield head + rest


def _common_folder(paths: list[str]) -> str:
    parts = [p.split("/")[:-1] for p in paths]
    common = parts[0]
    for p in parts[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    return "/".join(common) or "/"


def _list_tars(fs, folder: str) -> dict | None:
    """name -> info of the ``.tar`` files directly in ``folder``; None when it cannot be listed."""
    if isinstance(fs, LocalFileSystem) and not fs.isdir(folder):
        return None
    try:
        entries = fs.ls(folder, detail=True)
    except Exception:  # noqa: BLE001 - no such folder, or (http) no listing served: whatever the storage raises
        return None
    out = {}
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e.get("type") != "directory" and name.lower().endswith(".tar"):
            out[name] = e
    return out


def _exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except (OSError, ValueError):  # e.g. no permission to look
        return False


def _known_tars(fs, tars: Tars, places) -> Tars | None:
    """Where a folder cannot be listed (plain http): the tars that an index of it names. The path was
    either the folder (index next to it: ``path/vldata.json``) or a prefix in ``tars.root``."""
    path = f"{tars.root.rstrip('/')}/{tars.prefix}"
    for folder, prefix in ((path, ""), (tars.root, tars.prefix)):
        for ifs, iroot, beside in places:
            stored = _read_index(ifs, iroot or folder, beside=beside)
            if stored is None or (not beside and stored["plain"].get("root") != fs.unstrip_protocol(folder)):
                continue
            names = [n for n in _entries(stored) if n.startswith(prefix)]
            if names:
                return Tars(tars.source, folder, names, prefix=prefix)
    return None


# --------------------------------------------------------------------------------------------
# Is an index current


def _stamps(fs, tars: Tars) -> dict[str, dict]:
    """Each tar's size and mtime (local) or etag (remote) now, or why it cannot be read."""
    local = isinstance(fs, LocalFileSystem)

    def one(name: str) -> dict:
        info = tars.listing.get(name)
        if not info or info.get("size") is None:
            try:
                info = fs.info(_join(tars.root, name))
            except FileNotFoundError:
                return {"missing": "not found"}
            except Exception as e:  # noqa: BLE001 - counted as the tar's reason, whatever the storage raises
                return {"missing": one_line(e)}
        if info.get("type", "file") != "file" or info.get("size") is None:
            return {"missing": "not a regular file" if info.get("size") is not None else "size unknown"}
        out = {"size": int(info["size"])}
        if local:
            out["mtime"] = info.get("mtime")
        else:
            etag = next((info[k] for k in _ETAGS if info.get(k) is not None), None)
            if etag is not None:
                out["etag"] = str(etag)
        return out

    if local or len(tars.names) < 2:
        return {n: one(n) for n in tars.names}
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(tars.names, pool.map(one, tars.names)))


def _same(entry: dict, now: dict) -> bool:
    """Whether a tar is still the one an index entry describes (stamps compared where both have one:
    an index made locally and uploaded keeps its mtimes, the server gives etags)."""
    if entry.get("retry"):
        return False
    if "missing" in now or entry.get("missing"):
        return "missing" in now and bool(entry.get("missing"))
    return entry.get("num_bytes") == now["size"] and all(
        entry[k] == now[k] for k in ("mtime", "etag") if k in entry and k in now)


def _current(stored: dict, tars: Tars, now: dict, wanted: PlainLayout | None, fs, beside: bool) -> bool:
    plain = stored["plain"]
    if not beside and plain.get("root") != fs.unstrip_protocol(tars.root):
        return False
    if wanted is not None and PlainLayout.from_manifest(stored) != wanted:
        return False
    entries = _entries(stored)
    return all(n in entries and _same(entries[n], now[n]) for n in tars.names)


def _entries(manifest: dict) -> dict[str, dict]:
    """path -> entry, for every tar an index knows: shards (with ``index``) and excluded ones."""
    out = {sh["path"]: sh for info in manifest["splits"].values() for sh in info["shards"]}
    out.update((e["path"], e) for e in manifest["plain"].get("excluded", []))
    return out


def _read_index(ifs, iroot: str, beside: bool) -> dict | None:
    """The index manifest in ``iroot``, None when there is none. One that does not parse or is not
    sound is refused; next to the tars a vldata build's own manifest is simply not an index."""
    if not _exists(ifs, f"{iroot.rstrip('/')}/{MANIFEST}"):
        return None
    manifest = read_checked_manifest(iroot, ifs)
    if "plain" not in manifest:
        if beside:
            return None
        raise ShardError(f"{iroot}/{MANIFEST}: a vldata build's manifest, not an index of plain tars")
    return manifest


def _layout_of(donors: list, fs, tars: Tars) -> PlainLayout | None:
    """The member choice an earlier index of these tars made (kept when it is rebuilt)."""
    root = fs.unstrip_protocol(tars.root)
    return next((PlainLayout.from_manifest(m) for m, _, _, beside in donors
                 if beside or m["plain"].get("root") == root), None)


def _choice(image: str | list[str] | None, text: str | None) -> PlainLayout | None:
    """The member choice asked for (None: whatever an existing index chose, else the default)."""
    if image is None and text is None:
        return None
    images = PlainLayout().images
    if image is not None:
        items = re.split(r"[;,]", image) if isinstance(image, str) else list(image)  # "jpg;png" or "jpg,png"
        images = tuple(dict.fromkeys(s.strip().lstrip(".").lower() for s in items if s.strip().lstrip(".")))
        if not images:
            raise StructuralError(f"image members {image!r}: no member suffix")
    text = (text or PlainLayout().text).strip().lstrip(".").lower()
    if not text:
        raise StructuralError("text member: an empty suffix")
    return PlainLayout(images, text)


# --------------------------------------------------------------------------------------------
# Building


def _build(fs, tars: Tars, now: dict, ifs, iroot: str, layout: PlainLayout, donors: list,
           progress: bool) -> IndexReport:
    """Index every tar of ``tars`` into ``iroot``, then write the manifest there last. A tar that an
    earlier index (``donors``: (manifest, fs, folder, next to the tars)) describes, unchanged and with
    the same member choice, is not read again: its member index is kept, or copied from there."""
    reusable = _reuse(fs, tars, now, ifs, iroot, layout, donors)
    todo = [n for n in tars.names if n not in reusable]
    report = IndexReport(folder=iroot, manifest={}, reused=len(tars.names) - len(todo))
    bar = None
    if todo and progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(now[n].get("size", 0) for n in todo), unit="B", unit_scale=True, file=sys.stderr,
                   desc=f"indexing {len(todo)} tar{'s' * (len(todo) > 1)}", leave=False,
                   disable=None)  # None: shown on a terminal only, never into a log or a pipe

    def one(name: str) -> dict:
        entry, result = _index_tar(fs, tars.root, name, now[name], ifs, iroot, layout, bar.update if bar else None)
        if result is not None:
            report.scans[name] = result
        return entry

    try:
        if isinstance(fs, LocalFileSystem) or len(todo) < 2:
            done = [one(n) for n in todo]
        else:
            with ThreadPoolExecutor(_REMOTE_WORKERS) as pool:
                done = list(pool.map(one, todo))
    finally:
        if bar is not None:
            bar.close()
    fresh = dict(zip(todo, done))
    report.read, report.bytes_read = len(todo), sum(s.bytes_read for s in report.scans.values())
    entries = [fresh.get(n) or reusable[n] for n in tars.names]
    report.manifest = _manifest(entries, layout, source=tars.source, root=fs.unstrip_protocol(tars.root),
                                builder=tars.root.rstrip("/").rsplit("/", 1)[-1] or "tars", single="train")
    _write(ifs, f"{iroot.rstrip('/')}/{MANIFEST}", json.dumps(report.manifest, indent=1))
    return report


def _reuse(fs, tars: Tars, now: dict, ifs, iroot: str, layout: PlainLayout, donors: list) -> dict[str, dict]:
    reusable: dict[str, dict] = {}
    for manifest, dfs, droot, beside in donors:
        if PlainLayout.from_manifest(manifest) != layout or not (
                beside or manifest["plain"].get("root") == fs.unstrip_protocol(tars.root)):
            continue
        for name, entry in _entries(manifest).items():
            if name in reusable or name not in now or not _same(entry, now[name]):
                continue
            if "index" in entry:
                source, target = _join(droot, entry["index"]), _join(iroot, entry["index"])
                try:
                    if dfs is not ifs or droot != iroot:
                        _write(ifs, target, dfs.cat_file(source))
                    elif not ifs.exists(target):
                        continue
                except (OSError, ValueError):  # gone or unreadable there: read the tar again
                    continue
            reusable[name] = entry
    return reusable


def _index_tar(fs, root: str, name: str, stamp: dict, ifs, iroot: str, layout: PlainLayout,
               on_read) -> tuple[dict, Scan | None]:
    """Read one tar and write its member index: (manifest entry, scan); a tar that cannot be read
    at all gets an ``excluded`` entry with its reason."""
    if "missing" in stamp:
        return {"path": name, "reason": f"cannot be read: {stamp['missing']}", "missing": True}, None
    kept = {k: stamp[k] for k in ("mtime", "etag") if k in stamp}
    url = _join(root, name)
    try:
        options = {} if isinstance(fs, LocalFileSystem) else {"block_size": _READ_BLOCK, "cache_type": "readahead"}
        if "http" in _protocols(fs):
            options["size"] = stamp["size"]
        with fs.open(url, "rb", **options) as f:
            result = scan(f, stamp["size"], layout, on_read)
    except Exception as e:  # noqa: BLE001 - opening failed, whatever the storage raises (reading: in the scan)
        return {"path": name, "reason": f"cannot be read: {one_line(e)}", "num_bytes": stamp["size"], **kept,
                "retry": True}, None
    if result.unreadable:
        entry = {"path": name, "reason": result.unreadable, "num_bytes": stamp["size"], **kept}
        return ({**entry, "retry": True} if result.io_failed else entry), result
    rel = member_index(name)
    doc = {"format": MEMBER_INDEX_FORMAT, "shard": name.rsplit("/", 1)[-1], "samples": result.samples,
           "stats": result.stats()}
    _write(ifs, _join(iroot, rel), json.dumps(doc, separators=(",", ":")))
    entry = {"path": name, "num_samples": len(result.samples), "num_bytes": stamp["size"], "index": rel, **kept}
    if result.skipped:
        entry["skipped"] = dict(result.skipped)
    if result.ended_early:
        entry["ended_early"] = result.ended_early
    return entry, result


def _manifest(entries: list[dict], layout: PlainLayout, source: str, root: str, builder: str, single: str) -> dict:
    """The manifest of these tars (in this order): split by name when the names say so, else all in
    the split ``single``."""
    shards = [e for e in entries if "index" in e]
    split_of, by_name = _splits([e["path"] for e in entries], single)
    splits: dict[str, dict] = {}
    for name in dict.fromkeys(split_of.values()):
        chosen = [e for e in shards if split_of[e["path"]] == name]
        splits[name] = {"num_samples": sum(e["num_samples"] for e in chosen),
                        "num_bytes": sum(e["num_bytes"] for e in chosen), "shards": chosen}
    skipped: Counter = Counter()
    for e in shards:
        skipped.update(e.get("skipped", {}))
    excluded = [e for e in entries if "index" not in e]
    stats = {"tars": len(entries), "indexed": len(shards), "excluded": len(excluded),
             "samples": sum(e["num_samples"] for e in shards), "skipped": dict(skipped),
             "ended_early": [e["path"] for e in shards if e.get("ended_early")]}
    return {"vldata_manifest": MANIFEST_VERSION, "builder": builder, "version": INDEX_VERSION, "format": "webdataset",
            "primary_image": "image", "features": {}, "image_members": list(layout.images), "splits": splits,
            "tables": {},
            "plain": {"source": source, "root": root, "image": list(layout.images), "text": layout.text,
                      "split_in_names": by_name, "excluded": excluded, "stats": stats}}


def _splits(names: list[str], single: str) -> tuple[dict[str, str], bool]:
    """name -> split. When every name is ``{word}-...`` and one word is a split name (``train-``,
    ``validation-``...), the words are the splits (``holdout-`` next to ``train-`` too); otherwise
    (``00000.tar``, ``laion-...`` and ``coyo-...``) every tar is in ``single``."""
    found = {n: _SPLIT_PREFIX.match(n.rsplit("/", 1)[-1]) for n in names}
    words = {m.group(1) for m in found.values() if m}
    by_name = bool(names) and all(found.values()) and bool(words & SPLIT_NAMES)
    return {n: (found[n].group(1) if by_name else single) for n in names}, by_name


def _view(stored: dict, tars: Tars, split: str) -> dict:
    """The manifest of just the selected tars; tars that do not name a split are the split asked for."""
    entries = _entries(stored)
    plain = stored["plain"]
    view = _manifest([entries[n] for n in tars.names], PlainLayout.from_manifest(stored), plain["source"],
                     plain["root"], stored["builder"], single=split)
    view["plain"]["source"] = tars.source
    return view


# --------------------------------------------------------------------------------------------
# Files


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _url(ifs, iroot: str, fs, root: str) -> str:
    """The index folder as the reader opens it: the data folder itself, or a URL (it may be on
    another filesystem than the tars, e.g. a local cache for tars on a web server)."""
    if ifs is fs and iroot == root:
        return root
    return ifs.unstrip_protocol(iroot)


def _write(ifs, path: str, data: str | bytes) -> None:
    if isinstance(ifs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), data)
    else:
        ifs.pipe_file(path, data.encode("utf-8") if isinstance(data, str) else data)


def _check_writable(ifs, iroot: str) -> None:
    """Before reading any tar: the index folder must take files (a user-given one may be read-only)."""
    probe = _join(iroot, f".vldata-write-test-{os.getpid()}")
    try:
        _write(ifs, probe, "")
        ifs.rm(probe)
    except OSError as e:
        raise ShardError(f"{iroot}: the index of these tars is missing or out of date here and this folder "
                         f"cannot be written ({one_line(e)}); index them with `vldata index` into a writable "
                         "--index-dir") from None
